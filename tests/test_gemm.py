"""minivgg/cpu/fast/gemm.py: the register-blocked GEMM kernels against a float64 product, on
every ISA level this host supports (minivgg/cpu/fast/isa.py; the others are skipped, saying
why: run under ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=`` to be an AVX2-only host).

Shapes cover every remainder the loop nests have (rows past the blocks of 8 or 6, 4, 2;
columns past the 48- or 16-wide panels and past the last full vector; K past the register
chunk and the cache chunk), A in any layout, batched views with gaps between rows,
accumulation, and that nothing outside C is written.

The bounds. u = 2^-24 = 6.0e-8 (float32). Each output sums K products in two levels
(KB = 64 in a register, then the ceil(K/KB) partial sums in C: both levels' kernels, the
same order), so a product meets at most n = KB + ceil(K/KB) roundings. With independent
standard-normal operands the rounding errors are independent and of zero mean: the error
of an output is about u sqrt(n) times the size of its partial sums (~sqrt(K)), and max|C|
over the outputs is at least ~2 sqrt(K): max error / max|C| ~ u sqrt(n) / 2, 1.7e-7 at
K = 520 (n = 73). The test takes 4e-7 (6.7 u), growing as sqrt(K) / 4 past K = 16 for the
few short runs of large terms, and no more than twice numpy BLAS's own error (+ 1e-7) on
the same arrays: today's bounds, on every level.
"""


import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from conftest import isa_levels
from minivgg.cpu.fast import gemm as G
from minivgg.cpu.fast import isa




KERNEL_LEVELS = isa_levels(["avx2", "avx512"])  # the levels with a kernel of ours
ALL_LEVELS = isa_levels(["blas", "avx2", "avx512"])



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
@pytest.mark.parametrize("level", KERNEL_LEVELS, indirect=True)
def test_gemm_matches_float64(level, m, K, n, layout):
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


@pytest.mark.parametrize("level", KERNEL_LEVELS, indirect=True)
def test_gemm_accumulates_into_out(level):
    rng = np.random.default_rng(0)
    for m, K, n in SHAPES:
        a = rng.standard_normal((m, K), dtype=np.float32)
        b = rng.standard_normal((K, n), dtype=np.float32)
        c0 = rng.standard_normal((m, n), dtype=np.float32)
        c = c0.copy()
        G.gemm(a, b, c, accumulate=True)
        ref = c0.astype(np.float64) + a.astype(np.float64) @ b
        assert _err(c, ref) < 1e-6, (m, K, n)


@pytest.mark.parametrize("level", KERNEL_LEVELS, indirect=True)
def test_gemm_writes_nothing_outside_out(level):
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


@pytest.mark.parametrize("level", KERNEL_LEVELS, indirect=True)
def test_gemm_batched_strided_views(level):
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


@pytest.mark.parametrize("level", KERNEL_LEVELS, indirect=True)
def test_gemm_is_more_accurate_in_two_levels(level):
    """Long sums of positive terms (im2col of post-ReLU maps): the error stays at BLAS's level."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 4608), dtype=np.float32) * 0.05
    b = np.maximum(rng.standard_normal((4608, 40), dtype=np.float32), 0)
    ref = a.astype(np.float64) @ b
    c = np.empty((64, 40), np.float32)
    G.gemm(a, b, c)
    assert _err(c, ref) <= 1.5 * _blas_err(a, b, ref)


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
def test_matmul_on_each_level(level):
    """gemm.matmul: our kernel of the level, or numpy's at level blas, the same products."""
    rng = np.random.default_rng(6)
    for m, K, n in SHAPES:
        a = rng.standard_normal((m, K), dtype=np.float32)
        b = rng.standard_normal((K, n), dtype=np.float32)
        ref = a.astype(np.float64) @ b
        c = G.matmul(a, b, np.empty((m, n), np.float32))
        assert _err(c, ref) < 4e-7 * max(1.0, np.sqrt(K) / 4)


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


def test_level_switches(monkeypatch):
    """MINIVGG_ISA picks a level at or below the host's; the products are ours at avx512 and
    numpy's at avx2 and blas unless MINIVGG_GEMM says ours or blas; a level above the
    host's, an unknown one, or our kernel at level blas is a MiniVGGError naming the
    variable; isa.forced overrides the environment inside its block only."""
    from minivgg.errors import MiniVGGError

    monkeypatch.delenv("MINIVGG_ISA", raising=False)
    monkeypatch.delenv("MINIVGG_GEMM", raising=False)
    assert isa.level() == isa.host_level()
    for name in isa.supported():
        monkeypatch.setenv("MINIVGG_ISA", name)
        assert isa.level() == name and isa.gemm_choice() == isa.GEMM_AT_LEVEL[name]
        assert G.kernel() is (G.KERNELS[name] if isa.GEMM_AT_LEVEL[name] == "ours" else None)
        monkeypatch.setenv("MINIVGG_GEMM", "blas")
        assert isa.gemm_choice() == "blas" and not G.available() and G.kernel() is None
        if name != "blas":
            monkeypatch.setenv("MINIVGG_GEMM", "ours")
            assert G.kernel() is G.KERNELS[name]
        else:
            monkeypatch.setenv("MINIVGG_GEMM", "ours")
            with pytest.raises(MiniVGGError, match="MINIVGG_GEMM=ours: the ISA level is blas"):
                isa.gemm_choice()
        monkeypatch.delenv("MINIVGG_GEMM")
        with isa.forced("blas"):
            assert isa.level() == "blas" and G.kernel() is None
        assert isa.level() == name
    monkeypatch.setenv("MINIVGG_GEMM", "fast")
    with pytest.raises(MiniVGGError, match="MINIVGG_GEMM=fast: unknown"):
        isa.gemm_choice()
    monkeypatch.delenv("MINIVGG_GEMM")
    monkeypatch.setenv("MINIVGG_ISA", "sse9")
    with pytest.raises(MiniVGGError, match="MINIVGG_ISA=sse9.*avx512, avx2, blas"):
        isa.level()
    unsupported = [n for n in isa.LEVELS if n not in isa.supported()]
    for name in unsupported:
        monkeypatch.setenv("MINIVGG_ISA", name)
        with pytest.raises(MiniVGGError, match=f"MINIVGG_ISA={name}: this host's level is {isa.host_level()}"):
            isa.level()
        with pytest.raises(MiniVGGError, match="isa.forced"):
            with isa.forced(name):
                pass


def test_level_of_named_targets():
    """The level of an LLVM target is read from the code LLVM makes for it: a Haswell (what
    ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=`` gives numba) is avx2, a Skylake server
    avx512, a Nehalem (SSE only) blas. x86-64 LLVM only: elsewhere the names mean nothing."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 CPU names")
    assert isa._level_of_target("haswell", "") == "avx2"
    assert isa._level_of_target("skylake-avx512", "") == "avx512"
    assert isa._level_of_target("nehalem", "") == "blas"
    assert isa._level_of_target("haswell", "+avx512f") == "avx512"  # host features win, as in numba


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
@pytest.mark.parametrize("C, K", [(1, 1), (3, 17), (7, 33), (13, 100), (25, 1030), (64, 4100), (130, 300)])
def test_gram_matches_float64_and_is_symmetric(level, C, K):
    """threads.gram on each level: exactly symmetric (one triangle computed, the other
    copied), within the bounds of the module docstring (Gram: F >= 0.01, no cancellation,
    each entry's sum split over the lanes and the K chunks, or BLAS's own order) and no worse
    than twice numpy's F F^T."""
    from minivgg.cpu.fast.threads import gram

    rng = np.random.default_rng(C * 7 + K)
    # two images, rows 8 floats apart from the next row's start beyond K: a strided view
    F = (np.abs(rng.standard_normal((2, C, K + 8))) + 0.01).astype(np.float32)[:, :, :K]
    G = gram(F)
    ref = F.astype(np.float64) @ F.transpose(0, 2, 1).astype(np.float64)
    assert G.shape == (2, C, C) and G.dtype == np.float32
    assert (G == G.transpose(0, 2, 1)).all()
    if level != "blas":  # our kernels' bound; at level blas the sums are numpy's own (8.7e-7 at 130 x 300)
        assert _err(G, ref) < 4e-7
    assert _err(G, ref) <= 2 * _err(np.matmul(F, F.transpose(0, 2, 1)), ref) + 1e-7


@pytest.mark.parametrize("level", KERNEL_LEVELS, indirect=True)
def test_gram_kernel_block_tails(level):
    """Every row-block / column-block remainder of the level's kernel (4 x 6 or 3 x 4), one
    thread and K a multiple of the lanes plus a masked tail, against the float64 product."""
    rng = np.random.default_rng(5)
    for C in range(1, 15):
        F = rng.standard_normal((C, 37), dtype=np.float32)
        out = np.full((C, C), np.nan, np.float32)
        G._gram_blocks(G.kernel().lanes, F, out, 0, 1)
        G._mirror(out)
        assert _err(out, F.astype(np.float64) @ F.T) < 4e-7, C

