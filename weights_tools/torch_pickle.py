"""Read PyTorch checkpoints (``torch.save`` output) without torch, safely.

Two container layouts exist:

- **legacy** (torch < 1.6, and ``_use_new_zipfile_serialization=False``; the official
  torchvision ``vgg16-397923af.pth`` / ``vgg19-dcbb9e9d.pth`` are of this kind): five
  pickles one after the other -- the magic number ``0x1950a86a20f9469cfc6c``, the
  protocol version (1001), a ``sys_info`` dict, the object itself, then the sorted list
  of storage keys -- followed, for every key in that order, by the storage's element
  count (little-endian int64) and its raw bytes.
- **zip** (torch >= 1.6 default): a zip archive ``<name>/data.pkl`` (the object) and
  ``<name>/data/<key>`` (raw bytes of each storage), plus ``byteorder`` / ``version``.

In both, tensors are pickled as calls to ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)`` and storages as *persistent ids* ``("storage",
torch.FloatStorage, key, location, numel[, view_metadata])``. A pickle may name any
global and call it, which is how a hostile file runs code; :class:`RestrictedUnpickler`
therefore resolves only the tensor-rebuild functions, the storage types and
``collections.OrderedDict``, each mapped to a local stand-in, and refuses any other
global *before* anything is called.

A pickle is also a small program that can ask for memory and time, so before the
unpickler sees one, :func:`prescan` walks its opcodes (``pickletools.genops``, which
executes nothing) and bounds the opcode count, the memo indices (a ``LONG_BINPUT`` of
2**32 - 1 would make the unpickler allocate a 32 GiB memo), the mark nesting and the
length of every argument. The stand-ins refuse ``BUILD`` (``__setstate__``), so a
tensor's size, stride and offset are the ones :func:`_rebuild_tensor` checked, and
:func:`materialize` checks them against the storage's elements before any view
exists: no negative or zero stride on a dimension longer than 1, no view past the
storage, no more elements than the storage holds, no more than a VGG layer's. Storage
sizes and the file's total are bounded by what VGG can need, and :func:`_resolve`
walks containers once each (shared ones are not expanded again), to a bounded depth.
"""

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from minivgg import weights as mw
from minivgg.errors import MiniVGGError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# What VGG can need (minivgg.weights: fc6 is the largest tensor, 4096 x 25088)
MAX_ELEMENTS = mw.MAX_LAYER_ELEMENTS  # one tensor
MAX_TOTAL_ELEMENTS = mw.MAX_TOTAL_ELEMENTS  # all storages of a file, and all tensors made from them
MAX_NDIM = 4
MAX_PICKLE_BYTES = 16 << 20  # a state dict's pickle is a few kB; it holds no tensor data
MAX_OPS = 1 << 18
MAX_MEMO = 1 << 18
MAX_MARK_DEPTH = 32
MAX_ARG_BYTES = 1 << 16  # the longest string a state dict needs is a key
MAX_DEPTH = 32  # container nesting
MAX_NODES = 1 << 18  # containers and values visited

# storage type name -> numpy dtype (little-endian, as torch writes on every platform we read)
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


class _NoBuild:
    """Pickle's BUILD opcode calls ``__setstate__`` on the object below it; on our
    stand-ins that is refused, so nothing can rewrite a checked size or stride."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"BUILD on a {type(self).__name__} (a tensor's fields rewritten after its checks)")


class _Global(_NoBuild):
    """A whitelisted function as the pickle sees it: callable, but with no attributes
    to set (BUILD on a plain function would set its ``__defaults__`` for every load)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class StorageType(_NoBuild):
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the element type."""

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def __repr__(self):
        return f"torch.{self.name}"


class Storage(_NoBuild):
    """A storage whose bytes are attached later (legacy layout) or on creation (zip)."""

    def __init__(self, key, stype, numel):
        self.key = key
        self.stype = stype
        self.numel = numel
        self.array = None  # 1-D numpy array of ``numel`` elements once loaded

    def attach(self, raw, where):
        want = self.numel * self.stype.itemsize
        if len(raw) < want:
            raise MiniVGGError(f"{where}: storage {self.key} needs {want} bytes but only {len(raw)} are present (truncated file?)")
        raw = raw[:want]
        if self.stype.dtype == "bfloat16":
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            self.array = u16.view(np.float32)
        else:
            self.array = np.frombuffer(raw, dtype=self.stype.dtype)


class StorageView(_NoBuild):
    """A legacy storage view: ``view_size`` elements of ``root`` from ``offset``."""

    def __init__(self, root, offset, size):
        self.root, self.offset, self.numel = root, offset, size
        self.stype = root.stype
        self.key = root.key

    @property
    def array(self):
        if self.root.array is None:
            return None
        return self.root.array[self.offset : self.offset + self.numel]


class LazyTensor(_NoBuild):
    """The arguments of a ``_rebuild_tensor`` call; made into an array by :func:`materialize`."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @property
    def shape(self):
        return self.size


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    if not isinstance(storage, (Storage, StorageView)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise pickle.UnpicklingError("tensor size or stride is not a tuple")
    if len(size) > MAX_NDIM:
        raise pickle.UnpicklingError(f"tensor has {len(size)} dimensions; a VGG tensor has at most {MAX_NDIM}")
    for v in (storage_offset, *size, *stride):
        if type(v) is not int or v < 0:
            raise pickle.UnpicklingError(
            f"tensor has an invalid offset, size or stride ({mw.quote(storage_offset)}, {mw.quote(size)}, {mw.quote(stride)})")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {tuple(size)} and stride {tuple(stride)} differ in length")
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    return data


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype=None, *rest):
    return _rebuild_tensor(storage, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows only what a tensor checkpoint needs.

    ``find_class`` is the only way a pickle reaches a global (GLOBAL, STACK_GLOBAL, INST
    and OBJ all go through it), so refusing there stops ``os.system``, ``builtins.eval``,
    ``subprocess.Popen`` and the rest before any of them can be called.
    """

    ALLOWED = {
        ("collections", "OrderedDict"): _Global(collections.OrderedDict),
        ("torch._utils", "_rebuild_tensor"): _Global(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _Global(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v3"): _Global(_rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Global(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Global(_rebuild_parameter),
    }

    def __init__(self, file, where, storages, load_storage=None):
        super().__init__(file, encoding="latin1")
        self.where = where
        self.total = 0  # elements of all storages so far
        self.storages = storages  # key -> Storage, shared between the pickles of one file
        self.load_storage = load_storage  # zip layout: fetch the bytes of a key at once

    def find_class(self, module, name):
        fn = self.ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return StorageType(name)
        hint = " (a pickled model object: save model.state_dict() instead)" if str(module).startswith("torch") else \
            " (a checkpoint should hold only tensors; this file may be hostile)"
        raise MiniVGGError(
            f"{self.where}: refusing to load: the pickle asks for {mw.quote(f'{module}.{name}')}, which is not a tensor "
            f"or state-dict type{hint}"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise MiniVGGError(f"{self.where}: unknown persistent id {mw.quote(pid, 60)} in the pickle")
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(key, (str, int)):
            raise MiniVGGError(f"{self.where}: storage key {mw.quote(key)} is not a name")
        key = str(key)
        if not isinstance(stype, StorageType):
            raise MiniVGGError(f"{self.where}: storage {mw.quote(key)} has no known storage type")
        if type(numel) is not int or numel < 0:
            raise MiniVGGError(f"{self.where}: storage {mw.quote(key)} has an invalid element count {mw.quote(numel)}")
        st = self.storages.get(key)
        if st is None:
            total = sum(x.numel for x in self.storages.values()) + numel
            if total > MAX_TOTAL_ELEMENTS:
                raise MiniVGGError(f"{self.where}: storage {mw.quote(key)} needs {numel} elements ({total} in all); VGG "
                                   f"has at most {MAX_TOTAL_ELEMENTS} weights (corrupt or hostile file)")
            st = Storage(key, stype, numel)
            self.storages[key] = st
            if self.load_storage is not None:
                self.load_storage(st)
        if st.stype is not stype and st.stype.name != stype.name:
            raise MiniVGGError(f"{self.where}: storage {mw.quote(key)} is named with two element types")
        if view is not None:
            if not isinstance(view, tuple) or len(view) != 3:
                raise MiniVGGError(f"{self.where}: storage {mw.quote(key)} has a malformed view")
            vkey, offset, vsize = view
            if not (type(offset) is int and type(vsize) is int and 0 <= offset and 0 <= vsize
                    and offset + vsize <= st.numel):
                raise MiniVGGError(f"{self.where}: storage view {mw.quote(vkey)} lies outside storage {mw.quote(key)}")
            return StorageView(st, offset, vsize)
        return st


def materialize(t, where, name, budget=None):
    """Build the numpy array of a :class:`LazyTensor`, after checking it fits its storage.

    Every number is checked before a view exists: a dimension longer than 1 needs a
    stride of at least 1 (no broadcast views, which make a huge tensor from one
    element), the last element reached must lie inside the storage, and the tensor
    cannot have more elements than its storage (a genuine tensor never does; an
    overlapping view would). ``budget``: a one-element list of elements still allowed
    for the whole file, decremented.
    """
    name = mw.quote(name)
    arr = t.storage.array
    if arr is None:
        raise MiniVGGError(f"{where}: the data of tensor {name} (storage {mw.quote(t.storage.key)}) is missing")
    n = arr.shape[0]
    count = 1
    for s in t.size:
        count *= s
    if count > MAX_ELEMENTS:
        raise MiniVGGError(f"{where}: tensor {name} claims {count} elements (size {t.size}): implausibly large, a VGG "
                           f"tensor has at most {MAX_ELEMENTS}")
    if budget is not None:
        if count > budget[0]:
            raise MiniVGGError(f"{where}: its tensors hold more than {MAX_TOTAL_ELEMENTS} elements in all; VGG has fewer")
        budget[0] -= count
    if count == 0:
        return np.zeros(t.size, dtype=np.float32)
    strides = []
    for s, st in zip(t.size, t.stride):
        if s > 1 and st < 1:
            raise MiniVGGError(f"{where}: tensor {name} has stride {st} on a dimension of {s} (a broadcast view)")
        strides.append(st if s > 1 else 0)
    last = t.offset + sum((s - 1) * st for s, st in zip(t.size, strides))
    if last >= n:
        raise MiniVGGError(
            f"{where}: tensor {name} (size {t.size}, stride {t.stride}, offset {t.offset}) reaches element {last} "
            f"but its storage holds only {n}"
        )
    if count > n:
        raise MiniVGGError(f"{where}: tensor {name} (size {t.size}) has {count} elements but its storage holds only {n}")
    item = arr.itemsize
    # every stride is now at most n and every index below n: the view stays inside arr
    view = np.lib.stride_tricks.as_strided(
        arr[t.offset :], shape=t.size, strides=tuple(st * item for st in strides), writeable=False
    )
    return np.array(view, dtype=np.float32)


class _BoundedReader:
    """A file object whose reads never ask for more than the file still holds (a
    ``BINBYTES8`` of 2**60 bytes would otherwise allocate that much before failing)."""

    def __init__(self, f, size):
        self.f, self.size = f, size

    def read(self, n=-1):
        left = max(0, self.size - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, n=-1):
        left = max(0, self.size - self.f.tell())
        return self.f.readline(min(left, MAX_ARG_BYTES + 2) if n is None or n < 0 else min(n, left))

    def tell(self):
        return self.f.tell()

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)


def prescan(f, where):
    """Walk the opcodes of the pickle at ``f``'s position without executing any, and
    refuse one that asks for more than a state dict can need; ``f`` is put back."""
    start = f.tell()
    ops = memo = depth = 0
    try:
        for op, arg, _pos in pickletools.genops(f):
            ops += 1
            if ops > MAX_OPS:
                raise MiniVGGError(f"{where}: the pickle has more than {MAX_OPS} opcodes; a state dict has far fewer")
            name = op.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if type(arg) is not int or not 0 <= arg < MAX_MEMO:
                    raise MiniVGGError(f"{where}: the pickle stores memo entry {mw.quote(arg)}; at most {MAX_MEMO} allowed")
            elif name == "MEMOIZE":
                memo += 1
                if memo > MAX_MEMO:
                    raise MiniVGGError(f"{where}: the pickle has more than {MAX_MEMO} memo entries")
            elif name == "MARK":
                depth += 1
                if depth > MAX_MARK_DEPTH:
                    raise MiniVGGError(f"{where}: the pickle nests more than {MAX_MARK_DEPTH} marks")
            elif pickletools.markobject in op.stack_before:
                depth -= 1
            if isinstance(arg, (bytes, str, bytearray)) and len(arg) > MAX_ARG_BYTES:
                raise MiniVGGError(f"{where}: the pickle holds a string of {len(arg)} bytes; a state dict has none "
                                   f"longer than {MAX_ARG_BYTES}")
            if name == "FRAME" and arg > MAX_PICKLE_BYTES:
                raise MiniVGGError(f"{where}: the pickle announces a frame of {arg} bytes")
    except MiniVGGError:
        raise
    except (ValueError, EOFError, struct.error, UnicodeDecodeError, OverflowError, IndexError, TypeError) as e:
        raise MiniVGGError(f"{where}: not a readable pickle (truncated or corrupt: {type(e).__name__}: "
                           f"{mw.quote(str(e), 120)})") from None
    f.seek(start)


def is_torch_zip(path):
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except Exception as e:  # a mutated central directory raises ValueError, struct.error, ...
        raise MiniVGGError(f"{os.path.basename(path)}: a corrupt zip archive ({type(e).__name__})") from None


def load(path):
    """Load a torch checkpoint as nested Python containers with numpy float32 arrays.

    Raises :class:`MiniVGGError` for anything that is not a well-formed tensor checkpoint.
    """
    where = os.path.basename(path)
    mw.check_regular_file(path, "checkpoint")
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path, where)
        else:
            obj = _load_legacy(path, where)
        return _Resolver(where).resolve(obj, "", 0)
    except MiniVGGError:
        raise
    except RecursionError:
        raise MiniVGGError(f"{where}: not a readable PyTorch checkpoint (nested too deeply)") from None
    except MemoryError:
        raise MiniVGGError(f"{where}: not enough memory to read this checkpoint") from None
    except Exception as e:  # pickle, zipfile (also NotImplementedError, RuntimeError), struct, numpy, ...
        raise MiniVGGError(f"{where}: not a readable PyTorch checkpoint (truncated or corrupt: {type(e).__name__}: "
                           f"{mw.quote(str(e), 120)})") from None


class _Resolver:
    """Replace every :class:`LazyTensor` in the unpickled object by its array. Each
    container is visited once (a shared one is reused, not expanded again: a pickle of
    30 lists each holding the previous twice is 2**30 leaves as a tree), a container
    that contains itself is refused, and depth and visits are bounded."""

    def __init__(self, where):
        self.where = where
        self.done = {}  # id -> result
        self.active = set()
        self.keep = []  # keeps the ids in ``done`` valid
        self.nodes = 0
        self.budget = [MAX_TOTAL_ELEMENTS]

    def resolve(self, obj, name, depth):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise MiniVGGError(f"{self.where}: the checkpoint holds more than {MAX_NODES} objects; a state dict has far fewer")
        if not isinstance(obj, (LazyTensor, dict, list, tuple)):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise MiniVGGError(f"{self.where}: {mw.quote(name or 'the object')} contains itself (not a state dict)")
        if depth > MAX_DEPTH:
            raise MiniVGGError(f"{self.where}: containers nested more than {MAX_DEPTH} deep (not a state dict)")
        self.active.add(key)
        if isinstance(obj, LazyTensor):
            out = materialize(obj, self.where, name or "tensor", self.budget)
        elif isinstance(obj, dict):
            out = collections.OrderedDict()
            for k, v in obj.items():
                out[k] = self.resolve(v, f"{name}.{k}" if name else str(k), depth + 1)
        else:
            out = [self.resolve(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(obj)]
            out = tuple(out) if isinstance(obj, tuple) else out
        self.active.discard(key)
        self.done[key] = out
        self.keep.append(obj)
        return out


def _load_zip(path, where):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise MiniVGGError(f"{where}: zip archive without data.pkl: not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        have = set(names)
        if f"{prefix}byteorder" in have and _read_member(z, f"{prefix}byteorder", 16, where).strip() == b"big":
            raise MiniVGGError(f"{where}: big-endian checkpoints are not supported")

        def load_storage(st):
            rec = f"{prefix}data/{st.key}"
            if rec not in have:
                raise MiniVGGError(f"{where}: storage record {rec} is missing from the archive")
            info = z.getinfo(rec)
            want = st.numel * st.stype.itemsize
            if info.file_size < want:
                raise MiniVGGError(f"{where}: storage {mw.quote(st.key)} needs {want} bytes but its record holds {info.file_size}")
            # only ``want`` bytes are inflated, whatever the record claims (a zip bomb stops here)
            st.attach(_read_member(z, rec, want, where, exact=True), where)

        storages = {}
        data = io.BytesIO(_read_member(z, pkl[0], MAX_PICKLE_BYTES, where))
        prescan(data, where)
        return RestrictedUnpickler(data, where, storages, load_storage).load()


def _read_member(z, name, limit, where, exact=False):
    """At most ``limit`` inflated bytes of a zip member (``exact``: the first ``limit``);
    a longer member is refused unless ``exact``."""
    with z.open(name) as f:
        data = f.read(limit + (0 if exact else 1))
    if not exact and len(data) > limit:
        raise MiniVGGError(f"{where}: zip member {mw.quote(name)} inflates to more than {limit} bytes")
    return data


def _load_legacy(path, where):
    size = os.path.getsize(path)
    with open(path, "rb") as raw:
        f = _BoundedReader(raw, size)
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80:
            raise MiniVGGError(f"{where}: not a PyTorch checkpoint (no pickle header)")
        f.seek(0)
        storages = {}

        def next_pickle():
            prescan(f, where)
            return RestrictedUnpickler(f, where, storages).load()

        magic = next_pickle()
        if magic != LEGACY_MAGIC:
            raise MiniVGGError(f"{where}: a pickle, but not a PyTorch checkpoint (bad magic number)")
        proto = next_pickle()
        if proto != LEGACY_PROTOCOL:
            raise MiniVGGError(f"{where}: unsupported PyTorch serialization protocol {proto!r}")
        sys_info = next_pickle()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise MiniVGGError(f"{where}: big-endian checkpoints are not supported")
        obj = next_pickle()
        keys = next_pickle()
        if not isinstance(keys, list) or len(keys) > len(storages):
            raise MiniVGGError(f"{where}: corrupt storage key list")
        for key in keys:
            st = storages.get(str(key)) if isinstance(key, (str, int)) else None
            if st is None:
                raise MiniVGGError(f"{where}: storage key {mw.quote(key)} is listed but never used")
            raw = f.read(8)
            if len(raw) < 8:
                raise MiniVGGError(f"{where}: truncated: the data of storage {mw.quote(key)} is missing")
            (numel,) = struct.unpack("<q", raw)
            if numel != st.numel:
                raise MiniVGGError(f"{where}: storage {mw.quote(key)} holds {numel} elements but the pickle says {st.numel}")
            nbytes = numel * st.stype.itemsize
            if nbytes > size - f.tell():
                raise MiniVGGError(
                    f"{where}: truncated: storage {mw.quote(key)} needs {nbytes} bytes but only {size - f.tell()} remain"
                )
            st.attach(f.read(nbytes), where)
        return obj
