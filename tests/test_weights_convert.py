"""weights_tools convert / inspect: every source format, read without its framework.

Files are generated here in each framework's own layout (tests/weights_gen.py) with
random weights of the real VGG shapes; after conversion the net's features on an RGB
image -- each source with its own preprocessing -- must equal a torch reference.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import weights_gen as gen
from minivgg import weights as mw
from minivgg.errors import MiniVGGError
from weights_tools import cli, keras, matconvnet
from weights_tools.convert import assemble, convert, detect_format, read_source
from weights_tools.inspect import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["conv1_1", "relu3_1", "relu5_3"]
CAFFE_MEAN = np.array(gen.CAFFE_MEAN_BGR)
TV_MEAN, TV_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
MCN_MEAN = np.array([123.68, 116.779, 103.939])


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def p16():
    return gen.random_params("vgg16", seed=1)


@pytest.fixture(scope="module")
def image():
    """A 32x32 RGB image with distinct colour channels (so a BGR/RGB swap shows)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([xx * 8, yy * 8, 255 - xx * 4 - yy * 3], axis=-1) + rng.integers(0, 20, (32, 32, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, p16):
    """One file per torch-free format, written once for the module."""
    d = tmp_path_factory.mktemp("src")
    out = {}
    out["caffe_v1"] = str(d / "VGG_ILSVRC_16_layers.caffemodel")
    gen.write_caffemodel(out["caffe_v1"], "vgg16", p16, v1=True)
    out["caffe_v2"] = str(d / "vgg16_v2.caffemodel")
    gen.write_caffemodel(out["caffe_v2"], "vgg16", p16, v1=False)
    out["keras2"] = str(d / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    gen.write_keras(out["keras2"], "vgg16", p16, naming="keras2")
    out["keras1"] = str(d / "vgg16_keras1.h5")
    gen.write_keras(out["keras1"], "vgg16", p16, naming="keras1")
    out["mat"] = str(d / "imagenet-vgg-verydeep-16.mat")
    gen.write_matconvnet(out["mat"], "vgg16", p16)
    return out


def net_features(h5, image, arch="vgg16"):
    import minivgg

    net = minivgg.load_vgg(arch, weights=h5, pooling="max")
    return net.forward(net.preprocess(image), LAYERS)


# ------------------------------------------------------------ torch-free: exact weights

@pytest.mark.parametrize("kind, fmt, convention", [
    ("caffe_v1", "caffe", mw.CAFFE), ("caffe_v2", "caffe", mw.CAFFE),
    ("keras2", "keras", mw.CAFFE), ("keras1", "keras", mw.CAFFE),
    ("mat", "matconvnet", mw.MATCONVNET),
])
def test_convert_gives_the_same_weights(files, p16, tmp_path, kind, fmt, convention):
    src = files[kind]
    assert detect_format(src) == fmt
    out = str(tmp_path / "w.h5")
    convert(src, out)
    params, meta = mw.read_weights(out)
    assert sorted(params) == sorted(p16)
    for name, (W, b) in p16.items():
        np.testing.assert_array_equal(params[name][0], W, err_msg=name)
        np.testing.assert_array_equal(params[name][1], b, err_msg=name)
    assert meta["arch"] == "vgg16"
    assert meta["source_format"] == fmt
    assert meta["source_file"] == os.path.basename(src)
    assert len(meta["source_sha256"]) == 64
    assert meta["normalized"] is False or meta["normalized"] == 0
    assert meta["convention"]["channel_order"] == convention["channel_order"]
    assert meta["convention"]["scale"] == convention["scale"]
    np.testing.assert_allclose(meta["convention"]["mean"], convention["mean"], rtol=1e-6)
    assert meta["converter_version"]


def test_format_detected_from_content_not_extension(files, tmp_path):
    for kind, fmt in (("caffe_v1", "caffe"), ("keras2", "keras"), ("mat", "matconvnet")):
        p = tmp_path / f"{kind}.bin"
        with open(files[kind], "rb") as fi, open(p, "wb") as fo:
            fo.write(fi.read())
        assert detect_format(str(p)) == fmt


def test_caffe_unpacked_floats_and_blob_shapes(tmp_path):
    """Non-packed repeated floats and the BlobShape form parse like the packed/legacy ones."""
    from weights_tools import caffe

    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    msg = gen.ld(1, b"net")
    body = gen.ld(1, b"c") + gen.ld(2, b"Convolution")
    body += gen.ld(7, gen.blob(W, legacy=False, packed=False)) + gen.ld(7, gen.blob(b, legacy=True, packed=True))
    msg += gen.ld(100, body)
    p = tmp_path / "m.caffemodel"
    p.write_bytes(msg)
    name, layers = caffe.read_layers(str(p))
    assert name == "net"
    (lname, ltype, blobs), = layers
    assert (lname, ltype) == ("c", "Convolution")
    np.testing.assert_array_equal(blobs[0], W)
    np.testing.assert_array_equal(blobs[1].reshape(-1), b)


def test_caffe_fc_layers_read_in_our_layout(tmp_path, p16):
    rng = np.random.default_rng(0)
    fc = [("fc6", rng.standard_normal((5, 7)).astype(np.float32), np.arange(5, dtype=np.float32))]
    for v1 in (True, False):
        p = tmp_path / f"fc{v1}.caffemodel"
        gen.write_caffemodel(str(p), "vgg16", p16, v1=v1, fc=fc)
        src = read_source(str(p))
        (name, W, b), = src.fcs
        assert name == "fc6"
        np.testing.assert_array_equal(W, fc[0][1])
        np.testing.assert_array_equal(b, fc[0][2])


def test_keras_dense_after_flatten_is_permuted_to_channels_first():
    """Keras flattens pool5 channels-last; ours channels-first. Same outputs after the permute."""
    rng = np.random.default_rng(0)
    C, H, Wd, out = 4, 2, 3, 5
    kernel = rng.standard_normal((H * Wd * C, out)).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32)
    x_chw = rng.standard_normal((C, H, Wd)).astype(np.float32)
    keras_y = x_chw.transpose(1, 2, 0).reshape(-1) @ kernel + bias
    W, b = keras.to_dense("fc1", [kernel, bias], "f", (C, H, Wd))
    np.testing.assert_allclose(W @ x_chw.reshape(-1) + b, keras_y, rtol=1e-5)


def test_matconvnet_fc_as_convolution_matches_our_linear():
    """MatConvNet's fc6 is a 'valid' convolution over the whole 7x7 map."""
    rng = np.random.default_rng(0)
    h, w, cin, cout = 3, 2, 4, 5
    Wm = rng.standard_normal((h, w, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    x_hwc = rng.standard_normal((h, w, cin)).astype(np.float32)
    mcn_y = np.einsum("ijk,ijko->o", x_hwc, Wm) + b
    W, b2 = matconvnet.fc_to_ours(Wm, b)
    np.testing.assert_allclose(W @ x_hwc.transpose(2, 0, 1).reshape(-1) + b2, mcn_y, rtol=1e-5)


def test_matconvnet_mean_from_a_full_average_image(tmp_path, p16):
    p = str(tmp_path / "m.mat")
    gen.write_matconvnet(p, "vgg16", p16, mean_rgb=(1.0, 2.0, 3.0))
    assert read_source(p).convention["mean"] == pytest.approx((1.0, 2.0, 3.0))


def test_inspect_source_and_converted(files, tmp_path, capsys):
    text = describe(files["caffe_v1"])
    assert "format:      caffe" in text and "vgg16" in text and "BGR" in text
    assert "conv5_3" in text and "(512, 512, 3, 3)" in text and "md5:" in text
    out = str(tmp_path / "w.h5")
    assert cli.main(["convert", files["mat"], "--out", out]) == 0
    assert cli.main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "format:      minivgg" in text and "RGB" in text and "source_format:matconvnet" in text.replace(" ", "")
    assert "source_sha256:" in text.replace(" ", "") and "normalized:" in text


def test_keep_classifier_on_a_notop_file_is_an_error(files, tmp_path):
    out = tmp_path / "w.h5"
    with pytest.raises(MiniVGGError, match="no classifier"):
        convert(files["keras2"], str(out), keep_classifier=True)
    assert not out.exists()


def test_arch_mismatch_is_an_error(files, tmp_path):
    with pytest.raises(MiniVGGError, match="vgg19 has 16"):
        convert(files["caffe_v1"], str(tmp_path / "w.h5"), arch="vgg19")


# ------------------------------------------------------------ bad input (torch-free)

def _cli_error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_caffemodel(files, tmp_path, capsys, cut):
    data = open(files["caffe_v1"], "rb").read()
    p = tmp_path / "trunc.caffemodel"
    p.write_bytes(data[: int(len(data) * cut)])
    out = tmp_path / "out.h5"
    line = _cli_error(capsys, ["convert", str(p), "--out", str(out)])
    assert "trunc.caffemodel" in line
    assert not out.exists() and os.listdir(tmp_path) == ["trunc.caffemodel"]


def test_truncated_keras_and_mat(files, tmp_path, capsys):
    for kind in ("keras2", "mat"):
        data = open(files[kind], "rb").read()
        p = tmp_path / f"trunc_{kind}"
        p.write_bytes(data[: len(data) // 2])
        out = tmp_path / "out.h5"
        line = _cli_error(capsys, ["convert", str(p), "--out", str(out)])
        assert f"trunc_{kind}" in line
        assert not out.exists()


def test_unknown_format_and_missing_file(tmp_path, capsys):
    p = tmp_path / "notes.txt"
    p.write_text("hello, these are not weights\n")
    assert "unknown format" in _cli_error(capsys, ["convert", str(p), "--out", str(tmp_path / "o.h5")])
    assert "no such file" in _cli_error(capsys, ["convert", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o.h5")])
    proto = tmp_path / "VGG_ILSVRC_16_layers_deploy.prototxt"
    proto.write_text('name: "VGG_ILSVRC_16_layers"\ninput: "data"\n')
    assert "prototxt" in _cli_error(capsys, ["convert", str(proto), "--out", str(tmp_path / "o.h5")])
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    assert "empty" in _cli_error(capsys, ["inspect", str(empty)])
    assert not (tmp_path / "o.h5").exists()


def test_missing_layer_and_wrong_shape(tmp_path, p16, capsys):
    missing = {k: v for k, v in p16.items() if k != "conv4_2"}
    seq = [(n, k) for n, k in gen.layer_sequence("vgg16") if n != "conv4_2"]
    p = tmp_path / "missing.caffemodel"
    with open(p, "wb") as f:
        for name, kind in seq:
            f.write(gen.caffe_layer(name, kind, missing.get(name, ()) if kind == "conv" else ()))
    line = _cli_error(capsys, ["convert", str(p), "--out", str(tmp_path / "o.h5")])
    assert "12 convolution" in line and "missing.caffemodel" in line
    line = _cli_error(capsys, ["convert", str(p), "--arch", "vgg16", "--out", str(tmp_path / "o.h5")])
    assert "missing layers" in line

    bad = dict(p16)
    W, b = bad["conv3_2"]
    bad["conv3_2"] = (W[:, :128], b)  # (256, 128, 3, 3) instead of (256, 256, 3, 3)
    p2 = tmp_path / "shape.h5"
    gen.write_keras(str(p2), "vgg16", bad)
    line = _cli_error(capsys, ["convert", str(p2), "--out", str(tmp_path / "o.h5")])
    assert "conv3_2" in line and "block3_conv2" in line and "(256, 256, 3, 3)" in line
    assert not (tmp_path / "o.h5").exists()


def test_non_vgg_caffe_layers_refused(tmp_path):
    p = tmp_path / "resnet.caffemodel"
    p.write_bytes(gen.ld(100, gen.ld(1, b"bn_conv1") + gen.ld(2, b"BatchNorm") + gen.ld(7, gen.blob(np.ones(4)))))
    with pytest.raises(MiniVGGError, match="bn_conv1.*BatchNorm"):
        convert(str(p), str(tmp_path / "o.h5"))


def test_output_not_overwritten_without_force(files, tmp_path, capsys):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    assert "exists" in _cli_error(capsys, ["convert", files["caffe_v2"], "--out", str(out)])
    assert out.read_bytes() == b"keep me"


def test_cli_subprocess_one_line_error(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"\x80\x02}q\x00." + b"\x00" * 10)
    r = subprocess.run([sys.executable, "-m", "weights_tools", "convert", str(p), "--out", str(tmp_path / "o.h5")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "junk.pth" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------ features vs torch

@pytest.mark.torch
@pytest.mark.parametrize("kind", ["caffe_v1", "caffe_v2"])
def test_caffe_features_match_torch(files, p16, image, tmp_path, kind):
    pytest.importorskip("torch")
    out = str(tmp_path / "w.h5")
    convert(files[kind], out)
    x = (image[..., ::-1].astype(np.float64) - CAFFE_MEAN).transpose(2, 0, 1)[None]  # BGR, 0-255, mean
    ref = gen.reference_features_nchw(x, p16, "vgg16", LAYERS)
    ours = net_features(out, image)
    for l in LAYERS:
        assert rel_err(ours[l], ref[l]) < 1e-4, l


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["keras2", "keras1"])
def test_keras_features_match_tensorflow_definition(files, p16, image, tmp_path, kind):
    pytest.importorskip("torch")
    out = str(tmp_path / "w.h5")
    convert(files[kind], out)
    kernels = {n: W.transpose(2, 3, 1, 0) for n, (W, b) in p16.items()}  # what the file holds
    x = (image[..., ::-1].astype(np.float64) - CAFFE_MEAN)[None]  # NHWC, BGR
    ref = gen.reference_features_hwio(x, kernels, {n: b for n, (W, b) in p16.items()}, "vgg16", LAYERS)
    ours = net_features(out, image)
    for l in LAYERS:
        assert rel_err(ours[l], ref[l]) < 1e-4, l


@pytest.mark.torch
def test_matconvnet_features_match_its_definition(files, p16, image, tmp_path):
    pytest.importorskip("torch")
    out = str(tmp_path / "w.h5")
    convert(files["mat"], out)
    kernels = {n: W.transpose(2, 3, 1, 0) for n, (W, b) in p16.items()}  # W (h, w, in, out) as in the .mat
    x = (image.astype(np.float64) - MCN_MEAN)[None]  # NHWC, RGB, 0-255
    ref = gen.reference_features_hwio(x, kernels, {n: b for n, (W, b) in p16.items()}, "vgg16", LAYERS)
    ours = net_features(out, image)
    for l in LAYERS:
        assert rel_err(ours[l], ref[l]) < 1e-4, l


@pytest.mark.torch
@pytest.mark.parametrize("arch, zipped", [("vgg16", False), ("vgg19", True)])
def test_torch_features_match_torch(image, tmp_path, arch, zipped):
    torch = pytest.importorskip("torch")
    params = gen.random_params(arch, seed=3)
    src = tmp_path / ("vgg.pth")
    torch.save(gen.torch_state_dict(arch, params), str(src), _use_new_zipfile_serialization=zipped)
    assert detect_format(str(src)) == ("torch-zip" if zipped else "torch-legacy")
    out = str(tmp_path / "w.h5")
    convert(str(src), out)
    x = ((image.astype(np.float64) / 255 - TV_MEAN) / TV_STD).transpose(2, 0, 1)[None]  # RGB, 0-1, mean/std
    sd = torch.load(str(src))
    torch_params = {n: (sd[f"features.{i}.weight"].numpy(), sd[f"features.{i}.bias"].numpy())
                    for n, i in zip(gen.conv_names(arch), _feature_indices(arch))}
    ref = gen.reference_features_nchw(x, torch_params, arch, LAYERS[:2] + [f"relu5_{4 if arch == 'vgg19' else 3}"])
    import minivgg

    net = minivgg.load_vgg(arch, weights=out, pooling="max")
    ours = net.forward(net.preprocess(image), list(ref))
    for l in ref:
        assert rel_err(ours[l], ref[l]) < 1e-4, l


def _feature_indices(arch):
    idx, out = 0, []
    for n in gen.BLOCKS[arch]:
        for _ in range(n):
            out.append(idx)
            idx += 2
        idx += 1
    return out


@pytest.mark.torch
def test_torch_resnet_and_bn_state_dicts_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    sd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
          "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(1000, 512)}
    p = tmp_path / "resnet18.pth"
    torch.save(sd, str(p))
    line = _cli_error(capsys, ["convert", str(p), "--out", str(tmp_path / "o.h5")])
    assert "resnet18.pth" in line and "not a VGG" in line
    bn = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64),
          "features.1.running_mean": torch.zeros(64)}
    p = tmp_path / "vgg16_bn.pth"
    torch.save(bn, str(p))
    assert "batch-norm" in _cli_error(capsys, ["convert", str(p), "--out", str(tmp_path / "o.h5")])
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.torch
def test_torch_checkpoint_wrapped_and_data_parallel(tmp_path, p16):
    torch = pytest.importorskip("torch")
    sd = gen.torch_state_dict("vgg16", p16)
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}
    p = tmp_path / "ckpt.pth"
    torch.save(wrapped, str(p))
    params, _ = assemble(read_source(str(p)), "ckpt.pth")
    np.testing.assert_array_equal(params["conv5_3"][0], p16["conv5_3"][0])


def test_matconvnet_old_layout_struct_array_filters_biases(tmp_path, p16):
    """Older MatConvNet releases: ``layers`` a struct array, ``filters``/``biases``, and a
    top-level ``normalization`` with a full mean image."""
    import scipy.io

    seq = gen.layer_sequence("vgg16")
    dt = [("name", object), ("type", object), ("filters", object), ("biases", object)]
    layers = np.zeros((1, len(seq)), dtype=dt)
    for i, (name, kind) in enumerate(seq):
        layers[0, i]["name"] = name
        layers[0, i]["type"] = kind
        if kind == "conv":
            W, b = p16[name]
            layers[0, i]["filters"] = W.transpose(2, 3, 1, 0)
            layers[0, i]["biases"] = b.reshape(1, -1)
        else:
            layers[0, i]["filters"] = np.zeros((0, 0))
            layers[0, i]["biases"] = np.zeros((0, 0))
    avg = np.broadcast_to(np.array([120.0, 115.0, 100.0]), (8, 8, 3)).astype(np.float32)
    p = str(tmp_path / "imagenet-vgg-verydeep-16-old.mat")
    scipy.io.savemat(p, {"layers": layers, "normalization": {"averageImage": avg}})
    src = read_source(p)
    assert src.convention["mean"] == pytest.approx((120.0, 115.0, 100.0))
    params, arch = assemble(src, "old.mat")
    assert arch == "vgg16"
    for name, (W, b) in p16.items():
        np.testing.assert_array_equal(params[name][0], W)
        np.testing.assert_array_equal(params[name][1], b)


def test_convention_override_and_reconvert_own_file(files, p16, tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    assert cli.main(["convert", files["caffe_v2"], "--out", out, "--convention", "torchvision"]) == 0
    assert "RGB" in capsys.readouterr().out
    assert mw.read_weights(out)[1]["convention"]["scale"] == 1.0
    again = str(tmp_path / "b.h5")
    convert(out, again)
    params, meta = mw.read_weights(again)
    assert meta["source_format"] == "caffe" and meta["source_file"] == os.path.basename(files["caffe_v2"])
    np.testing.assert_array_equal(params["conv2_1"][0], p16["conv2_1"][0])
    with pytest.raises(MiniVGGError, match="overwrite the input"):
        convert(again, again)


@pytest.mark.torch
def test_torch_state_dict_with_other_key_names(tmp_path, p16):
    torch = pytest.importorskip("torch")
    sd = {}
    for name, (W, b) in p16.items():
        sd[f"{name}.weight"] = torch.from_numpy(W)
        sd[f"{name}.bias"] = torch.from_numpy(b)
    p = tmp_path / "named.pth"
    torch.save(sd, str(p))
    params, arch = assemble(read_source(str(p)), "named.pth")
    assert arch == "vgg16"
    np.testing.assert_array_equal(params["conv4_2"][0], p16["conv4_2"][0])
