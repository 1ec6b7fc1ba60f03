"""minivgg/cpu/gemm.py: the register-blocked GEMM kernel against a float64 product.

Shapes cover every remainder the loop nest has (rows past the blocks of 8, 4, 2; columns
past the 48-wide panels and past the last full vector; K past the register chunk and the
cache chunk), A in any layout, batched views with gaps between rows, accumulation, and
that nothing outside C is written. The kernel runs on any x86-64 host (LLVM splits the
16-float vectors where AVX-512 is missing), so these tests do not depend on ``available()``.
"""

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from minivgg.cpu import gemm as G

SHAPES = [
    (1, 1, 1),
    (3, 5, 7),
    (8, 3, 48),
    (15, 17, 33),
    (7, 64, 16),
    (9, 65, 49),
    (16, 257, 96),
    (23, 300, 113),
    (64, 520, 97),
]


def _err(c, ref):
    return np.abs(c - ref).max() / np.abs(ref).max()


def _blas_err(a, b, ref):
    return _err(np.matmul(a, b), ref)


@pytest.mark.parametrize("m, K, n", SHAPES)
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_gemm_matches_float64(m, K, n, layout):
    rng = np.random.default_rng(m * 1000 + K + n)
    a = rng.standard_normal((m, K), dtype=np.float32)
    if layout == "columns":  # A^T stored: unit stride down a column (the backward's U^T)
        a = np.ascontiguousarray(a.T).T
    b = rng.standard_normal((K, n), dtype=np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    c = np.full((m, n), np.nan, np.float32)
    assert G.gemm(a, b, c) is c
    # float32 accumulation: within a few ulps of the sum's magnitude, and no worse than BLAS
    assert _err(c, ref) < 4e-7 * max(1.0, np.sqrt(K) / 4)
    assert _err(c, ref) <= 2 * _blas_err(a, b, ref) + 1e-7


def test_gemm_accumulates_into_out():
    rng = np.random.default_rng(0)
    for m, K, n in SHAPES:
        a = rng.standard_normal((m, K), dtype=np.float32)
        b = rng.standard_normal((K, n), dtype=np.float32)
        c0 = rng.standard_normal((m, n), dtype=np.float32)
        c = c0.copy()
        G.gemm(a, b, c, accumulate=True)
        ref = c0.astype(np.float64) + a.astype(np.float64) @ b
        assert _err(c, ref) < 1e-6, (m, K, n)


def test_gemm_writes_nothing_outside_out():
    rng = np.random.default_rng(1)
    big = np.full((30, 90), 7.0, np.float32)
    a = rng.standard_normal((13, 50), dtype=np.float32)
    b = rng.standard_normal((50, 37), dtype=np.float32)
    view = big[3:16, 5:42]  # rows 90 floats apart, 37 columns: masked tail stores
    G.gemm(a, b, view)
    outside = np.ones(big.shape, bool)
    outside[3:16, 5:42] = False
    assert (big[outside] == 7.0).all()
    assert _err(view, a.astype(np.float64) @ b) < 1e-6


def test_gemm_batched_strided_views():
    """The Winograd shape: 36 products over padded rows of one buffer, A transposed."""
    rng = np.random.default_rng(2)
    nb, cout, cin, T, pad = 36, 24, 40, 70, 16
    U = rng.standard_normal((nb, cout, cin), dtype=np.float32)
    V = rng.standard_normal((nb, cin * T + pad), dtype=np.float32)
    M = np.full((nb, cout * T + pad), np.nan, np.float32)
    Vg = as_strided(V, (nb, cin, T), (V.strides[0], T * 4, 4))
    Mg = as_strided(M, (nb, cout, T), (M.strides[0], T * 4, 4))
    G.gemm(U, Vg, Mg)
    assert _err(Mg, U.astype(np.float64) @ Vg) < 1e-6
    assert np.isnan(M[:, cout * T :]).all()  # the row padding is not touched
    # backward: U^T @ V with U read in place
    Mb = np.empty((nb, cin, T), np.float32)
    Vb = rng.standard_normal((nb, cout, T), dtype=np.float32)
    G.gemm(U.transpose(0, 2, 1), Vb, Mb)
    assert _err(Mb, U.transpose(0, 2, 1).astype(np.float64) @ Vb) < 1e-6


def test_gemm_is_more_accurate_in_two_levels():
    """Long sums of positive terms (im2col of post-ReLU maps): the error stays at BLAS's level."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 4608), dtype=np.float32) * 0.05
    b = np.maximum(rng.standard_normal((4608, 40), dtype=np.float32), 0)
    ref = a.astype(np.float64) @ b
    c = np.empty((64, 40), np.float32)
    G.gemm(a, b, c)
    assert _err(c, ref) <= 1.5 * _blas_err(a, b, ref)


def test_gemm_rejects_what_it_cannot_do_and_matmul_falls_back():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        G.gemm(a, b, np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="unit-stride"):
        G.gemm(a, np.ones((5, 3), np.float32).T, np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="unit-stride"):
        G.gemm(a.astype(np.float64), b, np.empty((4, 5), np.float32))
    # matmul takes anything numpy takes
    out = np.empty((4, 5))
    G.matmul(a.astype(np.float64), b.astype(np.float64), out)
    assert (out == 3).all()
    out32 = np.empty((4, 5), np.float32)
    G.matmul(a, np.ones((5, 3), np.float32).T, out32)
    assert (out32 == 3).all()


def test_blas_switch(monkeypatch):
    monkeypatch.setenv("MINIVGG_GEMM", "blas")
    assert not G.available()


@pytest.mark.parametrize("C, K", [(1, 1), (3, 17), (7, 33), (13, 100), (25, 1030), (64, 4100)])
def test_gram_matches_float64_and_is_symmetric(C, K):
    from minivgg.cpu.threads import gram

    rng = np.random.default_rng(C * 7 + K)
    # two images, rows 8 floats apart from the next row's start beyond K: a strided view
    F = (np.abs(rng.standard_normal((2, C, K + 8))) + 0.01).astype(np.float32)[:, :, :K]
    G = gram(F)
    ref = F.astype(np.float64) @ F.transpose(0, 2, 1).astype(np.float64)
    assert G.shape == (2, C, C) and G.dtype == np.float32
    assert (G == G.transpose(0, 2, 1)).all()
    assert _err(G, ref) < 4e-7
    assert _err(G, ref) <= 2 * _err(np.matmul(F, F.transpose(0, 2, 1)), ref) + 1e-7


def test_gram_kernel_block_tails():
    """Every row-block / column-block remainder of the 4 x 6 kernel, one thread and K a
    multiple of 16 plus a masked tail, against the float64 product."""
    rng = np.random.default_rng(5)
    for C in range(1, 15):
        F = rng.standard_normal((C, 37), dtype=np.float32)
        out = np.full((C, C), np.nan, np.float32)
        G._gram_blocks(F, out, 0, 1)
        G._mirror(out)
        assert _err(out, F.astype(np.float64) @ F.T) < 4e-7, C

