"""The torch checkpoint reader: both serializations, without torch, and never running
code from the file (hostile pickles are refused before any call)."""

import collections
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from minivgg.errors import MiniVGGError
from weights_tools import cli, torch_pickle


class _Hostile:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _legacy_file(path, obj_pickle):
    """The legacy layout with ``obj_pickle`` (bytes) as the main pickle and no storages."""
    with open(path, "wb") as f:
        pickle.dump(torch_pickle.LEGACY_MAGIC, f, protocol=2)
        pickle.dump(torch_pickle.LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(obj_pickle)
        pickle.dump([], f, protocol=2)


def _zip_file(path, data_pkl, records=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for name, data in records:
            z.writestr(f"archive/data/{name}", data)


def _hostile_payloads(marker):
    import builtins
    import subprocess

    return [
        ("os.system", pickle.dumps({"w": _Hostile(os.system, f"touch {marker}")}, protocol=2)),
        ("builtins.eval", pickle.dumps(_Hostile(builtins.eval, f"open({str(marker)!r}, 'w')"), protocol=2)),
        ("builtins.exec", pickle.dumps([_Hostile(builtins.exec, f"open({str(marker)!r}, 'w')")], protocol=4)),
        ("subprocess.Popen", pickle.dumps(_Hostile(subprocess.Popen, ["touch", str(marker)]), protocol=2)),
    ]


@pytest.mark.parametrize("layout", ["legacy", "zip", "bare"])
def test_hostile_pickles_refused_before_running(tmp_path, capsys, layout):
    marker = tmp_path / "pwned"
    for what, payload in _hostile_payloads(marker):
        p = tmp_path / f"evil_{layout}.pth"
        if layout == "legacy":
            _legacy_file(p, payload)
        elif layout == "zip":
            _zip_file(p, payload)
        else:
            p.write_bytes(payload)
        out = tmp_path / "o.h5"
        code = cli.main(["convert", str(p), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, what
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert f"evil_{layout}.pth" in err
        if layout != "bare":
            assert "refusing" in err and what.split(".")[-1] in err, err
        assert not marker.exists(), what
        assert not out.exists()
        with pytest.raises(MiniVGGError):
            torch_pickle.load(str(p))
        assert not marker.exists(), what


def test_hostile_global_in_magic_pickle(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    p.write_bytes(pickle.dumps(_Hostile(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(MiniVGGError, match="refusing.*system"):
        torch_pickle.load(str(p))
    assert not marker.exists()


def _int(v):
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _str(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()  # BINUNICODE


def _tensor_pickle(storage_numel, size, stride, offset=0, stype="FloatStorage"):
    """A hand-made checkpoint pickle, opcode by opcode, as torch writes it:
    ``{"w": torch._utils._rebuild_tensor_v2(<storage pid>, offset, size, stride, False, OrderedDict())}``
    -- so the numbers can lie about the bytes that follow."""
    storage_pid = (b"(" + _str("storage") + f"ctorch\n{stype}\n".encode() + _str("0") + _str("cpu")
                   + _int(storage_numel) + b"tQ")  # MARK ... TUPLE BINPERSID
    args = (b"(" + storage_pid + _int(offset)
            + b"(" + b"".join(_int(v) for v in size) + b"t"
            + b"(" + b"".join(_int(v) for v in stride) + b"t"
            + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"t")
    return b"\x80\x02}" + _str("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs."


def test_handmade_checkpoint_reads_with_strides(tmp_path):
    data = np.arange(12, dtype="<f4")
    p = tmp_path / "ok.pth"
    _zip_file(p, _tensor_pickle(12, (3, 2), (1, 3), offset=0), [("0", data.tobytes())])
    obj = torch_pickle.load(str(p))
    np.testing.assert_array_equal(obj["w"], [[0, 3], [1, 4], [2, 5]])


@pytest.mark.parametrize("size, stride, offset, numel, nbytes, match", [
    ((10,), (1,), 0, 12, 48, None),
    ((13,), (1,), 0, 12, 48, "reaches element 12"),
    ((4,), (4,), 0, 12, 48, "reaches element 12"),
    ((2,), (1,), 11, 12, 48, "reaches element 12"),
    ((3,), (1,), 0, 12, 40, "needs 48 bytes"),
    ((3,), (1,), 0, 1 << 40, 48, "needs"),
    ((1 << 40,), (0,), 0, 12, 48, "implausibly large"),
])
def test_sizes_offsets_strides_checked_against_bytes(tmp_path, size, stride, offset, numel, nbytes, match):
    p = tmp_path / "lie.pth"
    _zip_file(p, _tensor_pickle(numel, size, stride, offset), [("0", np.zeros(nbytes // 4, "<f4").tobytes())])
    if match is None:
        assert torch_pickle.load(str(p))["w"].shape == size
    else:
        with pytest.raises(MiniVGGError, match=match):
            torch_pickle.load(str(p))


def test_missing_storage_record(tmp_path):
    p = tmp_path / "norec.pth"
    _zip_file(p, _tensor_pickle(4, (4,), (1,)))
    with pytest.raises(MiniVGGError, match="norec.pth.*missing"):
        torch_pickle.load(str(p))


def test_unknown_storage_type_refused(tmp_path):
    p = tmp_path / "st.pth"
    _zip_file(p, _tensor_pickle(4, (4,), (1,), stype="Evil"), [("0", b"\0" * 16)])
    with pytest.raises(MiniVGGError, match="refusing.*torch.Evil"):
        torch_pickle.load(str(p))


@pytest.mark.torch
@pytest.mark.parametrize("zipped", [False, True])
def test_reads_torch_save_without_torch_code(tmp_path, zipped):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    sd = collections.OrderedDict(
        [("a.weight", torch.randn(4, 3, 3, 3, generator=g)), ("a.bias", torch.randn(4, generator=g)),
         ("view", base[1:4, ::2]), ("t", base.t()), ("half", torch.randn(3, generator=g).half()),
         ("d", torch.randn(2, 2, dtype=torch.float64, generator=g)),
         ("p", torch.nn.Parameter(torch.randn(3, generator=g)))])
    p = tmp_path / "sd.pth"
    torch.save(sd, str(p), _use_new_zipfile_serialization=zipped)
    obj = torch_pickle.load(str(p))
    assert list(obj) == list(sd)
    for k, v in sd.items():
        np.testing.assert_allclose(obj[k], v.detach().float().numpy(), rtol=0, atol=0, err_msg=k)


@pytest.mark.torch
def test_truncated_legacy_and_zip_checkpoints(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    sd = {"features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64)}
    for zipped in (False, True):
        p = tmp_path / f"t{int(zipped)}.pth"
        torch.save(sd, str(p), _use_new_zipfile_serialization=zipped)
        data = p.read_bytes()
        for cut in (len(data) - 100, len(data) // 2, 40):
            p.write_bytes(data[:cut])
            out = tmp_path / "o.h5"
            assert cli.main(["convert", str(p), "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and p.name in err and len(err.strip().splitlines()) == 1, err
            assert not out.exists()


@pytest.mark.torch
def test_pickled_module_refused_with_hint(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), str(p))
    with pytest.raises(MiniVGGError, match="refusing.*torch.nn.*state_dict"):
        torch_pickle.load(str(p))
