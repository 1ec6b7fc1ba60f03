"""Read a Caffe ``.caffemodel`` (a binary protobuf ``NetParameter``) without Caffe or protobuf.

The protobuf wire format: a message is a sequence of fields, each a *key* varint
``(field_number << 3) | wire_type`` followed by its value -- wire type 0 a varint,
1 eight bytes, 2 a varint length and that many bytes (strings, sub-messages, packed
repeated numbers), 5 four bytes. Fields we don't need are skipped by their wire type.

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

Packed floats are turned into arrays with ``np.frombuffer`` on a view of the file, so
a 550 MB model parses in about the time it takes to read it.
"""

import mmap
import os

import numpy as np

from minivgg.errors import MiniVGGError

V1_TYPES = {4: "Convolution", 14: "InnerProduct", 17: "Pooling", 18: "ReLU", 6: "Dropout", 20: "Softmax",
            5: "Data", 21: "SoftmaxWithLoss", 15: "LRN", 3: "Concat", 1: "Accuracy"}


class ProtoError(Exception):
    pass


def read_varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoError("varint runs past the end of its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def fields(buf, start, end):
    """Yield ``(field_number, wire_type, value)``; for wire type 2 the value is ``(begin, stop)``."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtoError("field number 0")
        if wt == 0:
            val, pos = read_varint(buf, pos, end)
        elif wt == 1:
            if pos + 8 > end:
                raise ProtoError("fixed64 field runs past the end")
            val = (pos, pos + 8)
            pos += 8
        elif wt == 2:
            n, pos = read_varint(buf, pos, end)
            if pos + n > end:
                raise ProtoError(f"field {num} claims {n} bytes but only {end - pos} remain")
            val = (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise ProtoError("fixed32 field runs past the end")
            val = (pos, pos + 4)
            pos += 4
        else:
            raise ProtoError(f"unsupported wire type {wt} (field {num})")
        yield num, wt, val


def _packed_varints(buf, begin, stop):
    out = []
    pos = begin
    while pos < stop:
        v, pos = read_varint(buf, pos, stop)
        out.append(v)
    return out


def parse_blob(buf, begin, stop):
    """A ``BlobProto`` as a float32 array with its declared shape."""
    legacy = {}
    dims = None
    chunks = []  # packed float runs (arrays) and single unpacked floats
    for num, wt, val in fields(buf, begin, stop):
        if num in (1, 2, 3, 4) and wt == 0:
            legacy[num] = val
        elif num == 5:
            if wt == 2:
                b, s = val
                if (s - b) % 4:
                    raise ProtoError("packed float data is not a multiple of 4 bytes")
                chunks.append(np.frombuffer(buf, dtype="<f4", count=(s - b) // 4, offset=b))
            elif wt == 5:
                chunks.append(np.frombuffer(buf, dtype="<f4", count=1, offset=val[0]))
        elif num == 8:
            if wt == 2:
                b, s = val
                if (s - b) % 8:
                    raise ProtoError("packed double data is not a multiple of 8 bytes")
                chunks.append(np.frombuffer(buf, dtype="<f8", count=(s - b) // 8, offset=b).astype(np.float32))
            elif wt == 1:
                chunks.append(np.frombuffer(buf, dtype="<f8", count=1, offset=val[0]).astype(np.float32))
        elif num == 7 and wt == 2:
            dims = []
            for n2, wt2, v2 in fields(buf, *val):
                if n2 == 1:
                    dims.extend(_packed_varints(buf, *v2) if wt2 == 2 else [v2])
    if dims is None:
        dims = [legacy.get(i, 1) for i in (1, 2, 3, 4)] if legacy else None
    if not chunks:
        data = np.zeros(0, np.float32)
    elif len(chunks) == 1:
        data = np.array(chunks[0], dtype=np.float32)  # one copy, off the file mapping
    else:
        data = np.concatenate(chunks).astype(np.float32, copy=False)
    if dims is None:
        dims = [data.size]
    count = int(np.prod(dims)) if dims else 1
    if count != data.size:
        raise ProtoError(f"blob shape {tuple(dims)} needs {count} values but holds {data.size}")
    return data.reshape(dims)


def parse_layer(buf, begin, stop, v1):
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    name, ltype, blobs = "", "", []
    for num, wt, val in fields(buf, begin, stop):
        if num == name_f and wt == 2:
            name = bytes(buf[val[0] : val[1]]).decode("utf-8", "replace")
        elif num == type_f:
            if v1 and wt == 0:
                ltype = V1_TYPES.get(val, f"V1 type {val}")
            elif not v1 and wt == 2:
                ltype = bytes(buf[val[0] : val[1]]).decode("utf-8", "replace")
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
            net_name = bytes(buf[val[0] : val[1]]).decode("utf-8", "replace")
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
