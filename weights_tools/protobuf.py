"""The protobuf wire format, read directly (no ``protobuf`` or ``onnx`` package), for the
Caffe and ONNX readers.

A message is a sequence of fields, each a *key* varint ``(field_number << 3) |
wire_type`` followed by its value: wire type 0 a varint, 1 eight bytes, 2 a varint
length and that many bytes (strings, sub-messages, packed repeated numbers), 5 four
bytes (3 and 4, the deprecated groups, are refused). A reader keeps the fields it
knows and skips the others by their wire type.

The files are untrusted, so every length is checked against the bytes that remain in
the enclosing message before anything is read or allocated, sub-messages are entered
only ``MAX_DEPTH`` deep, and repeated numbers are counted before an array is made: no
array is larger than the bytes present could hold. Problems raise :class:`ProtoError`,
which each reader turns into ``MiniVGGError("<file>: <what>")``.

Values are read from a buffer that may be a memory map of the file: packed floats
become arrays with one ``np.frombuffer`` (then one copy off the mapping), so a 550 MB
model parses in about the time it takes to read it.
"""

import numpy as np

MAX_DEPTH = 32  # the deepest schema read here (ONNX model > graph > node > attribute > tensor) is 5


class ProtoError(Exception):
    pass


def read_varint(buf, pos, end):
    """``(value, next position)`` of the varint at ``pos``; it may not run past ``end``."""
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


def fields(buf, start, end, depth=0):
    """Yield ``(field_number, wire_type, value)`` of the message in ``buf[start:end]``.

    The value of wire type 0 is the integer, of the others the byte range ``(begin,
    stop)``, already checked to lie inside the message. ``depth``: how many messages
    enclose this one (callers pass ``depth + 1`` for a sub-message).
    """
    if depth > MAX_DEPTH:
        raise ProtoError(f"messages nested more than {MAX_DEPTH} deep")
    if not 0 <= start <= end <= len(buf):
        raise ProtoError("message range outside the file")
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtoError("field number 0")
        if wt == 0:
            val, pos = read_varint(buf, pos, end)
        elif wt == 1:
            if end - pos < 8:
                raise ProtoError(f"fixed64 field {num} runs past the end")
            val = (pos, pos + 8)
            pos += 8
        elif wt == 2:
            n, pos = read_varint(buf, pos, end)
            if n > end - pos:
                raise ProtoError(f"field {num} claims {n} bytes but only {end - pos} remain")
            val = (pos, pos + n)
            pos += n
        elif wt == 5:
            if end - pos < 4:
                raise ProtoError(f"fixed32 field {num} runs past the end")
            val = (pos, pos + 4)
            pos += 4
        else:
            raise ProtoError(f"unsupported wire type {wt} (field {num})")
        yield num, wt, val


def string(buf, span):
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")


def packed_varints(buf, begin, stop, signed=False):
    """The varints of a packed repeated field, as a Python list (at most one per byte)."""
    out = []
    pos = begin
    while pos < stop:
        v, pos = read_varint(buf, pos, stop)
        if signed and v >= 1 << 63:  # int64 / int32 are two's complement on the wire
            v -= 1 << 64
        out.append(v)
    return out


def packed_array(buf, span, dtype):
    """A packed repeated fixed-width field (``"<f4"``, ``"<f8"``) as a view of ``buf``."""
    b, s = span
    size = np.dtype(dtype).itemsize
    if (s - b) % size:
        raise ProtoError(f"packed {np.dtype(dtype).name} data of {s - b} bytes is not a multiple of {size}")
    return np.frombuffer(buf, dtype=dtype, count=(s - b) // size, offset=b)


def read_repeated(buf, start, end, number, dtype, depth=0, out_dtype=np.float32):
    """Field ``number`` of the message ``buf[start:end]``, a repeated fixed-width number
    (``"<f4"`` or ``"<f8"``) that may come packed (runs of wire type 2) or unpacked
    (one element per field, wire type 5 or 1), or both, in order, as one array.

    Two passes: the first only counts the elements, so the one array allocated is
    bounded by the bytes present (an unpacked float costs at least 5 bytes of file) and
    nothing is stored per element; the second fills it. A run of unpacked elements at
    a constant stride (key + value, the usual layout) is copied with one strided view
    rather than element by element.
    """
    dt = np.dtype(dtype)
    size = dt.itemsize
    single_wt = 5 if size == 4 else 1
    count = 0
    for num, wt, val in fields(buf, start, end, depth):
        if num != number:
            continue
        if wt == 2:
            if (val[1] - val[0]) % size:
                raise ProtoError(f"packed {dt.name} data of {val[1] - val[0]} bytes is not a multiple of {size}")
            count += (val[1] - val[0]) // size
        elif wt == single_wt:
            count += 1
        else:
            raise ProtoError(f"wire type {wt} for repeated {dt.name} field {number}")
    out = np.empty(count, dtype=out_dtype)
    i = 0
    run = [0, 0, 0]  # first offset, stride, length of the pending unpacked run

    def flush():
        nonlocal i
        first, stride, n = run
        if n == 0:
            return
        if n == 1:
            out[i] = np.frombuffer(buf, dtype=dt, count=1, offset=first)[0]
        else:
            raw = np.frombuffer(buf, dtype=np.uint8, count=(n - 1) * stride + size, offset=first)
            rows = np.lib.stride_tricks.as_strided(raw, shape=(n, size), strides=(stride, 1))
            out[i : i + n] = np.ascontiguousarray(rows).view(dt).reshape(n)
        i += n
        run[:] = [0, 0, 0]

    for num, wt, val in fields(buf, start, end, depth):
        if num != number:
            continue
        if wt == 2:
            flush()
            n = (val[1] - val[0]) // size
            out[i : i + n] = packed_array(buf, val, dt)
            i += n
            continue
        off = val[0]
        first, stride, n = run
        if n == 0:
            run[:] = [off, 0, 1]
        elif n == 1:
            run[:] = [first, off - first, 2]
        elif off - first == stride * n:
            run[2] = n + 1
        else:
            flush()
            run[:] = [off, 0, 1]
    flush()
    assert i == count
    return out


def product(dims):
    """The element count of a shape, as a Python int (no int64 overflow on hostile dims)."""
    n = 1
    for d in dims:
        if d < 0:
            raise ProtoError(f"negative dimension {d}")
        n *= int(d)
    return n
