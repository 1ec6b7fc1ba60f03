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
global *before* anything is called. Sizes, offsets and strides are checked against the
bytes actually present before a tensor is built.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from minivgg.errors import MiniVGGError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_ELEMENTS = 1 << 31  # 8 GiB of float32; VGG's largest tensor (fc6) has 103M

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


class StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the element type."""

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def __repr__(self):
        return f"torch.{self.name}"


class Storage:
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


class StorageView:
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


class LazyTensor:
    """The arguments of a ``_rebuild_tensor`` call; made into an array by :func:`materialize`."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @property
    def shape(self):
        return self.size


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    if not isinstance(storage, (Storage, StorageView)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    for v in (storage_offset, *size, *stride):
        if not isinstance(v, int) or v < 0:
            raise pickle.UnpicklingError(f"tensor has an invalid offset, size or stride ({storage_offset}, {size}, {stride})")
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
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }

    def __init__(self, file, where, storages, load_storage=None):
        super().__init__(file, encoding="latin1")
        self.where = where
        self.storages = storages  # key -> Storage, shared between the pickles of one file
        self.load_storage = load_storage  # zip layout: fetch the bytes of a key at once

    def find_class(self, module, name):
        fn = self.ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return StorageType(name)
        hint = " (a pickled model object: save model.state_dict() instead)" if module.startswith("torch") else \
            " (a checkpoint should hold only tensors; this file may be hostile)"
        raise MiniVGGError(
            f"{self.where}: refusing to load: the pickle asks for '{module}.{name}', which is not a tensor "
            f"or state-dict type{hint}"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise MiniVGGError(f"{self.where}: unknown persistent id {str(pid)[:60]!r} in the pickle")
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(stype, StorageType):
            raise MiniVGGError(f"{self.where}: storage {key!r} has no known storage type")
        if not isinstance(numel, int) or numel < 0:
            raise MiniVGGError(f"{self.where}: storage {key!r} has an invalid element count {numel!r}")
        key = str(key)
        st = self.storages.get(key)
        if st is None:
            st = Storage(key, stype, numel)
            self.storages[key] = st
            if self.load_storage is not None:
                self.load_storage(st)
        if view is not None:
            vkey, offset, vsize = view
            if not (isinstance(offset, int) and isinstance(vsize, int) and 0 <= offset and offset + vsize <= st.numel):
                raise MiniVGGError(f"{self.where}: storage view {vkey!r} lies outside storage {key!r}")
            return StorageView(st, offset, vsize)
        return st


def materialize(t, where, name):
    """Build the numpy array of a :class:`LazyTensor`, after checking it fits its storage."""
    arr = t.storage.array
    if arr is None:
        raise MiniVGGError(f"{where}: the data of tensor {name} (storage {t.storage.key}) is missing")
    n = arr.shape[0]
    count = 1
    for s in t.size:
        count *= s
    if count > MAX_ELEMENTS:
        raise MiniVGGError(f"{where}: tensor {name} claims {count} elements (size {t.size}): implausibly large")
    if count == 0:
        return np.zeros(t.size, dtype=np.float32)
    last = t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride))
    if last >= n:
        raise MiniVGGError(
            f"{where}: tensor {name} (size {t.size}, stride {t.stride}, offset {t.offset}) reaches element {last} "
            f"but its storage holds only {n}"
        )
    item = arr.itemsize
    view = np.lib.stride_tricks.as_strided(
        arr[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, dtype=np.float32)


def is_torch_zip(path):
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load(path):
    """Load a torch checkpoint as nested Python containers with numpy float32 arrays.

    Raises :class:`MiniVGGError` for anything that is not a well-formed tensor checkpoint.
    """
    where = os.path.basename(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path, where)
        else:
            obj = _load_legacy(path, where)
    except MiniVGGError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, UnicodeDecodeError, OverflowError, MemoryError, OSError) as e:
        raise MiniVGGError(f"{where}: not a readable PyTorch checkpoint (truncated or corrupt: {type(e).__name__}: {e})") from None
    return _resolve(obj, where, "")


def _resolve(obj, where, name):
    if isinstance(obj, LazyTensor):
        return materialize(obj, where, name or "tensor")
    if isinstance(obj, dict):
        out = collections.OrderedDict()
        for k, v in obj.items():
            out[k] = _resolve(v, where, f"{name}.{k}" if name else str(k))
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, where, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def _load_zip(path, where):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise MiniVGGError(f"{where}: zip archive without data.pkl: not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        have = set(names)
        if f"{prefix}byteorder" in have and z.read(f"{prefix}byteorder").strip() == b"big":
            raise MiniVGGError(f"{where}: big-endian checkpoints are not supported")

        def load_storage(st):
            rec = f"{prefix}data/{st.key}"
            if rec not in have:
                raise MiniVGGError(f"{where}: storage record {rec} is missing from the archive")
            info = z.getinfo(rec)
            want = st.numel * st.stype.itemsize
            if info.file_size < want:
                raise MiniVGGError(f"{where}: storage {st.key} needs {want} bytes but its record holds {info.file_size}")
            st.attach(z.read(rec), where)

        storages = {}
        with z.open(pkl[0]) as f:
            data = io.BytesIO(f.read())
        return RestrictedUnpickler(data, where, storages, load_storage).load()


def _load_legacy(path, where):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80:
            raise MiniVGGError(f"{where}: not a PyTorch checkpoint (no pickle header)")
        f.seek(0)
        storages = {}

        def next_pickle():
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
        if not isinstance(keys, list):
            raise MiniVGGError(f"{where}: corrupt storage key list")
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise MiniVGGError(f"{where}: storage key {key!r} is listed but never used")
            raw = f.read(8)
            if len(raw) < 8:
                raise MiniVGGError(f"{where}: truncated: the data of storage {key} is missing")
            (numel,) = struct.unpack("<q", raw)
            if numel != st.numel:
                raise MiniVGGError(f"{where}: storage {key} holds {numel} elements but the pickle says {st.numel}")
            nbytes = numel * st.stype.itemsize
            if nbytes > size - f.tell():
                raise MiniVGGError(
                    f"{where}: truncated: storage {key} needs {nbytes} bytes but only {size - f.tell()} remain"
                )
            st.attach(f.read(nbytes), where)
        return obj
