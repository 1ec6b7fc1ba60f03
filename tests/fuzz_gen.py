"""Seeded generators of hostile weight files and a guarded runner, for tests/test_fuzz*.py.

Each generator ``gen_<class>(rng, d, secret)`` writes files under the folder ``d`` and
returns a list of cases ``{"cls", "name", "argv", "tool"}``: ``argv`` is a command line of
``weights_tools`` (``tool == "weights_tools"``) or the arguments of a ``--weights`` load
(``tool == "weights"``: ``minivgg.vgg.load_vgg(arch, weights=argv[0])``). Every case is
hostile or broken: the expected outcome is exit status 2 with exactly one ``error:`` line.
Mutations of genuine files (``gen_mutations``) may also convert; then the output must
hold only finite weights.

``secret`` is the path of a planted file (random bytes between markers): external
storage, external links and virtual datasets point at it, and no byte sequence of it
may appear in any output or message. A canary file is what a pickle would create if
any code from it ran.

The runner (``python tests/fuzz_gen.py batch CASES.json RESULTS.json``) runs the cases
one after the other in one process with an address-space limit (RLIMIT_AS) and a
per-case alarm, so a memory bomb fails as MemoryError instead of taking the machine,
and records for each: exit status, stderr, stdout, any exception that escaped (with
its traceback), the time taken and the files left in the case's output folder. The
parent test asserts on those records; ``run_one`` runs one case in a child process of
its own (the ``-m fuzz`` suite), where a signal or a hang shows as such.
"""

import io
import json
import os
import pickle
import struct
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CANARY = "fuzz_canary"  # created by a payload if code from a file ever ran


# ------------------------------------------------------------------ pickle assembler

def p_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_str(s):
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def p_global(mod, name):
    return f"c{mod}\n{name}\n".encode()


def p_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def p_storage(numel, key="0", stype="FloatStorage", view=None):
    parts = [p_str("storage"), p_global("torch", stype), p_str(key), p_str("cpu"), p_int(numel)]
    if view is not None:
        parts.append(p_tuple(p_str(view[0]), p_int(view[1]), p_int(view[2])))
    return p_tuple(*parts) + b"Q"  # BINPERSID


def p_tensor(numel, size, stride, offset=0, key="0", stype="FloatStorage", view=None, raw_size=None, raw_stride=None):
    size_ops = raw_size if raw_size is not None else p_tuple(*(p_int(v) for v in size))
    stride_ops = raw_stride if raw_stride is not None else p_tuple(*(p_int(v) for v in stride))
    return (p_global("torch._utils", "_rebuild_tensor_v2")
            + p_tuple(p_storage(numel, key, stype, view), p_int(offset), size_ops, stride_ops, b"\x89",
                      p_global("collections", "OrderedDict") + b")R")
            + b"R")


def p_dict(items):
    """``items``: [(key bytes-op, value bytes-op)] -> EMPTY_DICT MARK ... SETITEMS."""
    return b"}(" + b"".join(k + v for k, v in items) + b"u"


def p_pickle(body):
    return b"\x80\x02" + body + b"."


def torch_zip(path, data_pkl, records=(), compression=zipfile.ZIP_STORED, names=None):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr(names or "archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for name, data in records:
            z.writestr(f"archive/data/{name}", data)


def legacy_file(path, obj_pickle, keys=(), storages=()):
    """The legacy layout: magic, protocol, sys_info, ``obj_pickle``, key list, then for
    each of ``storages`` (bytes) its element count and bytes."""
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(obj_pickle)
        pickle.dump(list(keys), f, protocol=2)
        for raw in storages:
            f.write(struct.pack("<q", len(raw) // 4))
            f.write(raw)


def state_dict_pickle(params):
    """A torchvision-layout state dict of ``params`` as a zip pickle + records."""
    items, records, k = [], [], 0
    idx = 0
    for name in sorted(params, key=lambda n: (int(n[4]), int(n[6]))):
        W, b = params[name]
        for what, a in (("weight", W), ("bias", b)):
            a = np.ascontiguousarray(a, dtype="<f4")
            stride = [int(s // 4) for s in a.strides]
            items.append((p_str(f"features.{idx}.{what}"), p_tensor(a.size, a.shape, stride, key=str(k))))
            records.append((str(k), a.tobytes()))
            k += 1
        idx += 2
    return p_pickle(p_dict(items)), records


# ------------------------------------------------------------------ small helpers

def tiny_params(arch="vgg16", seed=0, channels=(4, 4, 4, 4, 4)):
    """VGG's layer count with few channels: genuine layouts, fast to write and mutate
    (they fail the shape check, after every parser has run)."""
    rng = np.random.default_rng(seed)
    blocks = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}[arch]
    params, cin = {}, 3
    for b, (n, c) in enumerate(zip(blocks, channels), 1):
        for i in range(1, n + 1):
            params[f"conv{b}_{i}"] = (rng.standard_normal((c, cin, 3, 3)).astype("f4"),
                                      rng.standard_normal(c).astype("f4"))
            cin = c
    return params


def convert_case(cls, name, src, d, extra=()):
    return {"cls": cls, "name": name, "tool": "weights_tools",
            "argv": ["convert", src, "--out", os.path.join(d, "out", name + ".h5"), *extra]}


def inspect_case(cls, name, src):
    return {"cls": cls, "name": name + "-inspect", "tool": "weights_tools", "argv": ["inspect", src]}


def weights_case(cls, name, src):
    return {"cls": cls, "name": name + "-weights", "tool": "weights", "argv": [src]}


def normalize_case(cls, name, src, d, images=None):
    argv = ["normalize", src, "--out", os.path.join(d, "out", name + ".h5")]
    if images:
        argv += ["--images", *images]
    return {"cls": cls, "name": name + "-normalize", "tool": "weights_tools", "argv": argv}


def write_secret(path, rng):
    token = b"SECRET-" + rng.bytes(24).hex().encode() + b"-TERCES"
    with open(path, "wb") as f:
        f.write(token * 64)
    return token


# ------------------------------------------------------------------ generators: pickles

def gen_pickle_hostile(rng, d, secret):
    """Globals that run code, each in the zip, legacy and bare layouts."""
    canary = os.path.join(d, CANARY)
    payloads = {
        "os.system": p_global("os", "system") + p_tuple(p_str(f"touch {canary}")) + b"R",
        "posix.system": p_global("posix", "system") + p_tuple(p_str(f"touch {canary}")) + b"R",
        "builtins.eval": p_global("builtins", "eval") + p_tuple(p_str(f"open({canary!r}, 'w')")) + b"R",
        "builtins.exec": p_global("__builtin__", "exec") + p_tuple(p_str(f"open({canary!r}, 'w')")) + b"R",
        "subprocess.Popen": p_global("subprocess", "Popen") + p_tuple(p_tuple(p_str("touch"), p_str(canary))) + b"R",
        "getattr": p_global("builtins", "getattr") + p_tuple(p_global("os", "path"), p_str("join")) + b"R",
        "inst": b"(" + p_str(f"touch {canary}") + b"ios\nsystem\n",
        "obj": b"(" + p_global("os", "system") + p_str(f"touch {canary}") + b"o",
        "torch.load": p_global("torch", "load") + p_tuple(p_str(secret)) + b"R",
        "numpy.load": p_global("numpy", "load") + p_tuple(p_str(secret)) + b"R",
        "torch_rebuild_from_type": p_global("torch._tensor", "_rebuild_from_type_v2") + p_tuple() + b"R",
    }
    cases = []
    for what, body in payloads.items():
        for layout in ("zip", "legacy", "bare"):
            p = os.path.join(d, f"hostile-{what}-{layout}.pth")
            data = p_pickle(p_dict([(p_str("w"), body)]))
            if layout == "zip":
                torch_zip(p, data)
            elif layout == "legacy":
                legacy_file(p, data)
            else:
                with open(p, "wb") as f:
                    f.write(data)
            cases.append(convert_case("pickle_hostile", f"{what}-{layout}", p, d))
    return cases


def gen_pickle_tensor(rng, d, secret):
    """BUILD, stride, view, offset, size and type abuse on the tensor rebuild call."""
    n = 64
    data = np.arange(n, dtype="<f4").tobytes()
    specs = []
    for s in (-1, -3, -5, -7, -11, -(1 << 40)):
        specs.append((f"neg-stride{s}", dict(numel=n, size=(8,), stride=(s,), offset=40)))
    specs += [
        ("stride0-broadcast", dict(numel=n, size=(4096, 4096), stride=(0, 0))),
        ("stride0-row", dict(numel=n, size=(1 << 20, 8), stride=(0, 1))),
        ("huge-stride-size1", dict(numel=n, size=(1, 8), stride=(1 << 62, 1))),
        ("huge-stride", dict(numel=n, size=(2, 2), stride=(1 << 62, 1))),
        ("overlap", dict(numel=n, size=(64, 64), stride=(1, 1))),
        ("past-end", dict(numel=n, size=(8,), stride=(1,), offset=60)),
        ("huge-offset", dict(numel=n, size=(1,), stride=(1,), offset=1 << 62)),
        ("neg-offset", dict(numel=n, size=(1,), stride=(1,), offset=-8)),
        ("65-dims", dict(numel=n, size=(1,) * 65, stride=(1,) * 65)),
        ("5-dims", dict(numel=n, size=(2, 2, 2, 2, 2), stride=(16, 8, 4, 2, 1))),
        ("len-mismatch", dict(numel=n, size=(2, 2), stride=(1,))),
        ("huge-size", dict(numel=n, size=(1 << 62,), stride=(1,))),
        ("numel-lies", dict(numel=1 << 40, size=(8,), stride=(1,))),
        ("neg-numel", dict(numel=-5, size=(8,), stride=(1,))),
        ("view-outside", dict(numel=n, size=(8,), stride=(1,), view=("v", 60, 8))),
        ("view-neg", dict(numel=n, size=(8,), stride=(1,), view=("v", -4, 8))),
        ("bad-stype", dict(numel=n, size=(8,), stride=(1,), stype="EvilStorage")),
        ("float-size", dict(numel=n, size=(8,), stride=(1,), raw_size=p_tuple(b"G" + struct.pack(">d", 8.0)))),
        ("str-stride", dict(numel=n, size=(8,), stride=(1,), raw_stride=p_tuple(p_str("1")))),
        ("int-size", dict(numel=n, size=(8,), stride=(1,), raw_size=p_int(8))),
        ("none-size", dict(numel=n, size=(8,), stride=(1,), raw_size=b"N")),
        ("bool-size", dict(numel=n, size=(8,), stride=(1,), raw_size=p_tuple(b"\x88"))),
    ]
    cases = []
    for name, kw in specs:
        p = os.path.join(d, f"tensor-{name}.pth")
        torch_zip(p, p_pickle(p_dict([(p_str("features.0.bias"), p_tensor(**kw))])), [("0", data)])
        cases.append(convert_case("pickle_tensor", name, p, d))
    # BUILD after the rebuild: rewrite the checked fields (dict state and slot state)
    good = p_tensor(n, (8,), (1,))
    for name, state in [
        ("build-stride", p_dict([(p_str("stride"), p_tuple(p_int(1 << 30)))])),
        ("build-size", p_dict([(p_str("size"), p_tuple(p_int(1 << 20), p_int(1 << 20)))])),
        ("build-neg", p_dict([(p_str("stride"), p_tuple(b"J" + struct.pack("<i", -3))),
                              (p_str("offset"), p_int(40))])),
        ("build-float", p_dict([(p_str("size"), p_tuple(b"G" + struct.pack(">d", 2.5)))])),
        ("build-dtype", p_dict([(p_str("storage"), p_str("\u20ac" * 8))])),
        ("build-slots", p_tuple(b"N", p_dict([(p_str("stride"), p_tuple(p_int(0)))]))),
    ]:
        p = os.path.join(d, f"tensor-{name}.pth")
        torch_zip(p, p_pickle(p_dict([(p_str("features.0.bias"), good + state + b"b")])), [("0", data)])
        cases.append(convert_case("pickle_build", name, p, d))
    # BUILD on a whitelisted global and on a storage
    for name, body in [
        ("build-global", p_global("torch._utils", "_rebuild_tensor_v2")
         + p_dict([(p_str("__defaults__"), p_tuple(p_int(1)))]) + b"b"),
        ("build-global-slots", p_global("torch._utils", "_rebuild_tensor_v2")
         + p_tuple(b"N", p_dict([(p_str("__defaults__"), p_tuple(p_int(1)))])) + b"b"),
        ("build-class", p_global("collections", "OrderedDict") + p_tuple(b"N", p_dict([(p_str("x"), p_int(1))])) + b"b"),
        ("build-stype", p_global("torch", "FloatStorage") + p_dict([(p_str("itemsize"), p_int(0))]) + b"b"),
    ]:
        p = os.path.join(d, f"tensor-{name}.pth")
        torch_zip(p, p_pickle(p_dict([(p_str("w"), body), (p_str("features.0.bias"), good)])), [("0", data)])
        cases.append(convert_case("pickle_build", name, p, d))
    return cases


def gen_pickle_bombs(rng, d, secret):
    """Memo, repetition, recursion and size bombs in the pickle itself."""
    cases = []
    bodies = {
        "memo-put-huge": b"]" + b"r" + struct.pack("<I", 0xFFFFFFF0),
        "memo-put-2^31": b"]" + b"r" + struct.pack("<I", 1 << 31),
        "memo-put-text": b"]" + b"p" + str(1 << 40).encode() + b"\n",
        "memo-get-missing": b"h" + bytes([7]),
        "binbytes8-huge": b"\x8e" + struct.pack("<Q", 1 << 60),
        "binunicode8-huge": b"\x8d" + struct.pack("<Q", 1 << 50),
        "frame-huge": b"\x95" + struct.pack("<Q", 1 << 40),
        "long4-huge": b"\x8b" + struct.pack("<i", 1 << 30),
        "int-digits": b"I" + b"9" * 100000 + b"\n",
        "marks-deep": b"(" * 100000,
        "empty-lists-deep": b"]" * 200000 + b"a" * 199999,
    }
    # billion laughs: 25 levels each holding the previous one 10 times, via the memo
    laughs = p_str("lol") + b"q\x00"
    for i in range(1, 26):
        laughs += b"0(" + (b"h" + bytes([i - 1])) * 10 + b"l" + b"q" + bytes([i])
    bodies["billion-laughs"] = laughs
    # a dict of 25 levels each holding the previous under 10 keys
    dl = p_dict([]) + b"q\x00"
    for i in range(1, 26):
        dl += b"0}(" + b"".join(p_str(f"k{j}") + b"h" + bytes([i - 1]) for j in range(10)) + b"u" + b"q" + bytes([i])
    bodies["dict-laughs"] = dl
    # a list that contains itself, and a dict holding itself
    bodies["self-list"] = b"]q\x00h\x00a"
    bodies["self-dict"] = b"}q\x00" + p_str("state_dict") + b"h\x00s"
    # nesting deeper than the recursion limit
    depth = 5000
    bodies["deep-lists"] = b"]" * depth + b"a" * (depth - 1)
    bodies["deep-dicts"] = (b"}" + p_str("state_dict")) * depth + (b"s" * depth)[: depth - 1] + b"\x8a\x00s" * 0
    bodies["many-objects"] = b"(" + b"N" * 2_000_000 + b"l"
    for name, body in bodies.items():
        for layout in ("zip", "legacy"):
            p = os.path.join(d, f"bomb-{name}-{layout}.pth")
            data = p_pickle(body) if not name.startswith(("deep", "self", "billion", "dict")) else \
                p_pickle(p_dict([(p_str("state_dict"), body)]))
            if layout == "zip":
                torch_zip(p, data)
            else:
                legacy_file(p, data)
            cases.append(convert_case("pickle_bomb", f"{name}-{layout}", p, d))
    return cases


def gen_zip(rng, d, secret):
    """Zip bombs, other compressions, traversal names, encryption and mutated directories."""
    cases = []
    import zlib

    big = 1 << 30
    bomb_pkl = p_pickle(b"N") + b"\0" * (17 << 20)
    for comp, cname in ((zipfile.ZIP_DEFLATED, "deflate"), (zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma")):
        p = os.path.join(d, f"zip-pkl-bomb-{cname}.pth")
        torch_zip(p, bomb_pkl, compression=comp)
        cases.append(convert_case("zip", f"pkl-bomb-{cname}", p, d))
        # a storage record that inflates far past what the pickle needs
        p = os.path.join(d, f"zip-record-bomb-{cname}.pth")
        torch_zip(p, p_pickle(p_dict([(p_str("features.0.bias"), p_tensor(64, (64,), (1,)))])),
                  [("0", b"\0" * (8 << 20))], compression=comp)
        cases.append(convert_case("zip", f"record-bomb-{cname}", p, d))
    # the byteorder member as a bomb
    p = os.path.join(d, "zip-byteorder-bomb.pth")
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", p_pickle(p_dict([])))
        z.writestr("archive/byteorder", b"l" * (1 << 20))
    cases.append(convert_case("zip", "byteorder-bomb", p, d))
    # traversal and absolute names
    for name in ("../../etc/data.pkl", "/abs/data.pkl", "a/../../data.pkl"):
        p = os.path.join(d, f"zip-name-{abs(hash(name))}.pth")
        torch_zip(p, p_pickle(p_dict([])), names=name)
        cases.append(convert_case("zip", f"name-{name}", p, d))
    # compression method 6 (implode), encrypted flag, mutated central directory
    torch_zip(os.path.join(d, "zip-base.pth"),
              p_pickle(p_dict([(p_str("features.0.bias"), p_tensor(4, (4,), (1,)))])), [("0", b"\0" * 16)])
    base = open(os.path.join(d, "zip-base.pth"), "rb").read()
    cd = base.rfind(b"PK\x01\x02")
    muts = {}
    b = bytearray(base)
    for off in [i for i in range(len(b)) if b[i:i + 4] in (b"PK\x03\x04", b"PK\x01\x02")]:
        sig = bytes(b[off:off + 4])
        m = 8 if sig == b"PK\x03\x04" else 10  # compression method field
        b[off + m:off + m + 2] = struct.pack("<H", 6)
    muts["method6"] = bytes(b)
    b = bytearray(base)
    for off in [i for i in range(len(b)) if b[i:i + 4] in (b"PK\x03\x04", b"PK\x01\x02")]:
        f = 6 if bytes(b[off:off + 4]) == b"PK\x03\x04" else 8
        b[off + f] |= 1  # encrypted
    muts["encrypted"] = bytes(b)
    for i in range(24):
        b = bytearray(base)
        pos = int(rng.integers(cd, len(b)))
        b[pos] = int(rng.integers(0, 256))
        muts[f"cd-flip{i}"] = bytes(b)
    b = bytearray(base)
    eocd = b.rfind(b"PK\x05\x06")
    b[eocd + 10:eocd + 12] = struct.pack("<H", 0xFFFF)  # entries
    muts["eocd-count"] = bytes(b)
    b = bytearray(base)
    b[eocd + 16:eocd + 20] = struct.pack("<I", 0xFFFFFFF0)  # central directory offset
    muts["eocd-offset"] = bytes(b)
    for name, data in muts.items():
        p = os.path.join(d, f"zip-{name}.pth")
        with open(p, "wb") as f:
            f.write(data)
        cases.append(convert_case("zip", name, p, d))
    del big, zlib
    return cases


# ------------------------------------------------------------------ generators: HDF5

def _our_file(path, params=None, attrs=None, extra=None):
    """A minivgg file written with h5py directly (so the attributes can be anything)."""
    import h5py

    params = params if params is not None else tiny_params()
    base = {"arch": "vgg16", "source_format": "caffe", "source_file": "x.caffemodel", "source_sha256": "0" * 64,
            "normalized": False, "converter_version": "1.0", "channel_order": "BGR", "scale": 255.0,
            "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0]}
    base.update(attrs or {})
    with h5py.File(path, "w") as f:
        for k, v in base.items():
            if v is None:
                continue
            f.attrs[k] = v
        for name, (W, b) in params.items():
            g = f.create_group(name)
            g.create_dataset("W", data=W)
            g.create_dataset("b", data=b)
        if extra:
            extra(f)


def gen_hdf5(rng, d, secret):
    """Keras and minivgg HDF5 files: external storage, links, virtual datasets, fill-value
    and compression bombs, odd types, and every convention attribute wrong."""
    import h5py

    cases = []
    secret_size = os.path.getsize(secret)

    def keras(name, build):
        p = os.path.join(d, f"keras-{name}.h5")
        with h5py.File(p, "w") as f:
            f.attrs["layer_names"] = np.array([b"block1_conv1"])
            g = f.create_group("block1_conv1")
            g.attrs["weight_names"] = np.array([b"block1_conv1/kernel:0", b"block1_conv1/bias:0"])
            sub = g.create_group("block1_conv1")
            build(f, g, sub)
        cases.append(convert_case("hdf5", f"keras-{name}", p, d))
        cases.append(inspect_case("hdf5", f"keras-{name}", p))

    def kernel_bias(kernel=None, bias=None):
        def build(f, g, sub):
            if kernel is not None:
                kernel(sub, "kernel:0")
            else:
                sub.create_dataset("kernel:0", data=np.zeros((3, 3, 3, 4), "f4"))
            if bias is not None:
                bias(sub, "bias:0")
            else:
                sub.create_dataset("bias:0", data=np.zeros(4, "f4"))
        return build

    ext = lambda g, n, shape=(secret_size // 4,): g.create_dataset(n, shape=shape, dtype="<f4",  # noqa: E731
                                                                    external=[(secret, 0, secret_size)])
    keras("external-bias", kernel_bias(bias=ext))
    keras("external-kernel", kernel_bias(kernel=lambda g, n: ext(g, n, (3, 3, 3, secret_size // 108))))
    keras("external-fifo", kernel_bias(bias=lambda g, n: g.create_dataset(
        n, shape=(16,), dtype="<f4", external=[(os.path.join(d, "fifo"), 0, 64)])))
    keras("external-link", kernel_bias(bias=lambda g, n: g.__setitem__(n, h5py.ExternalLink(secret, "/x"))))
    keras("soft-link", kernel_bias(bias=lambda g, n: g.__setitem__(n, h5py.SoftLink("/elsewhere"))))
    keras("fill-bomb", kernel_bias(kernel=lambda g, n: g.create_dataset(
        n, shape=(25088, 4096, 16), dtype="f4", fillvalue=1.0)))
    keras("fill-only", kernel_bias(bias=lambda g, n: g.create_dataset(n, shape=(4,), dtype="f4", fillvalue=np.nan)))
    keras("gzip-bomb", kernel_bias(kernel=lambda g, n: g.create_dataset(
        n, shape=(1 << 14, 1 << 14), dtype="f4", chunks=(1024, 1024), compression="gzip",
        data=None, fillvalue=0.0)))

    def gzip_written(g, n):
        ds = g.create_dataset(n, shape=(8192, 8192), dtype="f4", chunks=(1024, 1024), compression="gzip")
        ds[:1024, :1024] = 0.0
    keras("gzip-partial", kernel_bias(kernel=gzip_written))
    keras("string-bias", kernel_bias(bias=lambda g, n: g.create_dataset(n, data=np.array([b"abc", b"def"]))))
    keras("compound", kernel_bias(bias=lambda g, n: g.create_dataset(n, data=np.zeros(4, "f4,i4"))))
    keras("vlen", kernel_bias(bias=lambda g, n: g.create_dataset(n, shape=(2,), dtype=h5py.vlen_dtype("f4"))))
    keras("scalar-kernel", kernel_bias(kernel=lambda g, n: g.create_dataset(n, data=np.float32(1))))
    keras("nan-kernel", kernel_bias(kernel=lambda g, n: g.create_dataset(n, data=np.full((3, 3, 3, 4), np.nan, "f4"))))
    keras("zero-channels", kernel_bias(kernel=lambda g, n: g.create_dataset(n, shape=(3, 3, 3, 0), dtype="f4"),
                                       bias=lambda g, n: g.create_dataset(n, shape=(0,), dtype="f4")))
    keras("7-dims", kernel_bias(kernel=lambda g, n: g.create_dataset(n, data=np.zeros((1,) * 7, "f4"))))

    def vds(g, n):
        layout = h5py.VirtualLayout(shape=(16,), dtype="f4")
        layout[:] = h5py.VirtualSource(secret, "x", shape=(16,))
        g.create_virtual_dataset(n, layout, fillvalue=0)
    keras("virtual", kernel_bias(bias=vds))

    # zero-channel conv followed by a dense layer (the flatten guess divided by zero)
    p = os.path.join(d, "keras-zero-div.h5")
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = np.array([b"c", b"fc1"])
        for lname, k, b in (("c", np.zeros((3, 3, 3, 0), "f4"), np.zeros(0, "f4")),
                            ("fc1", np.zeros((4, 4), "f4"), np.zeros(4, "f4"))):
            g = f.create_group(lname)
            g.attrs["weight_names"] = np.array([b"k", b"b"])
            g.create_dataset("k", data=k)
            g.create_dataset("b", data=b)
    cases.append(convert_case("hdf5", "keras-zero-div", p, d))
    # layer names: newlines, ANSI escapes, 10 MB, and bad attribute types
    for name, lnames in [("newline-names", np.array([b"block1\nTraceback (most recent call last):\n  evil"])),
                         ("ansi-names", np.array([b"\x1b[2J\x1b[31mred"])),
                         ("huge-name", np.array([b"A" * (10 << 20)])),
                         ("numeric-names", np.arange(5)),
                         ("many-names", np.array([b"x%d" % i for i in range(5000)]))]:
        p = os.path.join(d, f"keras-{name}.h5")
        with h5py.File(p, "w") as f:
            f.attrs.create("layer_names", lnames) if name != "huge-name" else None
            if name == "huge-name":
                f.attrs.create("layer_names", [lnames[0].decode()], dtype=h5py.string_dtype())
        cases.append(convert_case("hdf5", f"keras-{name}", p, d))
    # model_weights as an external link
    p = os.path.join(d, "keras-model-weights-link.h5")
    with h5py.File(p, "w") as f:
        f["model_weights"] = h5py.ExternalLink(secret, "/")
        f.attrs["layer_names"] = np.array([b"model_weights"])
    cases.append(convert_case("hdf5", "keras-model-weights-link", p, d))

    # our own format: attributes
    bad_attrs = {
        "mean-scalar": {"mean": 5.0}, "mean-strings": {"mean": np.array([b"a", b"b", b"c"])},
        "mean-len2": {"mean": [1.0, 2.0]}, "mean-nan": {"mean": [np.nan, 1.0, 1.0]},
        "mean-2d": {"mean": np.ones((3, 3))},
        "scale-string": {"scale": "255"}, "scale-nan": {"scale": np.nan}, "scale-zero": {"scale": 0.0},
        "scale-neg": {"scale": -1.0}, "scale-inf": {"scale": np.inf},
        "std-zero": {"std": [0.0, 1.0, 1.0]}, "std-neg": {"std": [-1.0, 1.0, 1.0]}, "std-inf": {"std": [np.inf, 1, 1]},
        "order-xyz": {"channel_order": "xyz"}, "order-int": {"channel_order": 3},
        "order-missing": {"channel_order": None}, "arch-vgg99": {"arch": "vgg99"}, "arch-int": {"arch": 16},
        "source-newline": {"source_file": "a\nerror: forged"}, "source-ansi": {"source_file": "\x1b[31mx"},
        "source-ragged": {"source_file": np.array([1.0, 2.0])},
        "normalized-str": {"normalized": "yes"}, "images-neg": {"normalize_images": -3},
        "huge-attr": {"source_format": np.zeros(100000, "f8")},
    }
    for name, attrs in bad_attrs.items():
        p = os.path.join(d, f"ours-{name}.h5")
        try:
            _our_file(p, attrs=attrs)
        except Exception:  # an attribute h5py itself refuses to write
            continue
        cases.append(convert_case("hdf5_attrs", f"ours-{name}", p, d))
        cases.append(weights_case("hdf5_attrs", f"ours-{name}", p))
    # our own format: datasets
    for name, extra in [
        ("external-W", lambda f: (f["conv1_1"].__delitem__("b"), ext(f["conv1_1"], "b"))),
        ("link-b", lambda f: (f["conv1_1"].__delitem__("b"), f["conv1_1"].__setitem__("b", h5py.ExternalLink(secret, "/b")))),
        ("soft-group", lambda f: (f.__delitem__("conv1_2"), f.__setitem__("conv1_2", h5py.SoftLink("/conv1_1")))),
        ("extlink-group", lambda f: (f.__delitem__("conv1_2"), f.__setitem__("conv1_2", h5py.ExternalLink(secret, "/")))),
        ("fill-group", lambda f: f.create_group("fc6").create_dataset("W", shape=(4096, 25088 * 9), dtype="f4",
                                                                      fillvalue=1.0) and f["fc6"].create_dataset(
            "b", shape=(4096,), dtype="f4", fillvalue=1.0)),
        ("fill-extra", lambda f: f.create_group("extra").create_dataset("W", shape=(1 << 30,), dtype="f4")),
        ("inf-bias", lambda f: f["conv1_1/b"].__setitem__(0, np.inf)),
        ("nan-W", lambda f: f["conv1_1/W"].__setitem__((0, 0, 0, 0), np.nan)),
        ("fifo-external", lambda f: (f["conv1_1"].__delitem__("b"), f["conv1_1"].create_dataset(
            "b", shape=(4,), dtype="f4", external=[(os.path.join(d, "fifo"), 0, 16)]))),
    ]:
        p = os.path.join(d, f"ours-{name}.h5")
        _our_file(p, extra=extra)
        cases.append(convert_case("hdf5", f"ours-{name}", p, d))
        cases.append(weights_case("hdf5", f"ours-{name}", p))
        cases.append(normalize_case("hdf5", f"ours-{name}", p, d))
    return cases


# ------------------------------------------------------------------ generators: MATLAB

def gen_mat(rng, d, secret):
    """MatConvNet .mat files with strings, cells, structs and 5-D arrays where numbers are
    due, NaN means, and compressed bombs."""
    import scipy.io

    cases = []

    def layer(W, b, name="conv1_1", ltype="conv"):
        wts = np.empty((1, 2), dtype=object)
        wts[0, 0], wts[0, 1] = W, b
        return {"name": name, "type": ltype, "weights": wts}

    def write(name, layers, meta=None, compress=False):
        p = os.path.join(d, f"mat-{name}.mat")
        cell = np.empty((1, len(layers)), dtype=object)
        for i, L in enumerate(layers):
            cell[0, i] = L
        v = {"layers": cell}
        if meta is not None:
            v["meta"] = meta
        scipy.io.savemat(p, v, do_compression=compress)
        cases.append(convert_case("mat", name, p, d))

    W, b = np.zeros((3, 3, 3, 4), "f4"), np.zeros((4, 1), "f4")
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = W
    write("string-W", [layer("weights", b)])
    write("string-b", [layer(W, "bias")])
    write("cell-W", [layer(cell, b)])
    write("struct-W", [layer({"a": W}, b)])
    write("5d-W", [layer(np.zeros((3, 3, 3, 4, 2), "f4"), b)])
    write("complex-W", [layer(np.zeros((3, 3, 3, 4), "c8"), b)])
    write("bool-name", [layer(W, b, name=np.array([True]))])
    write("struct-name", [layer(W, b, name={"x": 1})])
    write("nan-mean", [layer(W, b)], meta={"normalization": {"averageImage": np.array([np.nan, 1, 2], "f4")}})
    write("string-mean", [layer(W, b)], meta={"normalization": {"averageImage": "abc"}})
    write("cell-mean", [layer(W, b)], meta={"normalization": {"averageImage": cell}})
    write("layers-numbers", [np.zeros(3)])
    write("compressed-bomb", [layer(np.zeros((2048, 2048, 4), "f4"), b)], compress=True)
    p = os.path.join(d, "mat-huge-cell.mat")
    hc = np.empty((1, 2), dtype=object)
    hc[0, 0], hc[0, 1] = np.zeros(1), np.zeros(1)
    scipy.io.savemat(p, {"layers": hc})
    data = bytearray(open(p, "rb").read())
    # declare the cell as 2**30 x 2**30: scipy would allocate the object array first
    i = data.find(struct.pack("<II", 5, 8), 128)
    if i > 0:
        data[i + 8:i + 16] = struct.pack("<ii", 1 << 30, 1 << 30)
    with open(p, "wb") as f:
        f.write(data)
    cases.append(convert_case("mat", "huge-cell", p, d))
    for name, head in (("v73", b"MATLAB 7.3 MAT-file"), ("bad-endian", None)):
        p = os.path.join(d, f"mat-{name}.mat")
        raw = bytearray(b"MATLAB 5.0 MAT-file" + b" " * 200)
        if head:
            raw[:len(head)] = head
        raw[126:128] = b"XX"
        with open(p, "wb") as f:
            f.write(raw)
        cases.append(convert_case("mat", name, p, d))
    return cases


# ------------------------------------------------------------------ generators: images

def gen_images(rng, d, secret):
    """normalize --images with images too large to decode or too large once resized."""
    from PIL import Image

    cases = []
    weights = os.path.join(d, "img-weights.h5")
    _our_file(weights)
    strip = os.path.join(d, "strip.png")
    Image.new("RGB", (5000, 1)).save(strip)
    cases.append(normalize_case("images", "strip-1x5000", weights, d, [strip]))
    # a PNG whose header claims 60000 x 60000 (the data is tiny)
    p = os.path.join(d, "bomb.png")
    Image.new("L", (1, 1)).save(p)
    raw = bytearray(open(p, "rb").read())
    raw[16:24] = struct.pack(">II", 60000, 60000)
    import zlib
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    with open(p, "wb") as f:
        f.write(raw)
    cases.append(normalize_case("images", "png-60000", weights, d, [p]))
    cases.append(normalize_case("images", "not-an-image", weights, d, [weights]))
    cases.append(normalize_case("images", "fifo-image", weights, d, [os.path.join(d, "fifo")]))
    return cases


# ------------------------------------------------------------------ generators: special files

def gen_special(rng, d, secret):
    fifo = os.path.join(d, "fifo")
    cases = [convert_case("special", "fifo", fifo, d), inspect_case("special", "fifo", fifo),
             weights_case("special", "fifo", fifo), convert_case("special", "dev-zero", "/dev/zero", d),
             convert_case("special", "dir", d, d)]
    good = os.path.join(d, "special-good.h5")
    _our_file(good)
    cases.append({"cls": "special", "name": "out-dev-null", "tool": "weights_tools",
                  "argv": ["convert", good, "--out", "/dev/null", "--force"]})
    cases.append({"cls": "special", "name": "out-is-input", "tool": "weights_tools",
                  "argv": ["convert", good, "--out", good, "--force"]})
    cases.append({"cls": "special", "name": "out-fifo", "tool": "weights_tools",
                  "argv": ["convert", good, "--out", fifo, "--force"]})
    return cases


# ------------------------------------------------------------------ mutations of genuine files

def genuine_files(d, arch="vgg16", full=False):
    """Genuine-format files of every reader: ``{kind: path}`` (``full``: real VGG shapes)."""
    sys.path.insert(0, HERE)
    import weights_gen as gen

    params = gen.random_params(arch, seed=3) if full else tiny_params(arch, seed=3)
    out = {}
    out["caffe"] = os.path.join(d, "g.caffemodel")
    gen.write_caffemodel(out["caffe"], arch, params)
    out["keras"] = os.path.join(d, "g-keras.h5")
    gen.write_keras(out["keras"], arch, params)
    out["keras-gzip"] = os.path.join(d, "g-keras-gz.h5")
    gen.write_keras(out["keras-gzip"], arch, params, compression="gzip")
    out["mat"] = os.path.join(d, "g.mat")
    gen.write_matconvnet(out["mat"], arch, params)
    pkl, records = state_dict_pickle(params)
    out["torch-zip"] = os.path.join(d, "g-zip.pth")
    torch_zip(out["torch-zip"], pkl, records)
    out["torch-legacy"] = os.path.join(d, "g-legacy.pth")
    legacy_file(out["torch-legacy"], pkl, keys=[k for k, _ in records], storages=[r for _, r in records])
    out["minivgg"] = os.path.join(d, "g-ours.h5")
    _our_file(out["minivgg"], params=params)
    return out


def mutate(data, rng, kind):
    b = bytearray(data)
    if kind == "truncate":
        return bytes(b[: int(rng.integers(0, len(b)))])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
    elif kind == "byte":
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(0, len(b)))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, int(rng.integers(0, 256))]))
    elif kind == "int":  # a 32-bit field set to a boundary value
        pos = int(rng.integers(0, max(1, len(b) - 4)))
        b[pos:pos + 4] = struct.pack("<I", int(rng.choice([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 24])))
    elif kind == "header":  # mutate the first 512 bytes, where the structure is
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(0, min(len(b), 512)))] = int(rng.integers(0, 256))
    return bytes(b)


def gen_mutations(rng, d, secret, per_kind=6, full=False):
    cases = []
    files = genuine_files(d, full=full)
    for kind, path in files.items():
        data = open(path, "rb").read()
        for i in range(per_kind):
            how = ("truncate", "flip", "byte", "int", "header")[i % 5]
            p = os.path.join(d, f"mut-{kind}-{i}{os.path.splitext(path)[1]}")
            with open(p, "wb") as f:
                f.write(mutate(data, rng, how))
            c = convert_case("mutation", f"{kind}-{how}-{i}", p, d)
            c["may_succeed"] = True
            cases.append(c)
            if kind == "minivgg":
                w = weights_case("mutation", f"{kind}-{how}-{i}", p)
                w["may_succeed"] = True
                cases.append(w)
    return cases


GENERATORS = {
    "pickle_hostile": gen_pickle_hostile, "pickle_tensor": gen_pickle_tensor, "pickle_bombs": gen_pickle_bombs,
    "zip": gen_zip, "hdf5": gen_hdf5, "mat": gen_mat, "images": gen_images, "special": gen_special,
}


def make_cases(d, seed=0, classes=None, mutations=6, full=False):
    """Write every generator's files under ``d`` (with a FIFO and a planted secret):
    ``(cases, secret_token)``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(d, "out"), exist_ok=True)
    fifo = os.path.join(d, "fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    secret = os.path.join(d, "secret.txt")
    token = write_secret(secret, rng)
    cases = []
    for name, fn in GENERATORS.items():
        if classes is None or name in classes:
            cases += fn(rng, d, secret)
    if mutations and (classes is None or "mutation" in classes):
        cases += gen_mutations(rng, d, secret, per_kind=mutations, full=full)
    return cases, token


# ------------------------------------------------------------------ the guarded runner

def limit_resources(mem_bytes, cpu_seconds=None):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    if cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))


class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def run_case(case):
    """Run one case in this process: a record of what happened."""
    import time
    import traceback

    out_dir = None
    if case["tool"] == "weights_tools" and "--out" in case["argv"]:
        out_dir = os.path.dirname(case["argv"][case["argv"].index("--out") + 1])
    before = set(os.listdir(out_dir)) if out_dir and os.path.isdir(out_dir) else set()
    err, out = io.StringIO(), io.StringIO()
    rec = {"name": case["name"], "cls": case["cls"], "status": None, "exception": None}
    old = sys.stderr, sys.stdout
    sys.stderr, sys.stdout = err, out
    t0 = time.perf_counter()
    try:
        if case["tool"] == "weights_tools":
            from weights_tools import cli

            rec["status"] = cli.main(case["argv"])
        else:
            from minivgg import cli as mcli
            from minivgg.errors import MiniVGGError
            from minivgg.vgg import load_vgg

            try:
                load_vgg("vgg16", weights=case["argv"][0])
                rec["status"] = 0
            except MiniVGGError as e:
                sys.stderr.write(f"error: {mcli._one_line(e)}\n")
                rec["status"] = 2
    except _Timeout:
        rec["exception"] = "timeout"
    except SystemExit as e:
        rec["status"] = e.code
    except BaseException as e:  # noqa: BLE001 - recorded, the test fails on it
        rec["exception"] = f"{type(e).__name__}: {str(e)[:300]}"
        rec["traceback"] = traceback.format_exc()[-2000:]
    finally:
        sys.stderr, sys.stdout = old
    rec["seconds"] = time.perf_counter() - t0
    rec["stderr"] = err.getvalue()[:20000]
    rec["stdout"] = out.getvalue()[:20000]
    after = set(os.listdir(out_dir)) if out_dir and os.path.isdir(out_dir) else set()
    rec["new_files"] = sorted(after - before)
    rec["outputs"] = [os.path.join(out_dir, n) for n in rec["new_files"]] if out_dir else []
    return rec


def run_batch(cases, mem_bytes, seconds):
    import signal

    limit_resources(mem_bytes)
    signal.signal(signal.SIGALRM, _on_alarm)
    results = []
    for case in cases:
        sys.__stderr__.write(f"case {case['name']}\n")  # the last one names the culprit of a crash
        sys.__stderr__.flush()
        signal.alarm(seconds)
        try:
            results.append(run_case(case))
        finally:
            signal.alarm(0)
    return results


def main(argv):
    if argv[0] == "batch":
        with open(argv[1]) as f:
            job = json.load(f)
        sys.path.insert(0, ROOT)
        results = run_batch(job["cases"], job["mem_bytes"], job["seconds"])
        with open(argv[2], "w") as f:
            json.dump(results, f)
        return 0
    if argv[0] == "one":  # one case, the record as JSON on fd 3's file
        with open(argv[1]) as f:
            job = json.load(f)
        sys.path.insert(0, ROOT)
        results = run_batch([job["case"]], job["mem_bytes"], job["seconds"])
        with open(argv[2], "w") as f:
            json.dump(results[0], f)
        return 0
    raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
