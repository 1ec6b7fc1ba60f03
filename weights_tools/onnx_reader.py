"""Read the VGG-16/19 weights out of an ONNX model (a binary protobuf ``ModelProto``)
without the ``onnx`` package.

The convolutions are found by walking the graph from its one input along the data
path -- an optional layout ``Transpose``, then ``Conv -> Relu -> ... -> MaxPool`` five
times -- never by node or tensor names, which differ between exporters (tf2onnx from
Keras: ``functional_1/block1_conv1_1/...``; ``torch.onnx.export``: ``features.0.weight``;
the ONNX model zoo's MXNet export: ``vgg0_conv0_weight``). A weight input is resolved
through the nodes that produce it (``Transpose`` of an HWIO kernel, ``Identity``,
``Cast``, ``Reshape``, ``Squeeze``, ``Unsqueeze``, ``Constant``) down to an initializer, so
a kernel stored as HWIO behind a Transpose and one stored as OIHW both come out
``(out, in, kh, kw)``, which is what ONNX's ``Conv`` computes with (a correlation, as
ours). After the fifth pool the classifier is walked the same way (``Flatten`` /
``Reshape``, ``Gemm`` or ``MatMul`` + ``Add``, ``Relu``, ``Dropout``, ``Softmax``); it is
kept only when it is ImageNet's 25088-4096-4096-1000, otherwise skipped with a note.

Messages and fields read (numbers from ``onnx.proto``):

- ``ModelProto``: ir_version 1, producer_name 2, producer_version 3, graph 7, opset_import 8.
- ``GraphProto``: node 1, initializer 5, input 11, output 12 (``ValueInfoProto``: name 1).
- ``NodeProto``: input 1, output 2, name 3, op_type 4, attribute 5.
- ``AttributeProto``: name 1, f 2, i 3, s 4, t 5, floats 7, ints 8 (subgraphs, 6 and 11,
  are never entered).
- ``TensorProto``: dims 1, data_type 2 (FLOAT 1, INT32 6, INT64 7, FLOAT16 10,
  DOUBLE 11), float_data 4, int32_data 5, int64_data 7, name 8, raw_data 9,
  double_data 10, external_data 13 (``StringStringEntryProto``: key 1, value 2 --
  location, offset, length), data_location 14 (1 = external).

Tensor data comes from ``raw_data`` (little-endian, as the standard requires), the typed
fields, or an external file beside the model; an external location that is absolute or
leads out of the model's folder (``..``, a symlink) is refused.
"""

import mmap
import os

import numpy as np

from minivgg.errors import MiniVGGError

from .protobuf import ProtoError, fields, packed_varints, product, read_repeated, string

FLOAT, INT32, INT64, FLOAT16, DOUBLE = 1, 6, 7, 10, 11
DTYPES = {FLOAT: "<f4", INT32: "<i4", INT64: "<i8", FLOAT16: "<f2", DOUBLE: "<f8"}
TYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
              8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16"}
MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}
SIDE_OPS = ("Shape", "Size")  # read only the shape of the data (tf2onnx's flatten); not on the data path
PASS_OPS = ("Identity", "Dropout")
IMAGENET_FC = ((4096, 25088), (4096, 4096), (1000, 4096))

# message depths: ModelProto 0 > GraphProto 1 > NodeProto / TensorProto 2 > AttributeProto 3 > TensorProto 4


class Node:
    __slots__ = ("op", "name", "inputs", "outputs", "attrs")

    def __init__(self):
        self.op, self.name, self.inputs, self.outputs, self.attrs = "", "", [], [], {}

    def label(self):
        return f"{self.op} node {self.name!r}" if self.name else f"{self.op} node (output {self.outputs[0]!r})"


class Graph:
    """The parsed model: nodes, initializer headers (data still in the file) and i/o names."""

    def __init__(self, path, buf):
        self.path, self.buf = path, buf
        self.where = os.path.basename(path)
        self.model_dir = os.path.dirname(os.path.abspath(path))
        self.producer = ""
        self.ir_version = None
        self.nodes, self.initializers, self.inputs, self.outputs = [], {}, [], []


def looks_like_onnx(head):
    """A ModelProto starts with ``ir_version`` (field 1, a small varint), then another
    ModelProto field; a Caffe NetParameter never has a varint field 1."""
    got = []
    try:
        for num, wt, val in fields(head, 0, len(head)):
            got.append((num, wt, val))
            if len(got) == 2:
                break
    except ProtoError:
        pass  # the head is cut off inside a later field
    if not got or got[0][:2] != (1, 0) or not 1 <= got[0][2] <= 64:
        return False
    return len(got) == 1 or got[1][0] in MODEL_FIELDS


# ---------------------------------------------------------------- parsing

def parse_tensor(buf, span, depth):
    """A TensorProto's header: ``{name, dims, type, raw, typed spans, external}`` (no data read)."""
    t = {"name": "", "dims": [], "type": 0, "raw": None, "external": {}, "location": 0, "span": span, "depth": depth}
    for num, wt, val in fields(buf, *span, depth):
        if num == 1:
            t["dims"].extend(packed_varints(buf, *val, signed=True) if wt == 2 else [_signed(val)])
        elif num == 2 and wt == 0:
            t["type"] = val
        elif num == 8 and wt == 2:
            t["name"] = string(buf, val)
        elif num == 9 and wt == 2:
            t["raw"] = val
        elif num == 13 and wt == 2:
            k = v = ""
            for n2, w2, v2 in fields(buf, *val, depth + 1):
                if n2 == 1 and w2 == 2:
                    k = string(buf, v2)
                elif n2 == 2 and w2 == 2:
                    v = string(buf, v2)
            t["external"][k] = v
        elif num == 14 and wt == 0:
            t["location"] = val
    return t


def _signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_attribute(buf, span):
    name, value = "", None
    ints, floats = [], []
    for num, wt, val in fields(buf, *span, 3):
        if num == 1 and wt == 2:
            name = string(buf, val)
        elif num == 2 and wt == 5:
            value = float(np.frombuffer(buf, "<f4", 1, val[0])[0])
        elif num == 3 and wt == 0:
            value = _signed(val)
        elif num == 4 and wt == 2:
            value = string(buf, val)
        elif num == 5 and wt == 2:
            value = parse_tensor(buf, val, 4)
        elif num == 7:
            floats.append((wt, val))
        elif num == 8:
            ints.extend(packed_varints(buf, *val, signed=True) if wt == 2 else [_signed(val)])
    if ints:
        value = ints
    elif floats:
        value = read_repeated(buf, *span, 7, "<f4", 3).tolist()
    return name, value


def parse_node(buf, span):
    node = Node()
    for num, wt, val in fields(buf, *span, 2):
        if wt != 2:
            continue
        if num == 1:
            node.inputs.append(string(buf, val))
        elif num == 2:
            node.outputs.append(string(buf, val))
        elif num == 3:
            node.name = string(buf, val)
        elif num == 4:
            node.op = string(buf, val)
        elif num == 5:
            k, v = parse_attribute(buf, val)
            node.attrs[k] = v
    if not node.outputs:
        node.outputs.append("")
    return node


def read_graph(path):
    """Parse ``path`` into a :class:`Graph` (the buffer stays mapped for the tensor data)."""
    where = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise MiniVGGError(f"{where}: empty file")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    g = Graph(path, buf)
    try:
        graph_span = None
        for num, wt, val in fields(buf, 0, len(buf), 0):
            if num == 1 and wt == 0:
                g.ir_version = val
            elif num == 2 and wt == 2:
                g.producer = string(buf, val)
            elif num == 3 and wt == 2 and g.producer:
                g.producer += " " + string(buf, val)
            elif num == 7 and wt == 2:
                graph_span = val
        if graph_span is None:
            raise MiniVGGError(f"{where}: an ONNX model without a graph")
        for num, wt, val in fields(buf, *graph_span, 1):
            if wt != 2:
                continue
            if num == 1:
                g.nodes.append(parse_node(buf, val))
            elif num == 5:
                t = parse_tensor(buf, val, 2)
                g.initializers[t["name"]] = t
            elif num in (11, 12):
                name = ""
                for n2, w2, v2 in fields(buf, *val, 2):
                    if n2 == 1 and w2 == 2:
                        name = string(buf, v2)
                (g.inputs if num == 11 else g.outputs).append(name)
    except ProtoError as e:
        raise MiniVGGError(f"{where}: not a valid ONNX model (truncated or corrupt protobuf: {e})") from None
    except (ValueError, OverflowError) as e:
        raise MiniVGGError(f"{where}: not a valid ONNX model ({e})") from None
    return g


# ---------------------------------------------------------------- tensor data

def tensor_array(g, t):
    """The data of TensorProto header ``t`` as an array of its shape (floats as float32)."""
    where, buf = g.where, g.buf
    name = t["name"] or "(unnamed)"
    ttype = t["type"]
    if ttype not in DTYPES:
        raise MiniVGGError(f"{where}: tensor {name!r} has data type {TYPE_NAMES.get(ttype, ttype)}, not a number type read here")
    dt = np.dtype(DTYPES[ttype])
    if any(d < 0 for d in t["dims"]):
        raise MiniVGGError(f"{where}: tensor {name!r} has a negative dimension {tuple(t['dims'])}")
    count = product(t["dims"])
    if t["location"] == 1 or t["external"]:
        data = _external(g, t, name, dt, count)
    elif t["raw"] is not None:
        b, s = t["raw"]
        if s - b != count * dt.itemsize:
            raise MiniVGGError(f"{where}: tensor {name!r} of shape {tuple(t['dims'])} needs {count * dt.itemsize}"
                               f" bytes of raw_data but has {s - b}")
        data = np.frombuffer(buf, dtype=dt, count=count, offset=b)
    else:
        span, depth = t["span"], t["depth"]
        if ttype == FLOAT:
            data = read_repeated(buf, *span, 4, "<f4", depth)
        elif ttype == DOUBLE:
            data = read_repeated(buf, *span, 10, "<f8", depth, out_dtype=np.float64)
        else:  # int64_data (7), or int32_data (5) which also carries FLOAT16 as its bit pattern
            field = 7 if ttype == INT64 else 5
            vals = []
            for num, wt, val in fields(buf, *span, depth):
                if num == field:
                    vals.extend(packed_varints(buf, *val, signed=True) if wt == 2 else [_signed(val)])
            if ttype == FLOAT16:
                data = np.array(vals, dtype=np.int64).astype(np.uint16).view(np.float16)
            else:
                data = np.array(vals, dtype=np.int64)
        if data.size != count:
            raise MiniVGGError(f"{where}: tensor {name!r} of shape {tuple(t['dims'])} needs {count} values but holds {data.size}")
    data = np.asarray(data).reshape(t["dims"])
    if dt.kind == "f":
        return np.array(data, dtype=np.float32)  # one copy, off the file mapping
    return np.array(data, dtype=np.int64)


def _external(g, t, name, dt, count):
    where = g.where
    ext = t["external"]
    loc = ext.get("location", "")
    if not loc:
        raise MiniVGGError(f"{where}: tensor {name!r} is stored externally but names no location")
    if os.path.isabs(loc) or os.path.splitdrive(loc)[0]:
        raise MiniVGGError(f"{where}: tensor {name!r}: external data location {loc!r} is an absolute path; "
                           "only files inside the model's folder are read")
    folder = os.path.realpath(g.model_dir)
    full = os.path.realpath(os.path.join(folder, loc))
    if os.path.commonpath([folder, full]) != folder:
        raise MiniVGGError(f"{where}: tensor {name!r}: external data location {loc!r} leads out of the model's folder; refused")
    if not os.path.isfile(full):
        raise MiniVGGError(f"{where}: tensor {name!r}: external data file {loc!r} not found beside the model")
    try:
        offset = int(ext.get("offset", 0) or 0)
        length = int(ext["length"]) if ext.get("length") else count * dt.itemsize
    except ValueError:
        raise MiniVGGError(f"{where}: tensor {name!r}: external data offset/length are not integers") from None
    if offset < 0 or length != count * dt.itemsize:
        raise MiniVGGError(f"{where}: tensor {name!r} of shape {tuple(t['dims'])} needs {count * dt.itemsize} bytes;"
                           f" its external data entry says offset {offset}, length {length}")
    size = os.path.getsize(full)
    if offset + length > size:
        raise MiniVGGError(f"{where}: tensor {name!r}: external file {loc!r} has {size} bytes, the tensor needs"
                           f" {offset + length} (truncated)")
    return np.fromfile(full, dtype=dt, count=count, offset=offset)


# ---------------------------------------------------------------- the graph walk

class Walker:
    def __init__(self, g):
        self.g = g
        self.producer = {}
        self.consumers = {}
        self.visited = set()
        for node in g.nodes:
            for o in node.outputs:
                self.producer[o] = node
            for i in node.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(node)

    def fail(self, what):
        raise MiniVGGError(f"{self.g.where}: {what}")

    def is_constant(self, name, depth=0):
        if name in self.g.initializers:
            return True
        node = self.producer.get(name)
        if node is None or depth > 16:
            return False
        if node.op == "Constant":
            return True
        if node.op in ("Identity", "Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            return all(self.is_constant(i, depth + 1) for i in node.inputs if i)
        return False

    def resolve(self, name, depth=0):
        """The constant value of tensor ``name``, through the nodes that compute it."""
        if name in self.g.initializers:
            return tensor_array(self.g, self.g.initializers[name])
        node = self.producer.get(name)
        if node is None:
            self.fail(f"tensor {name!r} is neither an initializer nor computed by a node")
        if depth > 16:
            self.fail(f"tensor {name!r}: more than 16 nodes between it and its initializer")
        op, a = node.op, node.attrs
        if op == "Constant":
            if isinstance(a.get("value"), dict):
                return tensor_array(self.g, a["value"])
            for k in ("value_float", "value_floats", "value_int", "value_ints"):
                if k in a:
                    return np.asarray(a[k], dtype=np.float32 if "float" in k else np.int64)
            self.fail(f"{node.label()}: a constant of a kind not read here ({', '.join(a) or 'no value'})")
        if op not in ("Identity", "Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            self.fail(f"tensor {name!r} is computed by {node.label()}, not a constant: weights must be fixed")
        x = self.resolve(node.inputs[0], depth + 1)
        if op == "Transpose":
            perm = a.get("perm", list(range(x.ndim))[::-1])
            if sorted(perm) != list(range(x.ndim)):
                self.fail(f"{node.label()}: perm {perm} does not fit a {x.ndim}-D tensor")
            return x.transpose(perm)
        if op == "Cast":
            return x.astype(np.float32) if a.get("to") in (FLOAT, DOUBLE, FLOAT16) else x
        if op == "Flatten":
            ax = a.get("axis", 1)
            return x.reshape(product(x.shape[:ax]), -1)
        axes = a.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            axes = [int(v) for v in self.resolve(node.inputs[1], depth + 1).reshape(-1)]
        if op == "Reshape":
            shape = list(a.get("shape", axes) or [])
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            try:
                return x.reshape(shape)
            except ValueError:
                self.fail(f"{node.label()}: cannot reshape {x.shape} to {tuple(shape)}")
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
        out = x
        for ax in sorted(axes or []):
            out = np.expand_dims(out, ax)
        return out

    def next_node(self, cur, where):
        nodes = [n for n in self.consumers.get(cur, []) if n.op not in SIDE_OPS]
        if len(nodes) > 1:
            self.fail(f"{where}: tensor {cur!r} feeds {len(nodes)} nodes ({', '.join(n.op for n in nodes)}):"
                      " a branching graph, not a plain VGG chain")
        if nodes:
            if id(nodes[0]) in self.visited:
                self.fail(f"{nodes[0].label()} is reached twice: the graph has a cycle")
            self.visited.add(id(nodes[0]))
        return nodes[0] if nodes else None

    def data_input(self, node):
        """The index of ``node``'s non-constant input (Add / MatMul may list it second)."""
        for i, name in enumerate(node.inputs):
            if name and not self.is_constant(name):
                return i
        return 0


def _ints(node, key, default):
    v = node.attrs.get(key, default)
    return list(v) if isinstance(v, (list, tuple)) else [v]


def read_onnx(path):
    """``(convs, fcs, info)``: convs and fcs ``[(source name, W, b)]`` in our layout; info a
    dict with ``input_layout``, ``pooling``, ``producer``, ``notes``."""
    g = read_graph(path)
    try:
        return _walk(g)
    except ProtoError as e:  # tensor data is parsed lazily, during the walk
        raise MiniVGGError(f"{g.where}: not a valid ONNX model (truncated or corrupt tensor: {e})") from None
    except OSError as e:
        raise MiniVGGError(f"{g.where}: cannot read its external data ({e.strerror or e})") from None


def _walk(g):
    w = Walker(g)
    inits = g.initializers
    data_inputs = [n for n in g.inputs if n not in inits]
    if not data_inputs:
        w.fail("an ONNX graph with no input")
    if len(data_inputs) > 1:
        w.fail(f"an ONNX graph with {len(data_inputs)} inputs ({', '.join(data_inputs[:4])}); VGG has one image input")
    info = {"input_layout": "NCHW", "pooling": None, "producer": g.producer, "notes": [], "input": data_inputs[0]}
    cur = data_inputs[0]
    convs, blocks, pools = [], [], []
    in_block = 0
    pending = None  # the last Conv, until its ReLU
    while len(pools) < 5:
        node = w.next_node(cur, "before the fifth pooling")
        if node is None:
            w.fail(f"the graph ends after {len(convs)} convolution(s) and {len(pools)} pooling(s);"
                   " a VGG has 13 or 16 convolutions and 5 poolings")
        op = node.op
        di = w.data_input(node)
        if op == "Transpose" and not convs and info["input_layout"] == "NCHW":
            perm = _ints(node, "perm", [])
            if perm != [0, 3, 1, 2]:
                w.fail(f"{node.label()} with perm {perm} before the first convolution; only NHWC -> NCHW [0, 3, 1, 2] is understood")
            info["input_layout"] = "NHWC"
        elif op == "Conv":
            if pending is not None:
                w.fail(f"{node.label()} follows a convolution without a ReLU between: not a VGG network")
            pending = _conv(w, node)
            convs.append(pending)
            in_block += 1
        elif op == "Add" and pending is not None and pending[2] is None:
            other = node.inputs[1 - di] if len(node.inputs) == 2 else ""
            if not other or not w.is_constant(other):
                w.fail(f"{node.label()} after {pending[0]!r} adds a computed tensor: a residual connection, not VGG")
            b = w.resolve(other).reshape(-1)
            convs[-1] = (pending[0], pending[1], b)
            pending = convs[-1]
        elif op == "Relu":
            if pending is None:
                w.fail(f"{node.label()} not after a convolution: not a VGG network")
            if pending[2] is None:
                w.fail(f"convolution {pending[0]!r} has no bias")
            pending = None
        elif op in ("MaxPool", "AveragePool"):
            if pending is not None or in_block == 0:
                w.fail(f"{node.label()} not after a convolution's ReLU: not a VGG network")
            k, s = _ints(node, "kernel_shape", [0]), _ints(node, "strides", [1, 1])
            if k != [2, 2] or s != [2, 2]:
                w.fail(f"{node.label()}: kernel {k}, strides {s}; VGG pools 2x2 with stride 2")
            kind = "max" if op == "MaxPool" else "avg"
            if info["pooling"] not in (None, kind):
                info["pooling"] = "mixed"
            else:
                info["pooling"] = kind
            pools.append(node)
            blocks.append(in_block)
            in_block = 0
        elif op in PASS_OPS:
            pass
        elif op == "BatchNormalization":
            w.fail(f"{node.label()}: batch-norm VGG is not supported")
        else:
            w.fail(f"{node.label()} on the data path before the fifth pooling: not a plain VGG network"
                   + (" (preprocessing inside the graph is not supported)" if not convs else ""))
        cur = node.outputs[0]
    if tuple(blocks) not in ((2, 2, 3, 3, 3), (2, 2, 4, 4, 4)):
        w.fail(f"convolutions per block {tuple(blocks)}; VGG-16 has (2, 2, 3, 3, 3), VGG-19 (2, 2, 4, 4, 4)")
    for name, W, b in convs:
        if W.ndim != 4:
            w.fail(f"convolution {name!r}: weights of shape {W.shape} are not 4-D")
    fcs = _classifier(w, cur, convs[-1][1].shape[0], info)
    return [(n, W, b) for n, W, b in convs], fcs, info


def _conv(w, node):
    if len(node.inputs) < 2:
        w.fail(f"{node.label()} has no weight input")
    wname = node.inputs[1]
    if not w.is_constant(wname):
        w.fail(f"{node.label()}: its weights {wname!r} are computed, not stored")
    W = w.resolve(wname)
    b = w.resolve(node.inputs[2]).reshape(-1) if len(node.inputs) > 2 and node.inputs[2] else None
    label = node.name or wname
    if W.ndim != 4:
        w.fail(f"{node.label()}: weights of shape {W.shape} are not a 2-D convolution kernel")
    group = node.attrs.get("group", 1)
    strides = _ints(node, "strides", [1, 1])
    dil = _ints(node, "dilations", [1, 1])
    k = _ints(node, "kernel_shape", list(W.shape[2:]))
    auto = node.attrs.get("auto_pad", "NOTSET")
    pads = _ints(node, "pads", [0, 0, 0, 0])
    same = auto in ("SAME_UPPER", "SAME_LOWER") or (auto in ("NOTSET", "") and pads == [1, 1, 1, 1])
    if group != 1 or strides != [1, 1] or dil != [1, 1] or k != [3, 3] or not same:
        w.fail(f"{node.label()}: kernel {k}, strides {strides}, pads {pads if auto in ('NOTSET', '') else auto},"
               f" dilations {dil}, group {group}; VGG convolutions are 3x3, stride 1, pad 1")
    return (label, W, b)


def _classifier(w, cur, channels, info):
    """Walk from pool5: the three ImageNet fc layers in our layout, or [] with a note."""
    linears = []  # [name, W (out, in), b]
    flatten_channels_last = False
    seen_flatten = False
    stop = None
    while True:
        node = w.next_node(cur, "after the fifth pooling")
        if node is None:
            break
        op = node.op
        di = w.data_input(node)
        if op == "Transpose" and not seen_flatten:
            flatten_channels_last = _ints(node, "perm", []) == [0, 2, 3, 1]
        elif op in ("Flatten", "Reshape"):
            seen_flatten = True
        elif op == "AveragePool" and _ints(node, "kernel_shape", [0]) == [1, 1] and _ints(node, "strides", [1, 1]) == [1, 1]:
            pass  # torchvision's AdaptiveAvgPool2d((7, 7)) exported at 224x224: a no-op
        elif op == "Gemm":
            a = node.attrs
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                stop = f"a Gemm with alpha/beta/transA ({node.name})"
                break
            Wt = w.resolve(node.inputs[1])
            W = Wt if a.get("transB", 0) else Wt.T
            b = w.resolve(node.inputs[2]).reshape(-1) if len(node.inputs) > 2 and node.inputs[2] else None
            linears.append([node.name or node.inputs[1], W, b])
        elif op == "MatMul" and di == 0 and w.is_constant(node.inputs[1]):
            linears.append([node.name or node.inputs[1], w.resolve(node.inputs[1]).T, None])
        elif op == "Add" and linears and linears[-1][2] is None and w.is_constant(node.inputs[1 - di]):
            linears[-1][2] = w.resolve(node.inputs[1 - di]).reshape(-1)
        elif op in ("Relu", "Softmax") or op in PASS_OPS:
            pass
        else:
            stop = f"a {op} node ({node.name or node.outputs[0]})"
            break
        cur = node.outputs[0]
    shapes = [tuple(W.shape) for _, W, _ in linears]
    found = "-".join([str(shapes[0][1])] + [str(s[0]) for s in shapes]) if shapes else "none"
    if stop is None and tuple(shapes) == IMAGENET_FC and all(b is not None for _, _, b in linears):
        if flatten_channels_last:  # fc6 reads pool5 as (h, w, c): permute its columns to (c, h, w)
            W = linears[0][1]
            side = int(round((W.shape[1] // channels) ** 0.5))
            linears[0][1] = np.ascontiguousarray(
                W.reshape(W.shape[0], side, side, channels).transpose(0, 3, 1, 2).reshape(W.shape[0], -1))
        return [tuple(x) for x in linears]
    why = f"it stops at {stop}" if stop else f"found {found}"
    if not linears and stop is None:
        info["notes"].append("no fully connected layers (the graph ends at the convolutions)")
    else:
        info["notes"].append(f"fully connected layers skipped: not ImageNet's 25088-4096-4096-1000 ({why})")
    return []
