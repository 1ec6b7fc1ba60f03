"""Single-precision GEMM with an AVX-512 register-blocked micro-kernel, written as LLVM IR.

    C (m x n) = A (m x K) @ B (K x n)        [or C += A @ B]

A may have any strides (so U or U^T of the Winograd weights, W2 or W2^T of im2col, are
read in place); B and C need unit stride along a row (n). The work is the classic
Goto/BLIS loop nest: K in chunks of KC (each chunk after the first adds into C), n in
chunks of NC (a K-chunk x NC block of B stays in L2), then blocks of MR = 8 rows of A
(MR x KC, in L1) times panels of NR = 48 columns of B. The micro-kernel keeps the 8 x 48
block of C in 24 zmm registers; each step k loads one row of the B panel (three vectors),
broadcasts the 8 A values of column k and does 24 fused multiply-adds.

Why our own: numpy's OpenBLAS may be pinned to its AVX2 kernels (the environment sets
OPENBLAS_CORETYPE on some processors), which run at ~120 GFLOP/s per core here; this
kernel runs at ~240 (``scripts/bench.py --gemm``). numba cannot keep a 24-vector
accumulator block in registers from Python-level code (its arrays live in memory), so the
kernel is emitted directly with llvmlite as a numba intrinsic: plain IR vectors of 16
floats and ``llvm.fma``, which LLVM allocates to registers and folds the broadcasts into
the FMAs. Columns past the last full 16 go through masked loads and stores, rows past the
last full 8 through 4-, 2- and 1-row variants, so any shape works.

Each k accumulates in sequence into one register per output, the same order as a
textbook dot product (BLAS differs only in where it splits K): the results agree with
numpy's to float32 rounding (tests/test_gemm.py).

Used only where the processor has AVX-512 (``available()``); elsewhere numpy's BLAS.
``MINIVGG_GEMM=blas`` forces numpy's BLAS.
"""

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # floats per zmm register
MR = 8  # rows of the register block
NV = 3  # vectors per row of the register block
NR = NV * LANES  # 48 columns
# Blocking, measured over the shapes of VGG's layers (scripts/bench.py --gemm): an MR x KC
# block of A is 8 KiB (L1), a KC x NC block of B 480 KiB (well inside the 2 MiB L2).
KC = 256
NC = 480
# K steps summed in registers before the partial sums are added into C: summing K terms
# in two levels (KB, then K / KB) instead of one run keeps the float32 error near BLAS's
# (tests/test_gemm.py) for ~3% of the speed.
KB = 64


def _host_has_avx512():
    import llvmlite.binding as ll

    try:
        return bool(ll.get_host_cpu_features().get("avx512f"))
    except RuntimeError:  # LLVM cannot read this host's features: assume none
        return False


_AVAILABLE = None


def available():
    """True when this kernel is used: AVX-512 present and MINIVGG_GEMM is not ``blas``."""
    global _AVAILABLE
    if os.environ.get("MINIVGG_GEMM", "").lower() == "blas":
        return False
    if _AVAILABLE is None:
        _AVAILABLE = _host_has_avx512()
    return _AVAILABLE


# ---------------------------------------------------------------- the micro-kernel (LLVM IR)
@intrinsic
def _micro(typingctx, mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, K, tail, accumulate):
    """C[co + i*ldc + j] (+)= sum_k A[ao + i*sai + k*sak] * B[bo + k*ldb + j] for i < mr and
    j < 16*nv, the last vector's columns limited to the first ``tail`` (1..16) of its 16."""
    if not isinstance(mr, types.IntegerLiteral) or not isinstance(nv, types.IntegerLiteral):
        return None
    MRv, NVv = mr.literal_value, nv.literal_value
    sig = types.void(mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, K, tail, accumulate)

    def codegen(context, builder, signature, args):
        _, _, A_, ao_, sai_, sak_, B_, bo_, ldb_, C_, co_, ldc_, K_, tail_, acc_ = args
        f32 = ir.FloatType()
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        vec = ir.VectorType(f32, LANES)
        mvec = ir.VectorType(ir.IntType(1), LANES)

        def data(i, v):
            return cgutils.create_struct_proxy(signature.args[i])(context, builder, value=v).data

        def i64v(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        ao_, sai_, sak_, bo_, ldb_, co_, ldc_, K_, tail_ = map(i64v, (ao_, sai_, sak_, bo_, ldb_, co_, ldc_, K_, tail_))
        ap = builder.gep(data(2, A_), [ao_])
        bp = builder.gep(data(6, B_), [bo_])
        cp = builder.gep(data(9, C_), [co_])
        mod = builder.module
        fma = cgutils.get_or_insert_function(mod, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fma.v16f32")
        mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vec, [vec.as_pointer(), i32, mvec, vec]), "llvm.masked.load.v16f32.p0"
        )
        mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mvec]), "llvm.masked.store.v16f32.p0"
        )
        lane = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
        tails = builder.insert_element(ir.Constant(ir.VectorType(i64, LANES), ir.Undefined), tail_, ir.Constant(i32, 0))
        tails = builder.shuffle_vector(tails, tails, ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))
        mask = builder.icmp_unsigned("<", lane, tails)
        zero = ir.Constant(vec, [0.0] * LANES)
        undef = ir.Constant(vec, ir.Undefined)
        splat0 = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

        def vptr(base, off):
            return builder.bitcast(builder.gep(base, [off]), vec.as_pointer())

        def load(base, off, last):
            p = vptr(base, off)
            if last:
                return builder.call(mload, [p, ir.Constant(i32, 4), mask, zero])
            return builder.load(p, align=4)

        def store(v, base, off, last):
            p = vptr(base, off)
            if last:
                builder.call(mstore, [v, p, ir.Constant(i32, 4), mask])
            else:
                builder.store(v, p, align=4)

        crow = [builder.gep(cp, [builder.mul(ir.Constant(i64, i), ldc_)]) for i in range(MRv)]
        arow = [builder.gep(ap, [builder.mul(ir.Constant(i64, i), sai_)]) for i in range(MRv)]
        overwrite = builder.icmp_unsigned("==", acc_, ir.Constant(acc_.type, 0))
        accs = [[cgutils.alloca_once(builder, vec) for v in range(NVv)] for i in range(MRv)]
        kb = ir.Constant(i64, KB)
        nchunks = builder.udiv(builder.add(K_, ir.Constant(i64, KB - 1)), kb)
        with cgutils.for_range(builder, nchunks) as chunk:
            k0 = builder.mul(chunk.index, kb)
            klen = builder.sub(K_, k0)
            klen = builder.select(builder.icmp_unsigned("<", klen, kb), klen, kb)
            for i in range(MRv):
                for v in range(NVv):
                    builder.store(zero, accs[i][v])
            with cgutils.for_range(builder, klen) as loop:
                k = builder.add(k0, loop.index)
                bk = builder.gep(bp, [builder.mul(k, ldb_)])
                bs = [load(bk, ir.Constant(i64, LANES * v), v == NVv - 1) for v in range(NVv)]
                ka = builder.mul(k, sak_)
                for i in range(MRv):
                    a = builder.load(builder.gep(arow[i], [ka]))
                    av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)), undef, splat0)
                    for v in range(NVv):
                        builder.store(builder.call(fma, [av, bs[v], builder.load(accs[i][v])]), accs[i][v])
            # C is the second-level accumulator: the first chunk of a call that does not
            # accumulate overwrites it, every other chunk adds its partial sums
            first = builder.and_(overwrite, builder.icmp_unsigned("==", chunk.index, ir.Constant(i64, 0)))
            for i in range(MRv):
                for v in range(NVv):
                    last = v == NVv - 1
                    off = ir.Constant(i64, LANES * v)
                    part = builder.load(accs[i][v])
                    total = builder.fadd(load(crow[i], off, last), part)
                    store(builder.select(first, part, total), crow[i], off, last)
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------- the loops around it
@njit(nogil=True, cache=True)
def _panels(mr, A, ao, sai, sak, B, bo, ldb, C, co, ldc, kc, nc, acc):
    """mr rows of C (mr a compile-time 8, 4, 2 or 1) over nc columns, in NR-wide panels."""
    j = 0
    while j + NR <= nc:
        _micro(mr, 3, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, LANES, acc)
        j += NR
    w = nc - j
    if w > 2 * LANES:
        _micro(mr, 3, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, w - 2 * LANES, acc)
    elif w > LANES:
        _micro(mr, 2, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, w - LANES, acc)
    elif w > 0:
        _micro(mr, 1, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, w, acc)


@njit(nogil=True, cache=True)
def _gemm_flat(A, ao, sai, sak, B, bo, ldb, C, co, ldc, m, n, K, accumulate):
    """The loop nest on flat arrays with element offsets and strides (see the docstring)."""
    for k0 in range(0, K, KC):
        kc = min(KC, K - k0)
        acc = accumulate or k0 > 0
        for j0 in range(0, n, NC):
            nc = min(NC, n - j0)
            i = 0
            while i < m:
                a_off = ao + i * sai + k0 * sak
                b_off = bo + k0 * ldb + j0
                c_off = co + i * ldc + j0
                r = m - i
                if r >= 8:
                    _panels(8, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 8
                elif r >= 4:
                    _panels(4, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 4
                elif r >= 2:
                    _panels(2, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 2
                else:
                    _panels(1, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 1


@njit(nogil=True, cache=True)
def _gemm2(a, b, c, accumulate):
    m, K = a.shape
    _gemm_flat(a, 0, a.strides[0] // 4, a.strides[1] // 4, b, 0, b.strides[0] // 4, c, 0, c.strides[0] // 4,
               m, b.shape[1], K, accumulate)


@njit(nogil=True, cache=True)
def _gemm3(a, b, c, accumulate):
    nb, m, K = a.shape
    sab, sai, sak = a.strides[0] // 4, a.strides[1] // 4, a.strides[2] // 4
    sbb, ldb = b.strides[0] // 4, b.strides[1] // 4
    scb, ldc = c.strides[0] // 4, c.strides[1] // 4
    for p in range(nb):
        _gemm_flat(a, p * sab, sai, sak, b, p * sbb, ldb, c, p * scb, ldc, m, b.shape[2], K, accumulate)


def usable(a, b, out):
    """Whether gemm can run on these arrays: float32, whole-element strides, and b's and
    out's rows unit-stride."""
    if a.dtype != np.float32 or b.dtype != np.float32 or out.dtype != np.float32:
        return False
    if b.shape[-1] > 1 and b.strides[-1] != 4 or out.shape[-1] > 1 and out.strides[-1] != 4:
        return False
    return all(s % 4 == 0 for x in (a, b, out) for s in x.strides)


def gemm(a, b, out, accumulate=False):
    """out = a @ b (out += a @ b when accumulate), 2-d (m, K) @ (K, n) or stacked 3-d.

    float32 arrays; b and out need unit stride along their last axis; a any strides.
    Returns out. Raises ValueError when the arrays do not fit (see ``usable``).
    """
    if a.ndim != b.ndim or a.ndim != out.ndim or a.ndim not in (2, 3):
        raise ValueError("gemm: a, b and out must all be 2-d or all 3-d")
    if a.shape[-1] != b.shape[-2] or out.shape[-2:] != (a.shape[-2], b.shape[-1]):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    if a.ndim == 3 and not (a.shape[0] == b.shape[0] == out.shape[0]):
        raise ValueError("gemm: batch sizes differ")
    if not usable(a, b, out):
        raise ValueError("gemm: needs float32 arrays with unit-stride rows in b and out")
    if a.ndim == 2:
        _gemm2(a, b, out, bool(accumulate))
    else:
        _gemm3(a, b, out, bool(accumulate))
    return out


def matmul(a, b, out):
    """out = a @ b through ``gemm`` where it is available and fits, else numpy's matmul."""
    if available() and usable(a, b, out) and a.ndim == b.ndim == out.ndim and a.ndim in (2, 3):
        return gemm(a, b, out)
    return np.matmul(a, b, out=out)
