"""Winograd F(4x4, 3x3) (minivgg/cpu/fast/winograd.py) against a plain direct convolution.

The reference is the definition, y[o,i,j] = b[o] + sum_{c,a,e} W[o,c,a,e] xp[c,i+a,j+e],
in float64 numpy; sizes are odd on purpose (maps not multiples of the 4x4 tile, several
bands, a batch of two). The tests whose products go through gemm.py run on every ISA level
this host supports (minivgg/cpu/fast/isa.py: avx512, avx2, blas; a level the host lacks is
skipped, saying why), with the same bounds on each: the products' float32 error (at most
KB + K/KB roundings per output on every level, tests/test_gemm.py) is far below the
transforms' (docs/winograd.md: 1.2e-6 - 2.6e-6 per layer), which the bounds are set by."""

import numpy as np
import pytest

from conftest import isa_levels
from minivgg.cpu import ops
from minivgg.cpu.fast import isa, winograd




ALL_LEVELS = isa_levels(["blas", "avx2", "avx512"])




def direct_conv(x, W, b=None):
    """3x3, stride 1, pad 1 correlation in float64: the definition, one shift at a time."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2, w + 2))
    xp[:, :, 1:-1, 1:-1] = x
    y = np.zeros((n, W.shape[0], h, w))
    for a in range(3):
        for e in range(3):
            y += np.einsum("oc,nchw->nohw", W[:, :, a, e], xp[:, :, a : a + h, e : e + w])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def direct_conv_backward_input(dy, W):
    """dx[c] = sum_o sum_{a,e} W[o,c,a,e] dy[o, u+1-a, v+1-e]: the adjoint, from its definition."""
    dy = np.asarray(dy, np.float64)
    W = np.asarray(W, np.float64)
    n, o, h, w = dy.shape
    dxp = np.zeros((n, W.shape[1], h + 2, w + 2))
    for a in range(3):
        for e in range(3):
            dxp[:, :, a : a + h, e : e + w] += np.einsum("oc,nohw->nchw", W[:, :, a, e], dy)
    return dxp[:, :, 1:-1, 1:-1]


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def he_weights(rng, cout, cin):
    return (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)


def test_transform_matrices_are_exact():
    """A^T [(G g) * (B^T d)] is the 1-D correlation y_i = sum_k g_k d_{i+k}, and the backward
    pair applied to the same G g is the correlation with the reversed kernel, exactly."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        g, d = rng.standard_normal(3), rng.standard_normal(6)
        y = winograd.AT @ ((winograd.G @ g) * (winograd.BT @ d))
        np.testing.assert_allclose(y, [g @ d[i : i + 3] for i in range(4)], rtol=0, atol=1e-13)
        yb = winograd.AT_BWD @ ((winograd.G @ g) * (winograd.BT_BWD @ d))
        np.testing.assert_allclose(yb, [g[::-1] @ d[i : i + 3] for i in range(4)], rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 33, 65])
def test_phase_shuffles_split_and_weave_rows(n):
    """simd.py: a row into its four phases (columns 4j + p) and back, with the offsets and
    strides the transforms use, full 16-blocks and the scalar tail; ReLU on the way back;
    and each value twice, scaled (the average pool's backward)."""
    from numba import njit

    from minivgg.cpu.fast.simd import _deinterleave4, _interleave4, _repeat2

    @njit
    def split(src, so, dst, do, ldd, n):
        _deinterleave4(src, so, dst, do, ldd, n)

    @njit
    def weave(src, so, lds, dst, do, n, relu):
        _interleave4(src, so, lds, dst, do, n, relu)

    rng = np.random.default_rng(n)
    src = rng.standard_normal(3 + 4 * n + 5).astype(np.float32)
    ld = n + 2
    ph = np.full(7 + 4 * ld, -9, np.float32)
    split(src, 3, ph, 7, ld, n)
    want = np.full_like(ph, -9)
    for p in range(4):
        want[7 + p * ld : 7 + p * ld + n] = src[3 + p : 3 + 4 * n : 4]
    np.testing.assert_array_equal(ph, want)  # nothing written outside the four rows
    for relu in (False, True):
        back = np.full(2 + 4 * n + 3, 5, np.float32)
        weave(ph, 7, ld, back, 2, n, relu)
        row = src[3 : 3 + 4 * n]
        np.testing.assert_array_equal(back[2 : 2 + 4 * n], np.maximum(row, 0) if relu else row)
        assert (back[:2] == 5).all() and (back[2 + 4 * n :] == 5).all()

    @njit
    def repeat(src, so, dst, do, n, scale):
        _repeat2(src, so, dst, do, n, scale)

    twice = np.full(1 + 2 * n + 2, 5, np.float32)
    repeat(src, 3, twice, 1, n, np.float32(0.25))
    np.testing.assert_array_equal(twice[1 : 1 + 2 * n], np.repeat(np.float32(0.25) * src[3 : 3 + n], 2))
    assert twice[0] == 5 and (twice[1 + 2 * n :] == 5).all()


def test_generated_kernels_are_up_to_date():
    import os

    from minivgg.cpu.fast import winograd_codegen

    path = os.path.join(os.path.dirname(winograd.__file__), "winograd_kernels.py")
    with open(path) as f:
        assert f.read() == winograd_codegen.generate(winograd.ALGORITHMS, winograd.G), "run python -m minivgg.cpu.fast.winograd_codegen"


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 4, 13, 5), (2, 3, 1, 1), (1, 6, 4, 8), (1, 2, 2, 3)])
def test_forward_matches_direct_on_odd_sizes(level, shape):
    rng = np.random.default_rng(1)
    n, cin, h, w = shape
    cout = 6
    x = rng.standard_normal(shape).astype(np.float32)
    W = he_weights(rng, cout, cin)
    b = rng.standard_normal(cout).astype(np.float32)
    U = winograd.transform_weights(W)
    ref = direct_conv(x, W, b)
    for threads in (1, 2, 3):  # 3: output channels in shares of 2 on the whole-map path
        y = winograd.conv3x3_forward(x, U, b, threads=threads)
        assert y.shape == (n, cout, h, w) and y.dtype == np.float32
        assert rel(y, ref) < 2e-6
        yr = winograd.conv3x3_forward(x, U, b, relu=True, threads=threads)
        assert rel(yr, np.maximum(ref, 0)) < 2e-6


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 4, 13, 5), (2, 3, 1, 1)])
def test_backward_to_input_matches_direct(level, shape):
    """From the forward's U (inverse-point algorithm), and as the forward convolution of dy
    with W' = W^T rotated 180 degrees: both equal the adjoint's definition."""
    rng = np.random.default_rng(2)
    n, cout, h, w = shape
    cin = 7
    W = he_weights(rng, cout, cin)
    dy = rng.standard_normal(shape).astype(np.float32)
    ref = direct_conv_backward_input(dy, W)
    U = winograd.transform_weights(W)
    for threads in (1, 2, 3):
        dx = winograd.conv3x3_backward_input(dy, U, threads=threads)
        assert dx.shape == (n, cin, h, w)
        assert rel(dx, ref) < 2e-6
    dx2 = winograd.conv3x3_forward(dy, winograd.transform_weights(winograd.backward_weights(W)), None)
    assert rel(dx2, ref) < 2e-6


def test_backward_with_fused_relu_mask():
    """mask=y convolves dy * (y > 0): ReLU's backward folded into the input transform."""
    rng = np.random.default_rng(3)
    dy = rng.standard_normal((2, 5, 9, 7)).astype(np.float32)
    y = np.maximum(rng.standard_normal(dy.shape), 0).astype(np.float32)
    W = he_weights(rng, 5, 4)
    dx = winograd.conv3x3_backward_input(dy, winograd.transform_weights(W), mask=y)
    assert rel(dx, direct_conv_backward_input(dy * (y > 0), W)) < 2e-6
    # a second gradient on y, added in the same pass
    e = rng.standard_normal(dy.shape).astype(np.float32)
    dx = winograd.conv3x3_backward_input(dy, winograd.transform_weights(W), mask=y, extra=e)
    assert rel(dx, direct_conv_backward_input((dy + e) * (y > 0), W)) < 2e-6
    with pytest.raises(ValueError, match="extra"):
        winograd.conv3x3_backward_input(dy, winograd.transform_weights(W), extra=e)


@pytest.mark.parametrize("shape", [(2, 5, 9, 7), (1, 6, 16, 12), (1, 3, 70, 66)])
def test_backward_with_fused_average_pool(shape):
    """pooled=True: dy is a 2x2 average pool's output gradient; the pool's backward (dy / 4
    over each window, 0 in a trailing odd row or column) is folded into the input
    transform. Bit for bit the unfused result."""
    rng = np.random.default_rng(5)
    n, c, h, w = shape
    y = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    dyp = rng.standard_normal((n, c, h // 2, w // 2)).astype(np.float32)
    e = rng.standard_normal(shape).astype(np.float32)
    U = winograd.transform_weights(he_weights(rng, c, 4))
    up = ops.avg_pool2d_backward(dyp, shape, 2, 2)
    assert (up[:, :, 2 * (h // 2) :] == 0).all() and (up[:, :, :, 2 * (w // 2) :] == 0).all()
    for extra in (None, e):
        want = winograd.conv3x3_backward_input(up, U, mask=y, extra=extra)
        got = winograd.conv3x3_backward_input(dyp, U, mask=y, extra=extra, pooled=True)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="pooled needs a mask"):
        winograd.conv3x3_backward_input(dyp, U, mask=y[:, :, :4], pooled=True)


def test_float64_transform_is_exact_to_rounding():
    """The algorithm itself is exact: in float64 arithmetic (numpy, not the kernels) the
    Winograd tiles reproduce the direct convolution to ~1e-15."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8, 8))
    W = rng.standard_normal((2, 3, 3, 3))
    xp = np.zeros((3, 14, 14))
    xp[:, 1:9, 1:9] = x
    U = np.einsum("ka,ocab,lb->kloc", winograd.G, W, winograd.G)
    y = np.zeros((2, 8, 8))
    for ti in range(2):
        for tj in range(2):
            d = xp[:, 4 * ti : 4 * ti + 6, 4 * tj : 4 * tj + 6]
            V = np.einsum("ka,cab,lb->klc", winograd.BT, d, winograd.BT)
            M = np.einsum("kloc,klc->klo", U, V)
            y[:, 4 * ti : 4 * ti + 4, 4 * tj : 4 * tj + 4] = np.einsum("rk,klo,sl->ors", winograd.AT, M, winograd.AT)
    assert rel(y, direct_conv(x[None], W)[0]) < 1e-13


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
def test_bands_and_threads_agree(level):
    """Many bands over a batch (the pipelined path) and one band (stage-split) give the same."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 24, 70, 33)).astype(np.float32)
    W = he_weights(rng, 20, 24)
    b = rng.standard_normal(20).astype(np.float32)
    U = winograd.transform_weights(W)
    ref = direct_conv(x, W, b)
    y1 = winograd.conv3x3_forward(x, U, b, threads=1)
    y2 = winograd.conv3x3_forward(x, U, b, threads=2)
    y3 = winograd.conv3x3_forward(x[:1], U, b, threads=2)
    assert rel(y1, ref) < 3e-6 and rel(y2, ref) < 3e-6 and rel(y3, ref[:1]) < 3e-6
    np.testing.assert_array_equal(y2[:1], y3)


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
def test_vgg_sized_channels_error_bound(level):
    """Realistic scale (He init, 256 -> 256 channels): within 1e-5 of the exact result."""
    rng = np.random.default_rng(6)
    x = np.maximum(rng.standard_normal((1, 256, 12, 12)), 0).astype(np.float32)
    W = he_weights(rng, 256, 256)
    y = winograd.conv3x3_forward(x, winograd.transform_weights(W), None)
    assert rel(y, direct_conv(x, W)) < 1e-5


def test_ops_route_and_fall_back(monkeypatch):
    """ops.conv2d_forward/backward use Winograd where it applies and im2col otherwise,
    with the same results; MINIVGG_CONV=im2col forces the baseline. (Kept U, the default
    weights mode, whatever the environment says.)"""
    monkeypatch.delenv("MINIVGG_WINOGRAD_WEIGHTS", raising=False)
    monkeypatch.delenv("MINIVGG_CONV", raising=False)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 32, 40, 36)).astype(np.float32)
    W = he_weights(rng, 32, 32)
    b = rng.standard_normal(32).astype(np.float32)
    dy = rng.standard_normal((1, 32, 40, 36)).astype(np.float32)
    monkeypatch.setattr(ops, "WINOGRAD_MIN_WORK", 1)
    state = {}
    y, cache = ops.conv2d_forward(x, W, b, 1, 1, state)
    dx, dW, db = ops.conv2d_backward(dy, cache, True)
    assert list(state) == ["winograd36"]  # taps not gathered (no layer made them): all of U
    assert state["winograd36"].shape == (36, 32, 32)  # one transform serves both directions
    # a layer's weights (ops.layer_weights): W a view of the taps as rows, U's 32 inner
    # positions kept, the corners read from the taps; the same numbers to the bit
    st = {}
    Wl = ops.layer_weights(W, st)
    assert np.shares_memory(Wl, st["winograd9"]) and np.array_equal(Wl, W)
    yl, cl = ops.conv2d_forward(x, Wl, b, 1, 1, st)
    dxl, dWl, dbl = ops.conv2d_backward(dy, cl, True)
    assert st["winograd"].shape == (32, 32, 32) and st["winograd9"].shape == (9, 32, 32)
    for a, a0 in ((yl, y), (dxl, dx), (dWl, dW), (dbl, db)):
        np.testing.assert_array_equal(a, a0)
    monkeypatch.setenv("MINIVGG_CONV", "im2col")
    y0, cache0 = ops.conv2d_forward(x, W, b, 1, 1, {})
    dx0, dW0, db0 = ops.conv2d_backward(dy, cache0, True)
    assert rel(y, y0.astype(np.float64)) < 5e-6
    assert rel(dx, dx0.astype(np.float64)) < 5e-6
    np.testing.assert_array_equal(dW, dW0)
    np.testing.assert_array_equal(db, db0)
    assert rel(y0, direct_conv(x, W, b)) < 1e-6
    # float64 and non-3x3 layers never take the Winograd path
    monkeypatch.delenv("MINIVGG_CONV")
    y64, _ = ops.conv2d_forward(x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), 1, 1, {})
    assert y64.dtype == np.float64 and rel(y64, direct_conv(x, W, b)) < 1e-12


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
def test_streamed_weights_match_kept_ones(level):
    """gather_weights(W) (the taps as rows, U made block by block by the products) stays
    within Winograd's documented 3e-6 of the direct convolution: forward with ReLU, backward with mask,
    extra and a folded pool, bands and whole maps, 1-3 threads (the whole map's output channels in one to
    three shares), on each level (gemm.py's kernels, numpy's BLAS); and its kernel makes U itself."""
    from minivgg.cpu.fast.winograd_kernels import _weight_rows

    rng = np.random.default_rng(8)
    W = he_weights(rng, 24, 40)
    U, w9 = winograd.transform_weights(W), winograd.gather_weights(W)
    made = np.empty_like(U)
    for i in range(6):
        _weight_rows(w9, i, 0, 24, 0, 40, made[6 * i : 6 * i + 6])
    assert np.abs(made - U).max() <= 4e-7 * np.abs(U).max()
    b = rng.standard_normal(24).astype(np.float32)
    for h, w in [(9, 7), (64, 60)]:  # one whole map; bands
        x = rng.standard_normal((1, 40, h, w)).astype(np.float32)
        dy = rng.standard_normal((1, 24, h, w)).astype(np.float32)
        y = np.maximum(rng.standard_normal(dy.shape), 0).astype(np.float32)
        e = rng.standard_normal(dy.shape).astype(np.float32)
        dyp = rng.standard_normal((1, 24, h // 2, w // 2)).astype(np.float32)
        up = ops.avg_pool2d_backward(dyp, y.shape, 2, 2)
        refs = {
            "fwd": np.maximum(direct_conv(x, W, b), 0),
            "mask": direct_conv_backward_input(dy * (y > 0), W),
            "extra": direct_conv_backward_input((dy + e) * (y > 0), W),
            "pooled": direct_conv_backward_input(up * (y > 0), W),
        }
        for threads in (1, 2, 3):
            got = {
                "fwd": winograd.conv3x3_forward(x, w9, b, relu=True, threads=threads, W=W),
                "mask": winograd.conv3x3_backward_input(dy, w9, mask=y, threads=threads),
                "extra": winograd.conv3x3_backward_input(dy, w9, mask=y, extra=e, threads=threads),
                "pooled": winograd.conv3x3_backward_input(dyp, w9, mask=y, pooled=True, threads=threads),
            }
            for k, ref in refs.items():  # the documented per-layer bound (kept U: 1.2e-6 - 2.6e-6)
                assert rel(got[k], ref) < 3e-6, (k, h, threads)
    with pytest.raises(ValueError, match="gather_weights"):
        winograd.conv3x3_forward(x, U[:10], b)


def _vgg16_in_modes(monkeypatch, modes, size, layers, pooling="avg", seed=1):
    """{mode: (net, features, gradient of the features' sum)} for VGG-16 to relu4_2 built
    under each MINIVGG_WINOGRAD_WEIGHTS mode, on the Winograd path whatever the environment."""
    monkeypatch.delenv("MINIVGG_CONV", raising=False)
    from minivgg import load_vgg
    from minivgg.vgg import random_weights

    params = random_weights("vgg16", seed=seed)
    x = (np.random.default_rng(seed + 8).standard_normal((1, 3, size, size)) * 50).astype(np.float32)
    out = {}
    for mode in modes:
        monkeypatch.setenv("MINIVGG_WINOGRAD_WEIGHTS", mode)
        net = load_vgg("vgg16", weights=params, up_to="relu4_2", pooling=pooling)
        f = net.forward(x, layers)
        out[mode] = (net, f, net.backward({l: np.ones_like(v) for l, v in f.items()}))
    return params, out


def _weights_states(net, params):
    """{conv name: its state}, after checking that each 3x3 layer's W is a view of its taps
    as rows (9, Cout, Cin) with the values given: the weights held once in every mode."""
    convs = {n: l for n, l in net.layers.items() if n.startswith("conv")}
    for n, l in convs.items():
        assert np.array_equal(l.W, params[n][0])
        assert l.state["winograd9"].shape == (9,) + l.W.shape[:2]
        assert np.shares_memory(l.W, l.state["winograd9"]) and not l.W.flags.c_contiguous
    return {n: l.state for n, l in convs.items()}


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_streamed_weights_in_the_net(monkeypatch, pooling):
    """MINIVGG_WINOGRAD_WEIGHTS=stream: no layer keeps U (keep: every Winograd layer keeps
    its 32 inner positions, the corners being the taps), and the net's features and
    gradient agree with keep's to float32 rounding: Winograd layers, im2col layers (conv4_x
    at 8x8 here, from a contiguous copy) and, with max pooling, the ties recomputed from
    the strided W."""
    layers = ["relu1_1", "relu3_1", "relu4_2"]
    params, nets = _vgg16_in_modes(monkeypatch, ("keep", "stream"), 64, layers, pooling)
    out = {mode: (f, dx) for mode, (_, f, dx) in nets.items()}
    for mode, (net, _, _) in nets.items():
        states = _weights_states(net, params)
        for n in ("conv1_2", "conv2_1", "conv3_1", "conv3_3"):  # Winograd layers at 64x64
            assert ("winograd" in states[n]) == (mode == "keep")
            if mode == "keep":
                assert states[n]["winograd"].shape == (32,) + net.layers[n].W.shape[:2]
        assert "dense" in states["conv4_2"] and "winograd" not in states["conv4_2"]  # 8x8: im2col
    for l in layers:
        assert rel(out["stream"][0][l], out["keep"][0][l]) < 1e-5
    assert rel(out["stream"][1], out["keep"][1]) < 1e-4


def test_large_layers_stream(monkeypatch):
    """MINIVGG_WINOGRAD_WEIGHTS=large: only the layers of at least 512 x 512 channels (here
    conv4_2, at 16x16 a Winograd layer) make U as they go; the others keep U's 32 inner
    positions. Features and gradient agree with keep's (every layer keeps U) to float32
    rounding."""
    layers = ["relu1_2", "relu3_1", "relu4_2"]
    params, nets = _vgg16_in_modes(monkeypatch, ("keep", "large"), 128, layers, seed=2)
    out = {mode: (f, dx) for mode, (_, f, dx) in nets.items()}
    for mode, (net, _, _) in nets.items():
        for n, st in _weights_states(net, params).items():
            large = mode == "large" and net.layers[n].W.shape[0] * net.layers[n].W.shape[1] >= ops.LARGE_PAIRS
            assert large == (n == "conv4_2" and mode == "large")
            assert ("winograd" in st) != large
            if not large:  # conv1_1 too: its backward (64 channels summed) is Winograd's
                assert st["winograd"].shape == (32,) + net.layers[n].W.shape[:2]
    for l in layers:
        assert rel(out["large"][0][l], out["keep"][0][l]) < 1e-5
    assert rel(out["large"][1], out["keep"][1]) < 1e-4


def test_auto_streams_large_layers_on_small_maps(monkeypatch):
    """The default (auto): a layer of at least 512 x 512 channels makes U as it goes on maps
    of at most STREAM_TILES tiles (conv4_2 at 16x16 from a 128 image) and keeps U on larger
    ones (at 20x20 from 160, U made then, beside the taps); the others always keep U.
    Features and gradient agree with keep's to float32 rounding; unset means auto."""
    monkeypatch.delenv("MINIVGG_WINOGRAD_WEIGHTS", raising=False)
    assert ops.winograd_weights_mode() == "auto"
    layers = ["relu1_2", "relu3_1", "relu4_2"]
    params, nets = _vgg16_in_modes(monkeypatch, ("keep", "auto"), 128, layers, seed=3)
    states = _weights_states(nets["auto"][0], params)
    assert "winograd" not in states["conv4_2"]
    assert all("winograd" in st for n, st in states.items() if n != "conv4_2")
    for l in layers:
        assert rel(nets["auto"][1][l], nets["keep"][1][l]) < 1e-5
    assert rel(nets["auto"][2], nets["keep"][2]) < 1e-4
    net = nets["auto"][0]
    x = np.random.default_rng(4).standard_normal((1, 3, 160, 160)).astype(np.float32)
    f = net.forward(x, ["relu4_2"])
    net.backward({"relu4_2": np.ones_like(f["relu4_2"])})
    assert states["conv4_2"]["winograd"].shape == (32, 512, 512)


def test_kept_inner_positions_and_taps_equal_all_of_U():
    """transform_weights(W, corners=False) is U without the corners, which are W's corner
    taps exactly; the products from (those 32, gather_weights(W)) give the 36-position U's
    numbers to the bit, forward and backward, bands and whole maps, 1-3 threads, on each
    supported level (gemm.py's kernels, numpy's BLAS). Mismatched pairs are refused."""
    rng = np.random.default_rng(11)
    W = he_weights(rng, 24, 40)
    U, w9, Ui = winograd.transform_weights(W), winograd.gather_weights(W), winograd.transform_weights(W, corners=False)
    np.testing.assert_array_equal(U[list(winograd.INNER)], Ui)
    np.testing.assert_array_equal(U[list(winograd.CORNERS)], w9[list(winograd.CORNER_TAPS)])
    b = rng.standard_normal(24).astype(np.float32)
    for lvl in isa.supported():
        with isa.forced(lvl, gemm=None if lvl == "blas" else "ours"):
            _kept_equals_all(rng, W, U, Ui, w9, b)
    with pytest.raises(ValueError, match="corners=False"):
        winograd.conv3x3_forward(rng.standard_normal((1, 40, 9, 7)).astype(np.float32), (U, w9), b)


def _kept_equals_all(rng, W, U, Ui, w9, b):
    """At the current level: the products from (Ui, w9) equal those from all of U, to the bit."""
    for h, w in [(9, 7), (64, 60)]:  # one whole map; bands
        x = rng.standard_normal((1, 40, h, w)).astype(np.float32)
        dy = rng.standard_normal((1, 24, h, w)).astype(np.float32)
        y = np.maximum(rng.standard_normal(dy.shape), 0).astype(np.float32)
        for threads in (1, 2, 3):
            for wt in (U, (Ui, w9)):
                got = (winograd.conv3x3_forward(x, wt, b, relu=True, threads=threads, W=W),
                       winograd.conv3x3_backward_input(dy, wt, mask=y, threads=threads))
                if wt is U:
                    ref = got
            for a, a0 in zip(got, ref):
                np.testing.assert_array_equal(a, a0)


def test_unknown_weights_mode_is_a_clear_error(monkeypatch):
    from minivgg import load_vgg
    from minivgg.errors import MiniVGGError
    from minivgg.vgg import random_weights

    monkeypatch.setenv("MINIVGG_WINOGRAD_WEIGHTS", "streaming")
    with pytest.raises(MiniVGGError, match="MINIVGG_WINOGRAD_WEIGHTS=streaming.*auto, keep, large, stream"):
        load_vgg("vgg16", weights=random_weights("vgg16"), up_to="relu1_2")


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 8, 6), (1, 2, 2, 3)])
def test_avg_pool2x2_kernels_match_the_general_loops(shape):
    """fused.avg_pool2x2_* give exactly what the general k x k / stride s loops give."""
    from minivgg.cpu.fast import fused
    from minivgg.cpu import im2col as general

    rng = np.random.default_rng(8)
    x = rng.standard_normal((shape[0] * shape[1] * 3000,) + shape[2:]).astype(np.float32)
    ho, wo = shape[2] // 2, shape[3] // 2
    y, y0 = np.empty((x.shape[0], ho, wo), np.float32), np.empty((x.shape[0], ho, wo), np.float32)
    fused.avg_pool2x2_forward(x, y)
    general.avg_pool_forward(x, 2, 2, y0)
    np.testing.assert_array_equal(y, y0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx0 = np.full(x.shape, np.nan, np.float32), np.empty(x.shape, np.float32)
    fused.avg_pool2x2_backward(dy, dx)
    general.avg_pool_backward(dy, 2, 2, dx0)
    np.testing.assert_array_equal(dx, dx0)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 8, 6), (1, 2, 2, 3)])
def test_max_pool2x2_kernels_match_the_general_loops(shape):
    """fused.max_pool2x2_* give exactly what the general k x k / stride s loops give,
    ties (first maximum) and NaNs included."""
    from minivgg.cpu.fast import fused
    from minivgg.cpu import im2col as general

    rng = np.random.default_rng(9)
    x = rng.standard_normal((shape[0] * shape[1] * 3000,) + shape[2:]).astype(np.float32)
    x[::7] = np.round(x[::7])  # many exact ties
    x[5, 0, 1] = x[9, 1, 0] = x[9, 1, 1] = np.nan
    ho, wo = shape[2] // 2, shape[3] // 2
    y, y0 = np.empty((x.shape[0], ho, wo), np.float32), np.empty((x.shape[0], ho, wo), np.float32)
    arg, arg0 = np.empty(y.shape, np.uint8), np.empty(y.shape, np.uint8)
    fused.max_pool2x2_forward(x, y, arg)
    general.max_pool_forward(x, 2, 2, y0, arg0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(arg, arg0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx0 = np.full(x.shape, np.nan, np.float32), np.empty(x.shape, np.float32)
    fused.max_pool2x2_backward(dy, arg, dx)
    general.max_pool_backward(dy, arg0, 2, 2, dx0)
    np.testing.assert_array_equal(dx, dx0)


def test_fused_conv_relu_ops_match_the_separate_ops(monkeypatch):
    """ops.conv2d_relu_forward / relu_conv2d_backward = conv, then relu (and back), on both
    the Winograd path and the im2col fallback."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 20, 17, 23)).astype(np.float32)
    W = he_weights(rng, 24, 20)
    b = rng.standard_normal(24).astype(np.float32)
    dy = rng.standard_normal((2, 24, 17, 23)).astype(np.float32)
    for min_work in (1, 10**9):  # Winograd, then im2col
        monkeypatch.setattr(ops, "WINOGRAD_MIN_WORK", min_work)
        state = {}
        y, cache = ops.conv2d_relu_forward(x, W, b, 1, 1, state)
        pre, cache0 = ops.conv2d_forward(x, W, b, 1, 1, state)
        y0 = ops.relu_forward(pre)
        np.testing.assert_allclose(y, y0, rtol=0, atol=1e-6 * np.abs(y0).max())
        dx = ops.relu_conv2d_backward(dy, y0, cache)
        dx0 = ops.conv2d_backward(ops.relu_backward(dy, y0), cache0, False)[0]
        np.testing.assert_allclose(dx, dx0, rtol=0, atol=1e-6 * np.abs(dx0).max())
        ref = direct_conv_backward_input(dy * (direct_conv(x, W, b) > 0), W)
        assert rel(dx, ref) < 5e-6
        # with a second gradient on y (a loss on the ReLU's output) summed in the same pass
        e = rng.standard_normal(dy.shape).astype(np.float32)
        dxe = ops.relu_conv2d_backward(dy, y0, cache, e)
        dxe0 = ops.conv2d_backward(ops.relu_backward(dy + e, y0), cache0, False)[0]
        np.testing.assert_allclose(dxe, dxe0, rtol=0, atol=1e-6 * np.abs(dxe0).max())


def test_relu_kernels_over_the_pool():
    from minivgg.cpu.fast import fused

    rng = np.random.default_rng(10)
    for n in (7, 300001):  # one piece, and several pieces over the pool
        x = rng.standard_normal(n).astype(np.float32)
        y = np.empty_like(x)
        fused.relu_forward(x, y)
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        dy = rng.standard_normal(n).astype(np.float32)
        dx = np.empty_like(dy)
        fused.relu_backward(dy, y, dx)
        np.testing.assert_array_equal(dx, np.where(y > 0, dy, 0))
        e = rng.standard_normal(n).astype(np.float32)
        fused.relu_backward(dy, y, dx, e)
        np.testing.assert_array_equal(dx, np.where(y > 0, dy + e, 0))


def test_bias_forward_over_the_pool():
    from minivgg.cpu.fast import fused

    rng = np.random.default_rng(12)
    for shape in ((3, 7), (64, 70000)):  # one piece, and several over the pool
        y = rng.standard_normal(shape).astype(np.float32)
        b = rng.standard_normal(shape[0]).astype(np.float32)
        for relu in (False, True):
            out = y.copy()
            fused.bias_forward(out, b, relu)
            ref = y + b[:, None]
            np.testing.assert_array_equal(out, np.maximum(ref, 0) if relu else ref)


def test_threads_matmul():
    from minivgg.cpu.fast import threads

    rng = np.random.default_rng(11)
    F = rng.standard_normal((2, 40, 300)).astype(np.float32)
    G = threads.matmul(F, F.transpose(0, 2, 1))
    np.testing.assert_allclose(G, F @ F.transpose(0, 2, 1), rtol=1e-5, atol=1e-4)
    D = rng.standard_normal((40, 40)).astype(np.float32)
    np.testing.assert_allclose(threads.matmul(D, F[0]), D @ F[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(threads.matmul(D[None], F), D @ F, rtol=1e-5, atol=1e-4)
    out = np.full((40, 300), np.nan, np.float32)
    assert threads.matmul(D, F[1], out=out) is out
    np.testing.assert_allclose(out, D @ F[1], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="C-contiguous"):
        threads.matmul(D, F[1], out=np.empty((300, 40), np.float32).T)
    # few rows, many columns: split by columns (im2col's first layer, forward and back)
    A = rng.standard_normal((27, 64)).astype(np.float32)
    B = rng.standard_normal((2, 64, 5003)).astype(np.float32)
    np.testing.assert_allclose(threads.matmul(A[None], B), A.astype(np.float64) @ B, rtol=1e-5, atol=1e-4)
    # out += a @ b, split by rows and by columns, on each level (gemm.py's kernels, numpy's BLAS)
    for lvl in isa.supported():
        for a, bb in ((D, F[0]), (A, B[0])):
            base = rng.standard_normal((a.shape[0], bb.shape[1])).astype(np.float32)
            out = base.copy()
            with isa.forced(lvl, gemm=None if lvl == "blas" else "ours"):
                assert threads.matmul(a, bb, out=out, accumulate=True) is out
            np.testing.assert_allclose(out, base + a.astype(np.float64) @ bb, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="accumulate needs out"):
        threads.matmul(D, F[0], accumulate=True)
    # the BLAS thread limit is restored after the call
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    threads.matmul(D, F[0])
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def test_outputs_near_zero_are_recomputed_exactly():
    """With W given, outputs within REFINE_BELOW of their strip's largest magnitude come from
    the float64 direct sum, so ReLU signs agree with the exact result."""
    rng = np.random.default_rng(12)
    x = np.maximum(rng.standard_normal((1, 64, 40, 44)), 0).astype(np.float32)
    W = he_weights(rng, 48, 64)
    b = rng.standard_normal(48).astype(np.float32) * 0.1
    U = winograd.transform_weights(W)
    ref = direct_conv(x, W, b)
    # plant exact zeros' neighbours: shift the bias so some outputs sit within 1e-7 of 0
    b2 = (b[None, :, None, None] - ref[:, :, 5:6, 7:8]).reshape(-1).astype(np.float32)
    ref2 = direct_conv(x, W, b2)
    y = winograd.conv3x3_forward(x, U, b2, relu=True, W=W)
    near = np.abs(ref2) < 1e-4 * np.abs(ref2).max()
    assert near.any()
    np.testing.assert_array_equal(y[near] > 0, ref2[near] > 0)
    np.testing.assert_allclose(y[near], np.maximum(ref2[near], 0), rtol=0, atol=1e-6 * np.abs(ref2).max())
    assert rel(y, np.maximum(ref2, 0)) < 5e-6


def test_pool_works_in_a_forked_child():
    """A child forked after the pool started gets a pool of its own (not the parent's dead one)."""
    import multiprocessing as mp

    from minivgg.cpu.fast import threads

    threads.parallel_range(lambda a, b: None, 4, threads=2)  # start the parent's pool
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_conv, args=(q,))
    p.start()
    p.join(60)
    assert p.exitcode == 0 and q.get(timeout=5) < 1e-5


def _child_conv(q):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 11)).astype(np.float32)
    W = he_weights(rng, 8, 8)
    y = winograd.conv3x3_forward(x, winograd.transform_weights(W), None, threads=2)
    q.put(rel(y, direct_conv(x, W)))


def test_max_pool_near_ties_are_recomputed_exactly(monkeypatch):
    """conv2d_relu_forward(pool_ties=True): outputs that tie (to POOL_TIE_BELOW of the
    layer's largest) for their 2x2 window's maximum come from the float64 direct sum, so the
    max pool picks the unit an exact computation picks; everything else is untouched.

    Ties are planted: x and W mirror-symmetric across the middle of a 46-wide map, so
    columns 22 and 23 (one pooling window) are mirror images, then column 23's input moved
    by 1e-6 relative: their outputs differ by about that much, below Winograd's error."""
    monkeypatch.delenv("MINIVGG_CONV", raising=False)  # the Winograd path, whatever the environment
    rng = np.random.default_rng(21)
    x = np.maximum(rng.standard_normal((1, 128, 48, 46)), 0)
    x = (x + x[:, :, :, ::-1]) / 2
    x[:, :, :, 23] *= 1 + 1e-6 * rng.standard_normal((1, 128, 48))
    x = x.astype(np.float32)
    W = he_weights(rng, 48, 128)
    W = ((W + W[:, :, :, ::-1]) / 2).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32) * 0.1
    assert ops._winograd_applies(x, W, 1, 1, 128)  # the path with Winograd's error
    exact = np.maximum(direct_conv(x, W, b), 0)
    plain, _ = ops.conv2d_relu_forward(x, W, b, 1, 1, {})
    fixed, _ = ops.conv2d_relu_forward(x, W, b, 1, 1, {}, pool_ties=True)
    pair = (slice(None), slice(None), slice(None), slice(22, 24))
    # the pairs that hold their window's maximum (the other row of the window is lower)
    rowmax = exact[pair].max(axis=-1)
    other = rowmax.reshape(1, 48, 24, 2)[..., ::-1].reshape(rowmax.shape)
    tied = (exact[pair] > 0).all(axis=-1) & (rowmax > other)
    assert tied.sum() > 200
    # every planted pair is a candidate and now holds the exact values
    np.testing.assert_allclose(fixed[pair][tied], exact[pair][tied], rtol=1e-7, atol=0)
    gap = np.abs(exact[pair][..., 0] - exact[pair][..., 1])
    clear = tied & (gap > 1e-6 * np.abs(exact[pair]).max(axis=-1))  # not tied in float32 too
    assert clear.sum() > 100
    np.testing.assert_array_equal(fixed[pair].argmax(-1)[clear], exact[pair].argmax(-1)[clear])
    assert (plain[pair].argmax(-1)[clear] != exact[pair].argmax(-1)[clear]).sum() > 10  # without: flips
    # outside the candidates nothing moved
    changed = fixed != plain
    within = fixed.max() * winograd.POOL_TIE_BELOW
    for n, o, i, j in np.argwhere(changed):
        i0, j0 = i // 2 * 2, j // 2 * 2
        window = fixed[n, o, i0 : i0 + 2, j0 : j0 + 2]
        assert window.max() - fixed[n, o, i, j] <= 2 * within
    assert rel(fixed, exact) < 5e-6


@pytest.mark.parametrize("stride, pad, k", [(1, 1, 3), (2, 1, 3), (1, 0, 3), (2, 0, 2)])
def test_im2col_backward_in_bands_matches_whole(monkeypatch, stride, pad, k):
    """The banded im2col backward (bands of output rows, the last one short, ReLU's mask
    and a second gradient applied band by band) gives what one whole-image pass gives."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 23, 19)).astype(np.float32)
    W = (rng.standard_normal((8, 3, k, k)) * 0.3).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    y, cache = ops.conv2d_relu_forward(x, W, b, stride, pad, {})
    dy = rng.standard_normal(y.shape).astype(np.float32)
    e = rng.standard_normal(y.shape).astype(np.float32)
    whole = ops.relu_conv2d_backward(dy, y, cache, e)
    plain = ops.conv2d_backward(dy, cache, False)[0]
    monkeypatch.setattr(ops, "IM2COL_BAND_ABOVE", 0)
    for floats in (1, 27 * 19 * 2, 27 * 19 * 4):  # one row per band, a few rows, a short last band
        monkeypatch.setattr(ops, "IM2COL_BAND_FLOATS", floats)
        np.testing.assert_allclose(ops.relu_conv2d_backward(dy, y, cache, e), whole, rtol=0, atol=1e-6 * np.abs(whole).max())
        np.testing.assert_allclose(ops.conv2d_backward(dy, cache, False)[0], plain, rtol=0, atol=1e-6 * np.abs(plain).max())
    ref = direct_conv_backward_input((dy + e) * (y > 0), W) if (stride, pad, k) == (1, 1, 3) else None
    if ref is not None:
        assert rel(whole, ref) < 1e-5


def test_docstring_matrices_are_the_codes():
    """The B^T, G and A^T printed in winograd.py's docstring are BT, G and AT, and they compute
    the 3x3 correlation of a 6x6 tile (points 0, 1, -1, 1/2, -2, infinity)."""
    import re
    from fractions import Fraction

    rows = {"BT": [], "G": [], "AT": []}
    for line in winograd.__doc__.splitlines():
        groups = re.findall(r"\[([^\[\]]*)\]", line)
        if len(groups) < 2 or not all(re.fullmatch(r"[\s\d/-]+", g) for g in groups):
            continue
        for name, g in zip(("BT", "G", "AT"), groups):
            rows[name].append([float(Fraction(v)) for v in g.split()])
    for name, M in (("BT", winograd.BT), ("G", winograd.G), ("AT", winograd.AT)):
        np.testing.assert_allclose(np.array(rows[name]), M, rtol=0, atol=1e-15, err_msg=name)
    rng = np.random.default_rng(3)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    Y = winograd.AT @ ((winograd.G @ g @ winograd.G.T) * (winograd.BT @ d @ winograd.BT.T)) @ winograd.AT.T
    direct = np.array([[np.sum(g * d[i:i + 3, j:j + 3]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(Y, direct, rtol=0, atol=1e-12)
    points = [0, 1, -1, 0.5, -2]
    for j, p_ in enumerate(points):  # A^T's columns are the powers of the points, G's rows scaled ones
        np.testing.assert_allclose(winograd.AT[:, j], [1, p_, p_ ** 2, p_ ** 3])
        r = winograd.G[j]
        np.testing.assert_allclose(r / r[0], [1, p_, p_ ** 2])


def test_relu_mask_and_banded_backward_match_the_references():
    """fused.relu_mask is (y > 0) as uint8, and relu_backward_band one band of ReLU's backward,
    with the mask or with y, with and without a second gradient: exactly the plain numpy."""
    from minivgg.cpu import im2col as general
    from minivgg.cpu.fast import fused

    rng = np.random.default_rng(14)
    y = np.maximum(rng.standard_normal((16, 5000)), 0).astype(np.float32)
    mask = fused.relu_mask(y)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (y > 0).astype(np.uint8))
    dy, e = (rng.standard_normal(y.shape).astype(np.float32) for _ in range(2))
    full = np.empty_like(dy)
    general.relu_backward(dy, y, full)
    for m in (y, mask):
        for extra in (None, e):
            p0, p1 = 1000, 3500
            out = np.empty((y.shape[0], p1 - p0), np.float32)
            fused.relu_backward_band(dy, m, p0, p1, out, extra)
            ref = full if extra is None else np.where(y > 0, dy + e, 0).astype(np.float32)
            np.testing.assert_array_equal(out, ref[:, p0:p1])
