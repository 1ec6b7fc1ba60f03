"""weights_tools' ONNX reader and the input-convention decision (fingerprints).

The synthetic ONNX files are written here by a small protobuf encoder (no ``onnx``
package), one per exporter flavour: tf2onnx from Keras (NHWC input + Transpose, HWIO
kernels behind Transpose nodes, bias as Add, a Shape side branch, channels-last flatten
and MatMul + Add), ``torch.onnx.export`` (``features.N``, Flatten + Gemm) and the ONNX
model zoo's MXNet export (``vgg0_conv0_weight``, typed ``float_data``, Reshape + Gemm,
Dropout); plus external data. The ``pretrained`` tests compare the genuine VGG-16
(tests/conftest.py) with onnxruntime layer by layer.
"""

import os

import numpy as np
import pytest

import weights_gen as gen
from minivgg import weights as mw
from minivgg.errors import MiniVGGError
from weights_gen import key, ld, varint
from weights_tools import cli, fingerprint, onnx_reader, protobuf
from weights_tools.convert import convert, detect_format, read_source
from weights_tools.inspect import describe

# the Caffe VGG-16 release's published first values (weights_tools/fingerprint.py)
CAFFE16 = fingerprint.RELEASES[0]


# ------------------------------------------------------------------ a small ONNX writer

def sint(num, v):
    """A signed int64 varint field (two's complement on the wire)."""
    return key(num, 0) + varint(v & ((1 << 64) - 1))


def tensor(name, arr, storage="raw", external=None):
    """A TensorProto. storage: raw | float_data | float_data_unpacked | int64 | external
    (``external``: (location, offset); the bytes are the caller's to write)."""
    arr = np.asarray(arr)
    out = b"".join(sint(1, d) for d in arr.shape)
    dtype = {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.float64): 11}[arr.dtype]
    out += sint(2, dtype) + ld(8, name.encode())
    if storage == "raw":
        out += ld(9, arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    elif storage == "float_data":
        out += ld(4, arr.astype("<f4").tobytes())
    elif storage == "float_data_unpacked":
        out += b"".join(key(4, 5) + np.float32(v).astype("<f4").tobytes() for v in arr.reshape(-1))
    elif storage == "int64":
        out += ld(7, b"".join(varint(int(v) & ((1 << 64) - 1)) for v in arr.reshape(-1)))
    elif storage == "external":
        loc, offset = external
        entries = [("location", loc), ("offset", str(offset)), ("length", str(arr.nbytes))]
        out += b"".join(ld(13, ld(1, k.encode()) + ld(2, v.encode())) for k, v in entries) + sint(14, 1)
    return out


def attr(name, value):
    a = ld(1, name.encode())
    if isinstance(value, (list, tuple)):
        return a + sint(20, 7) + b"".join(sint(8, v) for v in value)
    if isinstance(value, float):
        return a + sint(20, 1) + key(2, 5) + np.float32(value).tobytes()
    if isinstance(value, str):
        return a + sint(20, 3) + ld(4, value.encode())
    if isinstance(value, bytes):  # a serialized TensorProto
        return a + sint(20, 4) + ld(5, value)
    return a + sint(20, 2) + sint(3, value)


def node(op, inputs, outputs, name="", **attrs):
    out = b"".join(ld(1, i.encode()) for i in inputs) + b"".join(ld(2, o.encode()) for o in outputs)
    out += ld(3, name.encode()) + ld(4, op.encode())
    return out + b"".join(ld(5, attr(k, v)) for k, v in attrs.items())


def value_info(name, dims):
    shape = b"".join(ld(1, ld(2, d.encode()) if isinstance(d, str) else sint(1, d)) for d in dims)
    return ld(1, name.encode()) + ld(2, ld(1, sint(1, 1) + ld(2, shape)))


def model(nodes, inits, inputs, outputs, producer="test"):
    graph = b"".join(ld(1, n) for n in nodes) + ld(2, b"g") + b"".join(ld(5, t) for t in inits)
    graph += b"".join(ld(11, i) for i in inputs) + b"".join(ld(12, o) for o in outputs)
    return sint(1, 8) + ld(2, producer.encode()) + ld(7, graph) + ld(8, ld(1, b"") + sint(2, 13))


def vgg_onnx(arch, params, flavour, fc=None, external_dir=None, first_conv_stride=1, batchnorm=False):
    """The bytes of a VGG ONNX model as ``flavour`` exports it; ``fc``: [(W (out, in), b)]
    to append as the classifier (fc6 reading pool5 channels-first, as ours)."""
    nodes, inits = [], []
    ext = bytearray()

    def init(name, arr, storage="raw"):
        if external_dir is not None and arr.size > 16:
            inits.append(tensor(name, arr, "external", ("weights.bin", len(ext))))
            ext.extend(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        else:
            inits.append(tensor(name, arr, storage))
        return name

    inp = {"tf2onnx": "input", "torch": "input.1", "zoo": "data"}[flavour]
    cur = inp
    if flavour == "tf2onnx":
        nodes.append(node("Transpose", [cur], ["x_nchw"], "input_transpose", perm=[0, 3, 1, 2]))
        cur = "x_nchw"
    idx = 0
    for bi, n in enumerate(gen.BLOCKS[arch], 1):
        for ci in range(1, n + 1):
            W, b = params[f"conv{bi}_{ci}"]
            tag = {"tf2onnx": f"block{bi}_conv{ci}", "torch": f"features.{idx}", "zoo": f"vgg0_conv{idx}"}[flavour]
            stride = first_conv_stride if idx == 0 else 1
            if flavour == "tf2onnx":  # HWIO kernel behind a Transpose; the first bias as an Add
                wk = init(f"{tag}/kernel:0", W.transpose(2, 3, 1, 0))
                nodes.append(node("Transpose", [wk], [f"{tag}/oihw"], f"{tag}/kernel_t", perm=[3, 2, 0, 1]))
                if idx == 0:
                    bb = init(f"{tag}/bias:0", b.reshape(1, -1, 1, 1))
                    nodes.append(node("Conv", [cur, f"{tag}/oihw"], [f"{tag}/conv"], f"{tag}/Conv2D",
                                      kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1]))
                    nodes.append(node("Add", [f"{tag}/conv", bb], [f"{tag}/BiasAdd"], f"{tag}/BiasAdd"))
                else:
                    bb = init(f"{tag}/bias:0", b)
                    nodes.append(node("Conv", [cur, f"{tag}/oihw", bb], [f"{tag}/BiasAdd"], f"{tag}/BiasAdd",
                                      kernel_shape=[3, 3], strides=[stride, stride], auto_pad="SAME_UPPER"))
                out = f"{tag}/BiasAdd"
            elif flavour == "torch":
                wk, bb = init(f"{tag}.weight", W), init(f"{tag}.bias", b)
                out = f"/features/features.{idx}/Conv_output_0"
                nodes.append(node("Conv", [cur, wk, bb], [out], f"/features/features.{idx}/Conv",
                                  dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                  strides=[stride, stride]))
            else:  # the zoo: typed float_data, the biases unpacked (one field per float)
                wk = init(f"{tag}_weight", W, "float_data")
                bb = init(f"{tag}_bias", b, "float_data_unpacked")
                out = f"{tag}_fwd"
                nodes.append(node("Conv", [cur, wk, bb], [out], f"{tag}_fwd", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            idx += 1
            cur = out
            if batchnorm and idx == 1:
                nodes.append(node("BatchNormalization", [cur, "s", "b", "m", "v"], ["bn"], "bn0"))
                cur = "bn"
            nodes.append(node("Relu", [cur], [f"relu{idx}"], f"relu{idx}"))
            cur = f"relu{idx}"
            idx += 1 if flavour == "torch" else 0
        nodes.append(node("MaxPool", [cur], [f"pool{bi}"], f"pool{bi}", kernel_shape=[2, 2], strides=[2, 2]))
        cur = f"pool{bi}"
        idx += 1 if flavour == "torch" else 0
    if flavour == "tf2onnx":  # tf2onnx reads pool5's shape for the flatten: a side branch
        nodes.append(node("Shape", [cur], ["pool5_shape"], "Shape__1"))
    outputs = [value_info(cur, [1, 512, 7, 7])]
    if fc is not None:
        if flavour == "tf2onnx":  # NHWC flatten: fc6's rows are (h, w, c)
            nodes.append(node("Transpose", [cur], ["p5_nhwc"], "Transpose__90", perm=[0, 2, 3, 1]))
            inits.append(tensor("flat_shape", np.array([-1, fc[0][0].shape[1]], dtype=np.int64), "int64"))
            nodes.append(node("Reshape", ["p5_nhwc", "flat_shape"], ["flat"], "flatten"))
        elif flavour == "torch":
            nodes.append(node("Flatten", [cur], ["flat"], "/Flatten", axis=1))
        else:
            inits.append(tensor("flat_shape", np.array([0, -1], dtype=np.int64)))
            nodes.append(node("Reshape", [cur, "flat_shape"], ["flat"], "flatten0"))
        cur = "flat"
        for k, (W, b) in enumerate(fc):
            if flavour == "tf2onnx":
                Wk = W
                if k == 0:  # columns (c, h, w) -> rows (h, w, c) of the (in, out) kernel
                    C = 512
                    side = int(round((W.shape[1] // C) ** 0.5))
                    Wk = W.reshape(W.shape[0], C, side, side).transpose(0, 2, 3, 1).reshape(W.shape[0], -1)
                init(f"dense{k}/kernel:0", np.ascontiguousarray(Wk.T))
                init(f"dense{k}/bias:0", b)
                nodes.append(node("MatMul", [cur, f"dense{k}/kernel:0"], [f"mm{k}"], f"dense{k}/MatMul"))
                nodes.append(node("Add", [f"mm{k}", f"dense{k}/bias:0"], [f"fc{k}"], f"dense{k}/BiasAdd"))
            else:
                init(f"fc{k}.weight", W)
                init(f"fc{k}.bias", b)
                nodes.append(node("Gemm", [cur, f"fc{k}.weight", f"fc{k}.bias"], [f"fc{k}"], f"gemm{k}",
                                  alpha=1.0, beta=1.0, transB=1))
            cur = f"fc{k}"
            if k < len(fc) - 1:
                nodes.append(node("Relu", [cur], [f"fcrelu{k}"], f"fcrelu{k}"))
                cur = f"fcrelu{k}"
                if flavour == "zoo":
                    nodes.append(node("Dropout", [cur], [f"drop{k}"], f"drop{k}"))
                    cur = f"drop{k}"
        nodes.append(node("Softmax", [cur], ["prob"], "softmax"))
        outputs = [value_info("prob", [1, fc[-1][0].shape[0]])]
    dims = [1, 224, 224, 3] if flavour == "tf2onnx" else [1, 3, 224, 224]
    data = model(nodes, inits, [value_info(inp, dims)], outputs, producer=flavour)
    if external_dir is not None:
        with open(os.path.join(external_dir, "weights.bin"), "wb") as f:
            f.write(bytes(ext))
    return data


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.fixture(scope="module")
def p16():
    return gen.random_params("vgg16", seed=3)


def with_fingerprint(params, reverse=False, release=CAFFE16):
    """``params`` with conv1_1 / conv1_2's first values set to a release's published ones
    (default Caffe VGG-16; ``reverse``: conv1_1's input channels reversed, as MatConvNet
    stores them)."""
    p = {k: (W.copy(), b.copy()) for k, (W, b) in params.items()}
    W1, b1 = p["conv1_1"]
    W1[0, 0, 0, :3] = release["conv1_1_row"]
    b1[:3] = release["conv1_1_bias"]
    if release["conv1_2_bias0"] is not None:
        p["conv1_2"][1][0] = release["conv1_2_bias0"]
    if reverse:
        p["conv1_1"] = (np.ascontiguousarray(W1[:, ::-1]), b1)
    return p


def small_head(rng):
    """A non-ImageNet classifier head (4 classes), like the genuine file's."""
    return [(rng.standard_normal((8, 25088)).astype(np.float32) * 0.01, rng.standard_normal(8).astype(np.float32)),
            (rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal(4).astype(np.float32))]


# ------------------------------------------------------------------ the three flavours

@pytest.mark.parametrize("flavour", ["tf2onnx", "torch", "zoo"])
def test_each_exporter_flavour_reads_the_exact_weights(tmp_path, p16, flavour):
    rng = np.random.default_rng(0)
    path = write(tmp_path / f"vgg16-{flavour}.onnx", vgg_onnx("vgg16", p16, flavour, fc=small_head(rng)))
    assert detect_format(path) == "onnx"
    src = read_source(path, convention="caffe")
    assert len(src.convs) == 13
    for name, (_, W, b) in zip(gen.conv_names("vgg16"), src.convs):
        np.testing.assert_array_equal(W, p16[name][0], err_msg=name)
        np.testing.assert_array_equal(b, p16[name][1], err_msg=name)
    assert src.fcs == []
    assert any("25088-4096-4096-1000" in n for n in src.notes)
    assert src.info["input_layout"] == ("NHWC" if flavour == "tf2onnx" else "NCHW")
    assert src.info["pooling"] == "max"
    assert src.decided == "flag (--convention caffe)"


def test_external_data_beside_the_model(tmp_path, p16):
    path = write(tmp_path / "vgg16.onnx", vgg_onnx("vgg16", p16, "torch", external_dir=str(tmp_path)))
    src = read_source(path, convention="torchvision")
    np.testing.assert_array_equal(src.convs[12][1], p16["conv5_3"][0])
    np.testing.assert_array_equal(src.convs[0][2], p16["conv1_1"][1])


def _external_model(tmp_path, location, arr, offset=0):
    """A 1-tensor external-data check: only the reader's tensor path matters."""
    t = tensor("w", arr, "external", (location, offset))
    g = onnx_reader.Graph(str(tmp_path / "m.onnx"), t)
    header = onnx_reader.parse_tensor(t, (0, len(t)), 2)
    return g, header


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "link.bin"])
def test_external_data_outside_the_model_folder_refused(tmp_path, location):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    os.symlink(tmp_path / "outside.bin", model_dir / "link.bin")
    g, t = _external_model(model_dir, location, np.zeros(4, np.float32))
    with pytest.raises(MiniVGGError, match="absolute path|out of the model's folder"):
        onnx_reader.tensor_array(g, t)


def test_external_data_truncated_or_missing(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.zeros(3, np.float32).tobytes())
    g, t = _external_model(tmp_path, "w.bin", np.zeros(4, np.float32))
    with pytest.raises(MiniVGGError, match="truncated"):
        onnx_reader.tensor_array(g, t)
    g, t = _external_model(tmp_path, "nope.bin", np.zeros(4, np.float32))
    with pytest.raises(MiniVGGError, match="not found"):
        onnx_reader.tensor_array(g, t)


@pytest.mark.parametrize("flavour", ["tf2onnx", "torch", "zoo"])
def test_imagenet_classifier_kept_in_our_layout(tmp_path, p16, flavour, monkeypatch):
    """fc6 read channels-first whatever the export's flatten (tf2onnx flattens NHWC).
    Small fc7/fc8 stand in for ImageNet's (patched shapes): only fc6's 25088 inputs matter."""
    rng = np.random.default_rng(1)
    fc = [(rng.standard_normal((6, 25088)).astype(np.float32), rng.standard_normal(6).astype(np.float32)),
          (rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal(5).astype(np.float32)),
          (rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(3).astype(np.float32))]
    monkeypatch.setattr(onnx_reader, "IMAGENET_FC", ((6, 25088), (5, 6), (3, 5)))
    path = write(tmp_path / "fc.onnx", vgg_onnx("vgg16", p16, flavour, fc=fc))
    src = read_source(path, convention="caffe")
    assert len(src.fcs) == 3 and not src.notes
    for (_, W, b), (Wr, br) in zip(src.fcs, fc):
        np.testing.assert_allclose(W, Wr, rtol=0, atol=0)
        np.testing.assert_array_equal(b, br)


def test_non_imagenet_head_skipped_and_keep_classifier_refused(tmp_path, p16, capsys):
    path = write(tmp_path / "mri.onnx", vgg_onnx("vgg16", with_fingerprint(p16), "tf2onnx",
                                                 fc=small_head(np.random.default_rng(2))))
    out = str(tmp_path / "o.h5")
    assert cli.main(["convert", path, "--out", out, "--keep-classifier"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "25088-4096-4096-1000" in err and "found 25088-8-4" in err
    assert not os.path.exists(out)


# ------------------------------------------------------------------ not a VGG

@pytest.mark.parametrize("change, message", [
    (dict(first_conv_stride=2), "strides \\[2, 2\\]"),
    (dict(batchnorm=True), "batch-norm"),
])
def test_not_a_plain_vgg_refused(tmp_path, p16, change, message):
    path = write(tmp_path / "bad.onnx", vgg_onnx("vgg16", p16, "torch", **change))
    with pytest.raises(MiniVGGError, match=message):
        read_source(path, convention="caffe")


def test_branching_graph_and_preprocessing_refused(tmp_path):
    W = np.zeros((64, 3, 3, 3), np.float32)
    nodes = [node("Conv", ["x", "w", "b"], ["c"], "c0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"], "r0"), node("Relu", ["r"], ["r2"], "r1"), node("Add", ["r", "r2"], ["s"], "res")]
    inits = [tensor("w", W), tensor("b", np.zeros(64, np.float32))]
    path = write(tmp_path / "res.onnx", model(nodes, inits, [value_info("x", [1, 3, 8, 8])], [value_info("s", [1])]))
    with pytest.raises(MiniVGGError, match="branching graph"):
        read_source(path, convention="caffe")
    nodes = [node("Sub", ["x", "mean"], ["y"], "sub_mean")]
    path = write(tmp_path / "pre.onnx", model(nodes, [tensor("mean", np.zeros(3, np.float32))],
                                              [value_info("x", [1, 3, 8, 8])], [value_info("y", [1])]))
    with pytest.raises(MiniVGGError, match="preprocessing inside the graph"):
        read_source(path, convention="caffe")


# ------------------------------------------------------------------ hostile input

@pytest.mark.parametrize("cut", [3, 1000, 20_000_000, -7])
def test_truncated_onnx_one_line_error(tmp_path, p16, capsys, cut):
    data = vgg_onnx("vgg16", p16, "torch")
    path = write(tmp_path / "cut.onnx", data[:cut])
    out = str(tmp_path / "o.h5")
    assert cli.main(["convert", path, "--out", out, "--convention", "caffe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cut.onnx: ") and err.count("\n") == 1
    assert not os.path.exists(out)


def test_hostile_dims_and_lengths_allocate_nothing(tmp_path):
    """dims of 2^40 x 2^40 with 16 bytes of raw_data: refused before any allocation."""
    t = sint(1, 1 << 40) + sint(1, 1 << 40) + sint(2, 1) + ld(8, b"w") + ld(9, b"\0" * 16)
    g = onnx_reader.Graph(str(tmp_path / "m.onnx"), t)
    with pytest.raises(MiniVGGError, match="needs .* bytes of raw_data but has 16"):
        onnx_reader.tensor_array(g, onnx_reader.parse_tensor(t, (0, len(t)), 2))
    # a length claiming more than remains
    with pytest.raises(protobuf.ProtoError, match="claims"):
        msg = key(9, 2) + varint(1 << 40) + b"abc"
        list(protobuf.fields(msg, 0, len(msg)))
    # varint that never ends
    with pytest.raises(protobuf.ProtoError, match="varint"):
        list(protobuf.fields(b"\x08" + b"\xff" * 12, 0, 13))
    with pytest.raises(protobuf.ProtoError, match="nested"):
        list(protobuf.fields(b"", 0, 0, protobuf.MAX_DEPTH + 1))


def test_repeated_floats_packed_unpacked_and_mixed():
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(n).astype(np.float32) for n in (5, 7, 3))
    msg = ld(4, a.tobytes())  # packed
    msg += b"".join(key(4, 5) + v.tobytes() for v in b)  # an unpacked run at a constant stride
    msg += ld(8, b"name")  # another field between
    msg += b"".join(key(4, 5) + v.tobytes() + ld(3, b"x" * i) for i, v in enumerate(c))  # irregular strides
    got = protobuf.read_repeated(msg, 0, len(msg), 4, "<f4")
    np.testing.assert_array_equal(got, np.concatenate([a, b, c]))
    with pytest.raises(protobuf.ProtoError, match="not a multiple"):
        protobuf.read_repeated(ld(4, b"abcde"), 0, 7, 4, "<f4")


def test_cycle_and_corrupt_tensor_inside_a_valid_graph(tmp_path, p16):
    nodes = [node("Identity", ["x"], ["y"], "a"), node("Identity", ["y"], ["x"], "b")]
    path = write(tmp_path / "cycle.onnx", model(nodes, [], [value_info("x", [1, 3, 8, 8])], [value_info("y", [1])]))
    with pytest.raises(MiniVGGError, match="cycle"):
        read_source(path, convention="caffe")
    # conv1_1's bias: dims say 64 floats, the (unpacked) float_data holds 63
    W = np.zeros((64, 3, 3, 3), np.float32)
    bias = sint(1, 64) + sint(2, 1) + ld(8, b"b") + b"".join(key(4, 5) + b"\0\0\0\0" for _ in range(63))
    nodes = [node("Conv", ["x", "w", "b"], ["c"], "c0", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    path = write(tmp_path / "bad.onnx", model(nodes, [tensor("w", W), bias], [value_info("x", [1, 3, 8, 8])],
                                              [value_info("c", [1])]))
    with pytest.raises(MiniVGGError, match="bad.onnx: .*needs 64 values but holds 63"):
        read_source(path, convention="caffe")


def test_typed_data_count_must_match_dims(tmp_path):
    t = sint(1, 4) + sint(2, 1) + ld(8, b"w") + ld(4, np.zeros(3, "<f4").tobytes())
    g = onnx_reader.Graph(str(tmp_path / "m.onnx"), t)
    with pytest.raises(MiniVGGError, match="needs 4 values but holds 3"):
        onnx_reader.tensor_array(g, onnx_reader.parse_tensor(t, (0, len(t)), 2))


# ------------------------------------------------------------------ the convention

def test_unrecognized_onnx_needs_convention(tmp_path, p16, capsys):
    path = write(tmp_path / "anon.onnx", vgg_onnx("vgg16", p16, "torch"))
    out = str(tmp_path / "o.h5")
    assert cli.main(["convert", path, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--convention" in err and not os.path.exists(out)
    text = describe(path)  # inspect still describes it
    assert "convention:  unknown" in text
    assert cli.main(["convert", path, "--out", out, "--convention", "torchvision"]) == 0
    meta = mw.read_weights(out)[1]
    assert meta["convention"]["channel_order"] == "RGB" and meta["convention_decided"] == "flag (--convention torchvision)"


@pytest.mark.parametrize("reverse, convention", [(False, mw.CAFFE), (True, mw.MATCONVNET)])
def test_fingerprint_recognizes_caffe_vgg16_and_its_channel_order(tmp_path, p16, reverse, convention, capsys):
    path = write(tmp_path / "fp.onnx", vgg_onnx("vgg16", with_fingerprint(p16, reverse), "tf2onnx"))
    out = str(tmp_path / "o.h5")
    assert cli.main(["convert", path, "--out", out]) == 0
    assert "warning" not in capsys.readouterr().err
    meta = mw.read_weights(out)[1]
    assert meta["convention"]["channel_order"] == convention["channel_order"]
    assert meta["convention"]["mean"] == pytest.approx(convention["mean"])
    assert meta["convention_decided"].startswith("fingerprint: Caffe VGG-16")
    assert ("reversed to RGB" in meta["convention_decided"]) == reverse
    text = describe(out)
    assert "fingerprint: Caffe VGG-16" in text and "stored in the file" in text


def test_fingerprint_needs_every_value_and_the_arch():
    p = with_fingerprint(gen.random_params("vgg16", seed=4))
    convs = [(n, *p[n]) for n in gen.conv_names("vgg16")]
    assert fingerprint.identify(convs)[0]["channel_order"] == "BGR"
    assert fingerprint.identify(convs[:12] + convs[12:] * 4) is None  # 16 convs: not VGG-16's release
    bad = [(convs[0][0], convs[0][1], convs[0][2] * 1.001)] + convs[1:]
    assert fingerprint.identify(bad) is None
    W = convs[0][1].copy()
    W[0, 0, 0, 1] += 1e-3
    assert fingerprint.identify([(convs[0][0], W, convs[0][2])] + convs[1:]) is None


@pytest.mark.parametrize("arch, release", [("vgg16", 0), ("vgg19", 1)])
def test_torchvision_keys_with_caffe_values_come_out_caffe(tmp_path, arch, release):
    """neural-style-pt's vgg16-00b39a1b.pth / vgg19-d01eb7cb.pth: torchvision key names,
    the Caffe release's values."""
    torch = pytest.importorskip("torch")
    rel = fingerprint.RELEASES[release]
    p = with_fingerprint(gen.random_params(arch, seed=6), release=rel)
    path = str(tmp_path / f"{arch}-caffe-values.pth")
    torch.save(gen.torch_state_dict(arch, p), path)
    logs = []
    meta = convert(path, str(tmp_path / "o.h5"), log=logs.append)
    assert meta["convention"]["channel_order"] == "BGR" and meta["convention"]["scale"] == 255.0
    assert meta["convention_decided"].startswith(f"fingerprint: {rel['name']}") and logs == []


def test_torch_file_with_unknown_values_assumed_torchvision_with_one_warning(tmp_path, p16):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "mine.pth")
    torch.save(gen.torch_state_dict("vgg16", p16), path)
    logs = []
    meta = convert(path, str(tmp_path / "o.h5"), log=logs.append)
    assert meta["convention"]["channel_order"] == "RGB" and meta["convention_decided"].startswith("assumed")
    assert len(logs) == 1 and logs[0].startswith("warning: mine.pth: ") and "--convention caffe" in logs[0]
    meta = convert(path, str(tmp_path / "o2.h5"), convention="caffe", log=logs.append)
    assert meta["convention"]["channel_order"] == "BGR" and len(logs) == 1


def test_matconvnet_keeps_its_stored_normalization(tmp_path, p16):
    """MatConvNet's copy of Caffe VGG-16 (channels reversed): the file's averageImage is
    kept, the fingerprint only confirms the release."""
    path = str(tmp_path / "imagenet-vgg-verydeep-16.mat")
    gen.write_matconvnet(path, "vgg16", with_fingerprint(p16, reverse=True), mean_rgb=(120.0, 115.0, 100.0))
    src = read_source(path)
    assert src.convention["mean"] == pytest.approx((120.0, 115.0, 100.0))
    assert src.decided.startswith("stored") and "reversed to RGB" in src.decided


def test_caffe_and_keras_files_fingerprinted_or_by_format(tmp_path, p16):
    path = str(tmp_path / "v.caffemodel")
    gen.write_caffemodel(path, "vgg16", with_fingerprint(p16, reverse=True))
    src = read_source(path)
    assert src.convention["channel_order"] == "RGB" and src.decided.startswith("fingerprint")
    path = str(tmp_path / "k.h5")
    gen.write_keras(path, "vgg16", p16)
    src = read_source(path)
    assert src.convention == mw.CAFFE and src.decided.startswith("format: Keras")


# ------------------------------------------------------------------ the genuine VGG-16

def _spans(buf, start, end):
    """(number, key start, end) of each field: for copying fields verbatim."""
    pos = start
    while pos < end:
        k0 = pos
        k, pos = protobuf.read_varint(buf, pos, end)
        wt = k & 7
        if wt == 0:
            _, pos = protobuf.read_varint(buf, pos, end)
        elif wt == 2:
            n, pos = protobuf.read_varint(buf, pos, end)
            pos += n
        else:
            pos += 8 if wt == 1 else 4
        yield k >> 3, k0, pos


def ort_model_with_outputs(onnx_path, layers=None):
    """A copy of the genuine model for onnxruntime: any input size (the input's dims made
    symbolic), the nodes after pool5 dropped, and every conv / relu / pool output of
    the feature extractor made a graph output. Returns (bytes, {our layer: ORT name})."""
    import minivgg.vgg as vgg

    data = open(onnx_path, "rb").read()
    g = onnx_reader.read_graph(onnx_path)
    ours = [n for n in vgg.layer_names("vgg16") if not n.startswith("fc")]
    names, last = {}, None
    for i, nd in enumerate(g.nodes):
        if nd.op in ("Conv", "Relu", "MaxPool") and len(names) < len(ours):
            names[ours[len(names)]] = nd.outputs[0]
            last = i
    assert len(names) == len(ours), names
    graph = next((s, e) for n, s, e in _spans(data, 0, len(data)) if n == 7)
    _, gstart = protobuf.read_varint(data, graph[0] + 1, graph[1])
    new_graph, node_i = b"", 0
    for num, s, e in _spans(data, gstart, graph[1]):
        if num == 1:
            if node_i <= last:
                new_graph += data[s:e]
            node_i += 1
        elif num == 11:
            new_graph += ld(11, value_info(g.inputs[0], ["N", "H", "W", 3]))
        elif num != 12:
            new_graph += data[s:e]
    for layer in layers or ours:
        new_graph += ld(12, value_info(names[layer], ["N", "C", "h", "w"]))
    out = b"".join(data[s:e] for num, s, e in _spans(data, 0, len(data)) if num != 7)
    return out + ld(7, new_graph), names


@pytest.fixture(scope="module")
def ort_session(pretrained_onnx):
    ort = pytest.importorskip("onnxruntime")
    blob, names = ort_model_with_outputs(pretrained_onnx)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3  # the dropped classifier's initializers are reported as unused
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]), names


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255.0 / w, yy * 255.0 / h, 128 + 60 * np.sin(xx / 3.0 + yy / 5.0)], -1)
    return np.clip(img + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.pretrained
def test_pretrained_recognized_with_no_flags(pretrained_onnx, pretrained_vgg16):
    text = describe(pretrained_onnx)
    assert "convention:  caffe, fingerprint: Caffe VGG-16" in text and "NHWC" in text
    assert "fully connected layers skipped" in text
    params, meta = mw.read_weights(pretrained_vgg16)
    assert meta["arch"] == "vgg16" and meta["convention"] == mw.CAFFE and meta["source_pooling"] == "max"
    assert meta["convention_decided"].startswith("fingerprint: Caffe VGG-16")
    assert float(params["conv1_1"][1][0]) == pytest.approx(0.73429835, abs=1e-7)
    assert "fc6" not in params


@pytest.mark.pretrained
@pytest.mark.parametrize("h, w", [(37, 53), (64, 48)])
def test_pretrained_features_match_onnxruntime(pretrained_vgg16, ort_session, h, w):
    """Max pooling (as the source graph), every layer to pool5, < 1e-4 relative."""
    import minivgg

    sess, names = ort_session
    net = minivgg.load_vgg("vgg16", weights=pretrained_vgg16, pooling="max")
    x = net.preprocess(_image(h, w, seed=h))
    layers = list(names)
    ours = net.forward(x, layers)
    ref = dict(zip(layers, sess.run([names[l] for l in layers], {"input": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})))
    errs = {l: float(np.abs(ours[l] - ref[l]).max() / np.abs(ref[l]).max()) for l in layers}
    assert max(errs.values()) < 1e-4, {l: f"{e:.2e}" for l, e in errs.items()}


def _conv_f64(x, W, b):
    """3x3 stride-1 pad-1 correlation in float64: nine shifted matrix products."""
    C, H, Wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((W.shape[0], H, Wd))
    for i in range(3):
        for j in range(3):
            out += np.tensordot(W[:, :, i, j], xp[:, i:i + H, j:j + Wd], axes=(1, 0))
    return out + b[:, None, None]


@pytest.mark.pretrained
def test_pretrained_avg_pooling_matches_float64_reference(pretrained_vgg16):
    import minivgg

    params, _ = mw.read_weights(pretrained_vgg16)
    net = minivgg.load_vgg("vgg16", weights=pretrained_vgg16, pooling="avg")
    x = net.preprocess(_image(37, 53, seed=9))
    wanted = ["relu1_2", "pool2", "relu3_3", "pool4", "relu5_3", "pool5"]
    ours = net.forward(x, wanted)
    h = x[0].astype(np.float64)
    ref = {}
    for block, n in enumerate(gen.BLOCKS["vgg16"], 1):
        for i in range(1, n + 1):
            W, b = params[f"conv{block}_{i}"]
            h = np.maximum(_conv_f64(h, W.astype(np.float64), b.astype(np.float64)), 0)
            ref[f"relu{block}_{i}"] = h
        C, H, Wd = h.shape
        h = h[:, : H // 2 * 2, : Wd // 2 * 2].reshape(C, H // 2, 2, Wd // 2, 2).mean(axis=(2, 4))
        ref[f"pool{block}"] = h
    for l in wanted:
        err = np.abs(ours[l][0] - ref[l]).max() / np.abs(ref[l]).max()
        assert err < 1e-4, (l, err)
