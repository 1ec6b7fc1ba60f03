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


# ---------------------------------------------------------------- the micro-kernels (LLVM IR)
class _IR:
    """The pieces both kernels emit: vector types, fma, (masked) vector loads and stores."""

    def __init__(self, context, builder, signature, args, tail):
        self.b = builder
        self.context, self.signature, self.args = context, signature, args
        self.i32, self.i64 = ir.IntType(32), ir.IntType(64)
        self.vec = ir.VectorType(ir.FloatType(), LANES)
        vec, i32, b = self.vec, self.i32, builder
        mvec = ir.VectorType(ir.IntType(1), LANES)
        mod = b.module
        self.fma = cgutils.get_or_insert_function(mod, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fma.v16f32")
        self.mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vec, [vec.as_pointer(), i32, mvec, vec]), "llvm.masked.load.v16f32.p0"
        )
        self.mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mvec]), "llvm.masked.store.v16f32.p0"
        )
        self.zero = ir.Constant(vec, [0.0] * LANES)
        lane = ir.Constant(ir.VectorType(self.i64, LANES), list(range(LANES)))
        self.mask = b.icmp_unsigned("<", lane, self.splat(self.int(tail), ir.VectorType(self.i64, LANES)))

    def int(self, v):
        """v as an i64 (numba's ints may be narrower)."""
        return self.b.sext(v, self.i64) if v.type.width < 64 else v

    def const(self, n):
        return ir.Constant(self.i64, n)

    def splat(self, x, vt=None):
        vt = vt or self.vec
        b = self.b
        v = b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(self.i32, 0))
        return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(self.i32, LANES), [0] * LANES))

    def pointer(self, i, off):
        """Address of element ``off`` of array argument i."""
        data = cgutils.create_struct_proxy(self.signature.args[i])(self.context, self.b, value=self.args[i]).data
        return self.b.gep(data, [self.int(off)])

    def at(self, base, off):
        return self.b.gep(base, [off if not isinstance(off, int) else self.const(off)])

    def load(self, base, off, masked=False):
        p = self.b.bitcast(self.at(base, off), self.vec.as_pointer())
        if masked:
            return self.b.call(self.mload, [p, ir.Constant(self.i32, 4), self.mask, self.zero])
        return self.b.load(p, align=4)

    def store(self, v, base, off, masked=False):
        p = self.b.bitcast(self.at(base, off), self.vec.as_pointer())
        if masked:
            self.b.call(self.mstore, [v, p, ir.Constant(self.i32, 4), self.mask])
        else:
            self.b.store(v, p, align=4)


def _literals(*xs):
    return all(isinstance(x, types.IntegerLiteral) for x in xs)


@intrinsic
def _micro(typingctx, mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, K, tail, accumulate):
    """C[co + i*ldc + j] (+)= sum_k A[ao + i*sai + k*sak] * B[bo + k*ldb + j] for i < mr and
    j < 16*nv, the last vector's columns limited to the first ``tail`` (1..16) of its 16."""
    if not _literals(mr, nv):
        return None
    MRv, NVv = mr.literal_value, nv.literal_value
    sig = types.void(mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, K, tail, accumulate)

    def codegen(context, builder, signature, args):
        _, _, _, _, sai_, sak_, _, _, ldb_, _, _, ldc_, K_, tail_, acc_ = args
        e = _IR(context, builder, signature, args, tail_)
        sai_, sak_, ldb_, ldc_, K_ = map(e.int, (sai_, sak_, ldb_, ldc_, K_))
        ap, bp, cp = e.pointer(2, args[3]), e.pointer(6, args[7]), e.pointer(9, args[10])
        crow = [e.at(cp, builder.mul(e.const(i), ldc_)) for i in range(MRv)]
        arow = [e.at(ap, builder.mul(e.const(i), sai_)) for i in range(MRv)]
        overwrite = builder.icmp_unsigned("==", acc_, ir.Constant(acc_.type, 0))
        accs = [[cgutils.alloca_once(builder, e.vec) for v in range(NVv)] for i in range(MRv)]
        kb = e.const(KB)
        nchunks = builder.udiv(builder.add(K_, e.const(KB - 1)), kb)
        with cgutils.for_range(builder, nchunks) as chunk:
            k0 = builder.mul(chunk.index, kb)
            klen = builder.sub(K_, k0)
            klen = builder.select(builder.icmp_unsigned("<", klen, kb), klen, kb)
            for i in range(MRv):
                for v in range(NVv):
                    builder.store(e.zero, accs[i][v])
            with cgutils.for_range(builder, klen) as loop:
                k = builder.add(k0, loop.index)
                bk = e.at(bp, builder.mul(k, ldb_))
                bs = [e.load(bk, LANES * v, v == NVv - 1) for v in range(NVv)]
                ka = builder.mul(k, sak_)
                for i in range(MRv):
                    av = e.splat(builder.load(e.at(arow[i], ka)))
                    for v in range(NVv):
                        builder.store(builder.call(e.fma, [av, bs[v], builder.load(accs[i][v])]), accs[i][v])
            # C is the second-level accumulator: the first chunk of a call that does not
            # accumulate overwrites it, every other chunk adds its partial sums
            first = builder.and_(overwrite, builder.icmp_unsigned("==", chunk.index, e.const(0)))
            for i in range(MRv):
                for v in range(NVv):
                    last = v == NVv - 1
                    part = builder.load(accs[i][v])
                    total = builder.fadd(e.load(crow[i], LANES * v, last), part)
                    e.store(builder.select(first, part, total), crow[i], LANES * v, last)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _micro_nt(typingctx, mr, nr, A, ao, lda, B, bo, ldb, C, co, ldc, K, accumulate):
    """C[co + i*ldc + j] (+)= sum_{k<K} A[ao + i*lda + k] * B[bo + j*ldb + k], i < mr, j < nr:
    dot products of rows (the Gram matrix F F^T). Each of the mr x nr outputs has a vector
    of 16 partial sums over k (k = 16q + lane), summed across its lanes at the end."""
    if not _literals(mr, nr):
        return None
    MRv, NRv = mr.literal_value, nr.literal_value
    sig = types.void(mr, nr, A, ao, lda, B, bo, ldb, C, co, ldc, K, accumulate)

    def codegen(context, builder, signature, args):
        _, _, _, _, lda_, _, _, ldb_, _, _, ldc_, K_, acc_ = args
        K_ = builder.sext(K_, ir.IntType(64)) if K_.type.width < 64 else K_
        tail = builder.urem(K_, ir.Constant(K_.type, LANES))
        e = _IR(context, builder, signature, args, tail)
        lda_, ldb_, ldc_ = map(e.int, (lda_, ldb_, ldc_))
        ap, bp, cp = e.pointer(2, args[3]), e.pointer(5, args[6]), e.pointer(8, args[9])
        arow = [e.at(ap, builder.mul(e.const(i), lda_)) for i in range(MRv)]
        brow = [e.at(bp, builder.mul(e.const(j), ldb_)) for j in range(NRv)]
        accs = [[cgutils.alloca_once_value(builder, e.zero) for j in range(NRv)] for i in range(MRv)]

        def step(k, masked):
            avs = [e.load(arow[i], k, masked) for i in range(MRv)]
            for j in range(NRv):
                bv = e.load(brow[j], k, masked)
                for i in range(MRv):
                    builder.store(builder.call(e.fma, [avs[i], bv, builder.load(accs[i][j])]), accs[i][j])

        nfull = builder.udiv(K_, e.const(LANES))
        with cgutils.for_range(builder, nfull) as loop:
            step(builder.mul(loop.index, e.const(LANES)), False)
        with builder.if_then(builder.icmp_unsigned("!=", tail, e.const(0))):
            step(builder.mul(nfull, e.const(LANES)), True)
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), e.vec]), "llvm.vector.reduce.fadd.v16f32"
        )
        add = builder.icmp_unsigned("!=", acc_, ir.Constant(acc_.type, 0))
        for i in range(MRv):
            crow = e.at(cp, builder.mul(e.const(i), ldc_))
            for j in range(NRv):
                c = e.at(crow, j)
                start = builder.select(add, builder.load(c), ir.Constant(ir.FloatType(), 0.0))
                builder.store(builder.call(reduce, [start, builder.load(accs[i][j])], fastmath=("reassoc",)), c)
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


# Gram matrices: 4 x 6 blocks of dot products (24 zmm accumulators, 4 + 1 for the
# operands), upper triangle only, the lower mirrored. K goes in chunks of about 1 MiB of F
# (C x kc floats in L2), each chunk's lane sums added into G.
MRG, NRG = 4, 6
GRAM_CHUNK_FLOATS = 1 << 18


@njit(nogil=True, cache=True)
def _nt_row(mr, F, i, k0, ldf, G, ldg, j0, n, kc, acc):
    """G[i:i+mr, j0:n] (+)= F[i:i+mr, k0:k0+kc] . F[j0:n, k0:k0+kc] (mr a compile-time 4, 2
    or 1), in blocks of NRG columns and then 3-, 2- and 1-column pieces."""
    ao = i * ldf + k0
    co = i * ldg
    j = j0
    while j + NRG <= n:
        _micro_nt(mr, 6, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)
        j += NRG
    r = n - j
    if r >= 3:
        _micro_nt(mr, 3, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)
        j += 3
        r -= 3
    if r >= 2:
        _micro_nt(mr, 2, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)
        j += 2
        r -= 2
    if r >= 1:
        _micro_nt(mr, 1, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)


@njit(nogil=True, cache=True)
def _gram_blocks(F, G, b0, bstep):
    """G[i, j] = F[i] . F[j] for j >= the first row of i's block, over the row blocks
    b0, b0 + bstep, ... (blocks of MRG rows): one thread's interleaved share."""
    C, K = F.shape
    ldf = F.strides[0] // 4
    ldg = G.strides[0] // 4
    kc = max(512, min(4096, (GRAM_CHUNK_FLOATS // C) // 16 * 16))
    nblocks = (C + MRG - 1) // MRG
    for k0 in range(0, K, kc):
        klen = min(kc, K - k0)
        acc = k0 > 0
        for ib in range(b0, nblocks, bstep):
            i = ib * MRG
            # rows i..i+3 in 4-, 2- and 1-row pieces; each starts its columns at i
            while i < min(C, (ib + 1) * MRG):
                r = min(C, (ib + 1) * MRG) - i
                if r >= 4:
                    _nt_row(4, F, i, k0, ldf, G, ldg, ib * MRG, C, klen, acc)
                    i += 4
                elif r >= 2:
                    _nt_row(2, F, i, k0, ldf, G, ldg, ib * MRG, C, klen, acc)
                    i += 2
                else:
                    _nt_row(1, F, i, k0, ldf, G, ldg, ib * MRG, C, klen, acc)
                    i += 1


@njit(nogil=True, cache=True)
def _mirror(G):
    """G[i, j] = G[j, i] below the row blocks' diagonal blocks (copied, so G is exactly symmetric)."""
    C = G.shape[0]
    for i in range(C):
        for j in range(i):
            G[i, j] = G[j, i]


def unit_rows(x):
    """float32 with whole-element strides and unit stride along the last axis: what the
    kernels need of B, C and (for the Gram matrices) F."""
    return x.dtype == np.float32 and (x.shape[-1] <= 1 or x.strides[-1] == 4) and all(s % 4 == 0 for s in x.strides)


def usable(a, b, out):
    """Whether gemm can run on these arrays: float32, whole-element strides, and b's and
    out's rows unit-stride (a: any strides)."""
    return a.dtype == np.float32 and all(s % 4 == 0 for s in a.strides) and unit_rows(b) and unit_rows(out)


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


def matmul(a, b, out, accumulate=False):
    """out = a @ b (out += a @ b when accumulate) through ``gemm`` where it is available and
    takes the arrays, else numpy's matmul (which also gives numpy's error for arrays that do
    not match)."""
    if available():
        try:
            return gemm(a, b, out, accumulate)
        except ValueError:  # gemm checks before it writes: out is untouched
            pass
    if accumulate:
        out += np.matmul(a, b)
        return out
    return np.matmul(a, b, out=out)
