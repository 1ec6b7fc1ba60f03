"""Gatys normalization (weights_tools normalize) and ImageNet classification (minivgg.classify)."""

import numpy as np
import pytest
from PIL import Image

import weights_gen as gen
from minivgg import weights as mw
from minivgg.classify import center_crop, class_names, classify, softmax
from minivgg.errors import MiniVGGError
from weights_tools import cli
from weights_tools.normalize import builtin_images, channel_means, conv_names, dead_mask, layer_scales, normalized_params

CHECK = ["conv1_1", "relu1_1", "relu2_2", "conv4_1", "relu4_1", "relu5_3", "pool5"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("norm")
    p = str(d / "vgg16.h5")
    meta = {"arch": "vgg16", "source_format": "test", "source_file": "none", "source_sha256": "0" * 64,
            "normalized": False, "converter_version": "1.0", "convention": dict(mw.CAFFE)}
    mw.write_weights(p, gen.random_params("vgg16", seed=7), meta)
    return p


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(3):
        yy, xx = np.mgrid[0:32, 0:40]
        img = np.stack([xx * 6 + 10 * i, yy * 7, 200 - xx * 2], -1) + rng.integers(0, 40, (32, 40, 3))
        p = d / f"img{i}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _images(paths):
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_normalized_means_are_one_and_layers_scale(weights_file, image_files, tmp_path, capsys):
    import minivgg

    out = str(tmp_path / "norm.h5")
    assert cli.main(["normalize", weights_file, "--images", *image_files, "--out", out, "--size", "0"]) == 0
    assert "normalized 13 conv layers" in capsys.readouterr().out
    params, meta = mw.read_weights(out)
    assert bool(meta["normalized"]) and meta["normalize_pooling"] == "max" and meta["normalize_images"] == 3
    assert meta["convention"] == mw.read_weights(weights_file)[1]["convention"]

    orig = minivgg.load_vgg("vgg16", weights=weights_file, pooling="max")
    norm = minivgg.load_vgg("vgg16", weights=out, pooling="max")
    imgs = _images(image_files)
    names = conv_names(params)
    m_orig = channel_means(orig, imgs, names)
    m_norm = channel_means(norm, imgs, names)
    for n in names:
        alive = ~dead_mask(m_orig[n])
        assert alive.mean() > 0.5, n
        # a filter that barely fires (mean < 1e-3 of its layer's median) is as exact as
        # float32 rounding of its large pre-activations allows
        typical = m_orig[n] >= 1e-3 * np.median(m_orig[n][alive])
        np.testing.assert_allclose(m_norm[n][typical], 1.0, atol=1e-3, err_msg=n)
        np.testing.assert_allclose(m_norm[n][alive], 1.0, atol=2e-2, err_msg=n)
        np.testing.assert_allclose(m_norm[n][~alive], m_orig[n][~alive], atol=1e-6)  # dead ones untouched

    # every layer's output is the original's divided per channel by that layer's means
    block_last = {f"pool{b}": f"conv{b}_{gen.BLOCKS['vgg16'][b - 1]}" for b in range(1, 6)}
    convs = sorted({block_last.get(l, "conv" + l[4:] if l.startswith("relu") else l) for l in CHECK})
    for img in imgs[:2]:
        fo = orig.forward(orig.preprocess(img), CHECK + convs)
        fn = norm.forward(norm.preprocess(img), CHECK)
        for l in CHECK:
            conv = block_last.get(l, "conv" + l[4:] if l.startswith("relu") else l)
            m = layer_scales(m_orig[conv])[None, :, None, None]
            expect = fo[l] / m
            # per channel: float32 noise scales with the channel's largest value and with its
            # pre-activations (a mostly dead channel after ReLU keeps the rounding of
            # pre-activations thousands of times larger than its outputs: the normalized
            # weights are stored in float32); 1e-6 of those is about 16 float32 ulps
            err = np.abs(fn[l] - expect).max(axis=(0, 2, 3))
            pre = np.abs(fo[conv] / m).max(axis=(0, 2, 3))
            lim = 1e-3 * np.abs(expect).max(axis=(0, 2, 3)) + 1e-6 * pre + 1e-5
            bad = np.flatnonzero(err > lim)
            assert bad.size == 0, (l, bad, err[bad], lim[bad])


def test_normalize_builtin_images_default(weights_file, tmp_path, capsys):
    imgs = builtin_images()
    assert len(imgs) >= 3 and all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[2] == 3 for i in imgs)
    out = tmp_path / "n.h5"
    assert cli.main(["normalize", weights_file, "--out", str(out), "--size", "32"]) == 0
    _, meta = mw.read_weights(str(out))
    assert meta["normalize_images"] == len(imgs)


def test_fc6_absorbs_the_last_means():
    rng = np.random.default_rng(0)
    params = gen.random_params("vgg16", seed=1)
    params["fc6"] = (rng.standard_normal((3, 512 * 49)).astype(np.float32), rng.standard_normal(3).astype(np.float32))
    means = {n: rng.uniform(0.5, 2.0, params[n][0].shape[0]) for n in conv_names(params)}
    means["conv5_3"][7] = 0.0  # a dead filter stays unscaled
    new, scales = normalized_params(params, means)
    assert scales["conv5_3"][7] == 1.0 and np.all(np.isfinite(new["conv5_3"][0]))
    p5 = rng.uniform(0, 1, (512, 7, 7))
    y = params["fc6"][0] @ p5.reshape(-1)
    y2 = new["fc6"][0] @ (p5 / scales["conv5_3"][:, None, None]).reshape(-1)
    np.testing.assert_allclose(y2, y, rtol=1e-4)


def test_normalize_bad_input(weights_file, tmp_path, capsys):
    out = tmp_path / "n.h5"
    assert cli.main(["normalize", str(tmp_path / "missing.h5"), "--out", str(out)]) == 2
    assert "missing.h5" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert cli.main(["normalize", weights_file, "--images", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.png" in err
    assert not out.exists()


# ------------------------------------------------------------------ classify

def test_class_names_shipped():
    names = class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[281] == "tabby" and names[999] == "toilet tissue"
    assert all(n and n == n.strip() for n in names)


class FakeNet:
    """Records the input classify prepares; returns fixed fc8 logits."""

    def __init__(self, logits, layer_names=("conv1_1", "fc8")):
        self.logits = np.asarray(logits, np.float32)
        self.layer_names = list(layer_names)

    def preprocess(self, img):
        self.seen = img
        return img.transpose(2, 0, 1)[None].astype(np.float32)

    def forward(self, x, layers):
        assert layers == ["fc8"]
        return {"fc8": self.logits[None]}


def test_classify_top_k_softmax():
    logits = np.zeros(1000)
    logits[[281, 0, 999]] = [5.0, 4.0, 3.0]
    net = FakeNet(logits)
    img = np.zeros((300, 400, 3), np.uint8)
    res = classify(net, img, top=3)
    assert net.seen.shape == (224, 224, 3)
    assert [(k, n) for k, n, _ in res] == [(281, "tabby"), (0, "tench"), (999, "toilet tissue")]
    p = softmax(logits)
    assert res[0][2] == pytest.approx(p[281]) and res[0][2] > res[1][2] > res[2][2]
    assert p.sum() == pytest.approx(1.0)
    assert len(classify(net, img)) == 5


def test_classify_needs_classifier():
    with pytest.raises(MiniVGGError, match="keep-classifier"):
        classify(FakeNet(np.zeros(1000), layer_names=("conv1_1", "pool5")), np.zeros((224, 224, 3), np.uint8))


def test_center_crop():
    img = np.arange(100 * 50 * 3, dtype=np.uint8).reshape(100, 50, 3)
    assert center_crop(img).shape == (224, 224, 3)
    assert center_crop(np.zeros((224, 224, 3), np.uint8)).shape == (224, 224, 3)
