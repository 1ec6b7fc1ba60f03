"""Read a Caffe ``.caffemodel`` (a binary protobuf ``NetParameter``) without Caffe or protobuf.

The protobuf wire format is read by ``weights_tools.protobuf`` (shared with the ONNX
reader), which bounds every length by the bytes present.

The fields read here (numbers from Caffe's ``caffe.proto``):

- ``NetParameter``: ``name`` = 1, ``layers`` = 2 (deprecated ``V1LayerParameter``, what
  the published ``VGG_ILSVRC_16/19_layers.caffemodel`` use), ``layer`` = 100
  (``LayerParameter``).
- ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (enum: CONVOLUTION = 4,
  INNER_PRODUCT = 14, POOLING = 17, RELU = 18, ...), ``blobs`` = 6.
- ``LayerParameter``: ``name`` = 1, ``type`` = 2 (string "Convolution",
  "InnerProduct", ...), ``blobs`` = 7.
- ``BlobProto``: legacy ``num``/``channels``/``height``/``width`` = 1..4, ``data`` = 5
  (float, packed or not), ``shape`` = 7 (``BlobShape``: ``dim`` = 1, int64, packed or
  not), ``double_data`` = 8.

The file is memory-mapped; packed floats become arrays with one ``np.frombuffer``.
"""

import mmap
import os

import numpy as np

from minivgg.errors import MiniVGGError

from .protobuf import ProtoError, fields, packed_varints, product, read_repeated, string

V1_TYPES = {4: "Convolution", 14: "InnerProduct", 17: "Pooling", 18: "ReLU", 6: "Dropout", 20: "Softmax",
            5: "Data", 21: "SoftmaxWithLoss", 15: "LRN", 3: "Concat", 1: "Accuracy"}

# Depths of the messages read here: NetParameter 0 > layer 1 > BlobProto 2 > BlobShape 3.


def parse_blob(buf, begin, stop):
    """A ``BlobProto`` as a float32 array with its declared shape."""
    legacy = {}
    dims = None
    for num, wt, val in fields(buf, begin, stop, 2):
        if num in (1, 2, 3, 4) and wt == 0:
            legacy[num] = val
        elif num == 7 and wt == 2:
            dims = []
            for n2, wt2, v2 in fields(buf, *val, 3):
                if n2 == 1:
                    dims.extend(packed_varints(buf, *v2, signed=True) if wt2 == 2 else [v2])
    if dims is None:
        dims = [legacy.get(i, 1) for i in (1, 2, 3, 4)] if legacy else None
    data = read_repeated(buf, begin, stop, 5, "<f4", 2)
    ddata = read_repeated(buf, begin, stop, 8, "<f8", 2)
    if ddata.size:
        data = np.concatenate([data, ddata]) if data.size else ddata
    if dims is None:
        dims = [data.size]
    count = product(dims)
    if count != data.size:
        raise ProtoError(f"blob shape {tuple(dims)} needs {count} values but holds {data.size}")
    return data.reshape(dims)


def parse_layer(buf, begin, stop, v1):
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    name, ltype, blobs = "", "", []
    for num, wt, val in fields(buf, begin, stop, 1):
        if num == name_f and wt == 2:
            name = string(buf, val)
        elif num == type_f:
            if v1 and wt == 0:
                ltype = V1_TYPES.get(val, f"V1 type {val}")
            elif not v1 and wt == 2:
                ltype = string(buf, val)
        elif num == blobs_f and wt == 2:
            blobs.append(val)
    return name, ltype, blobs


def read_layers(path):
    """Return ``(net_name, [(layer_name, layer_type, [blob arrays])...])`` in file order.

    Every layer is listed (parameter-free ones with no blobs) so callers can show the
    network's structure; the blobs are parsed only for layers that have them.
    """
    where = os.path.basename(path)
    size = os.path.getsize(path)
    if size == 0:
        raise MiniVGGError(f"{where}: empty file")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _read(buf, size, where)
    except ProtoError as e:
        raise MiniVGGError(f"{where}: not a valid Caffe model (truncated or corrupt protobuf: {e})") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as e:
        raise MiniVGGError(f"{where}: not a valid Caffe model ({e})") from None


def _read(buf, size, where):
    net_name = ""
    layers = []
    for num, wt, val in fields(buf, 0, size):
        if num == 1 and wt == 2:
            net_name = string(buf, val)
        elif num in (2, 100) and wt == 2:
            name, ltype, blob_ranges = parse_layer(buf, val[0], val[1], v1=(num == 2))
            blobs = [parse_blob(buf, b, s) for b, s in blob_ranges]
            layers.append((name, ltype, blobs))
    if not layers:
        raise MiniVGGError(f"{where}: no layers found: not a Caffe model")
    return net_name, layers


def looks_like_caffemodel(head):
    """A cheap content test on the first bytes: a NetParameter starts with one of its
    length-delimited fields (name = 1, layers = 2, input = 3, layer = 100)."""
    if not head:
        return False
    return head[0] in (0x0A, 0x12, 0x1A) or head[:2] == b"\xa2\x06"
