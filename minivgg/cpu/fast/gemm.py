"""Single-precision GEMM with register-blocked micro-kernels (AVX-512 and AVX2), written as LLVM IR.

    C (m x n) = A (m x K) @ B (K x n)        [or C += A @ B]

A may have any strides (so U or U^T of the Winograd weights, W2 or W2^T of im2col, are
read in place); B and C need unit stride along a row (n). The work is the classic
Goto/BLIS loop nest: K in chunks of KC (each chunk after the first adds into C), n in
chunks of NC (a K-chunk x NC block of B stays in L2), then blocks of MR rows of A (MR x
KC, in L1) times panels of NR columns of B. The micro-kernel keeps the MR x NR block of C
in vector registers; each step k loads one row of the B panel (NV vectors), broadcasts
the MR values of A's column k and does MR x NV fused multiply-adds.

One generator, two shapes (``Kernel``, chosen by isa.py's level): AVX-512, 16-float
vectors, 8 x 48 (24 zmm accumulators of 32); AVX2, 8-float vectors, 6 x 16 (12 ymm
accumulators of 16). numba cannot keep such a block in registers from Python-level code
(its arrays live in memory), so the kernel is emitted directly with llvmlite as a numba
intrinsic: plain IR vectors and ``llvm.fma``, which LLVM allocates to registers (folding
the broadcasts into the FMAs where the target can) and lowers on any target. Columns past
the last full vector go through masked loads and stores, rows past the last full block
through 4-, 2- and 1-row variants, so any shape works.

Each k accumulates in sequence into one register per output, in two levels (KB steps in
registers, then into C), the same order on both levels (only the vector width differs,
and it does not touch the order of any one output's sum). Reference: ``numpy.matmul``
(and a float64 product); the results agree with it to float32 rounding on every ISA
level the host has (tests/test_gemm.py).

Why our own: numpy's OpenBLAS may be pinned to its AVX2 kernels (the environment sets
OPENBLAS_CORETYPE on some processors) while the processor has AVX-512 (docs/gemm.md has
the measurements, docs/benchmarks.md the whole iteration). Which kernel runs is isa.py's:
the level (``avx512``, ``avx2``, ``blas``; ``MINIVGG_ISA`` forces a lower one) and whether
its products are ours or numpy's BLAS (``isa.gemm_choice()``: ours at avx512, BLAS at
avx2, where OpenBLAS's AVX2 kernels measured faster than ours; ``MINIVGG_GEMM=ours|blas``).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import isa

LANES = 16  # floats per zmm register (the AVX-512 kernel; simd.py's shuffles use it too)


class Kernel:
    """One level's micro-kernel shape and blocking (docs/gemm.md has the measurements).

    lanes: floats per vector; mr x nv vectors: the register block of C (C[i0:i0+mr,
    j:j+nv*lanes]); kc, nc: the cache blocks (an mr x kc block of A in L1, a kc x nc block
    of B in L2); mrg x nrg: the Gram kernel's block of dot products."""

    def __init__(self, lanes, mr, nv, kc, nc, mrg, nrg):
        self.lanes, self.mr, self.nv, self.kc, self.nc, self.mrg, self.nrg = lanes, mr, nv, kc, nc, mrg, nrg
        self.nr = nv * lanes


# Each level's numbers as module constants too, which numba's loops read as compile-time
# literals (the block shape must be known when the kernel is generated).
# AVX-512, 32 zmm registers: 8 x 48 = 24 accumulators + 3 B vectors + a broadcast. An 8 x KC
# block of A is 8 KiB (L1), a KC x NC block of B 480 KiB (well inside a 1-2 MiB L2).
# Gram: 4 x 6 = 24 accumulators + 4 + 1 operands.
_L16, _MR16, _NV16, _KC16, _NC16, _MRG16, _NRG16 = 16, 8, 3, 256, 480, 4, 6
# AVX2, 16 ymm registers: 6 x 16 = 12 accumulators + 2 B vectors + a broadcast (BLIS's
# Haswell shape); a KC x NC block of B is 240 KiB, inside the 256-512 KiB L2 of AVX2 parts.
# Gram: 3 x 4 = 12 accumulators + 3 + 1 operands.
_L8, _MR8, _NV8, _KC8, _NC8, _MRG8, _NRG8 = 8, 6, 2, 256, 240, 3, 4
AVX512 = Kernel(_L16, _MR16, _NV16, _KC16, _NC16, _MRG16, _NRG16)
AVX2 = Kernel(_L8, _MR8, _NV8, _KC8, _NC8, _MRG8, _NRG8)
KERNELS = {"avx512": AVX512, "avx2": AVX2}

# the AVX-512 kernel's shape under its old names (winograd.py rounds its row blocks by MR)
MR, NV, NR, KC, NC = AVX512.mr, AVX512.nv, AVX512.nr, AVX512.kc, AVX512.nc
MRG, NRG = AVX512.mrg, AVX512.nrg
# K steps summed in registers before the partial sums are added into C: summing K terms
# in two levels (KB, then K / KB) instead of one run keeps the float32 error near BLAS's
# (tests/test_gemm.py) at a small cost in speed (docs/benchmarks.md). The same on every level.
KB = 64


def kernel():
    """The Kernel the products use now (isa.level()'s, where isa.gemm_choice() is ours),
    None for numpy's BLAS."""
    return KERNELS.get(isa.level()) if isa.gemm_choice() == "ours" else None


def lanes():
    """The vector width of the current level's kernel, 0 for numpy's BLAS: the switch the
    numba loops (here and in winograd.py) take to pick the kernel."""
    k = kernel()
    return 0 if k is None else k.lanes


def available():
    """True when the products run in our kernels (the level is not ``blas``)."""
    return kernel() is not None


# ---------------------------------------------------------------- the micro-kernels (LLVM IR)
class _IR:
    """The pieces both kernels emit: vector types, fma, (masked) vector loads and stores."""

    def __init__(self, context, builder, signature, args, tail, lanes=LANES):
        self.b = builder
        self.context, self.signature, self.args = context, signature, args
        self.lanes = lanes
        self.i32, self.i64 = ir.IntType(32), ir.IntType(64)
        self.vec = ir.VectorType(ir.FloatType(), lanes)
        vec, i32, b = self.vec, self.i32, builder
        mvec = ir.VectorType(ir.IntType(1), lanes)
        mod = b.module
        self.fma = cgutils.get_or_insert_function(mod, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{lanes}f32")
        self.mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vec, [vec.as_pointer(), i32, mvec, vec]), f"llvm.masked.load.v{lanes}f32.p0"
        )
        self.mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mvec]), f"llvm.masked.store.v{lanes}f32.p0"
        )
        self.zero = ir.Constant(vec, [0.0] * lanes)
        lane = ir.Constant(ir.VectorType(self.i64, lanes), list(range(lanes)))
        self.mask = b.icmp_unsigned("<", lane, self.splat(self.int(tail), ir.VectorType(self.i64, lanes)))

    def int(self, v):
        """v as an i64 (numba's ints may be narrower)."""
        return self.b.sext(v, self.i64) if v.type.width < 64 else v

    def const(self, n):
        return ir.Constant(self.i64, n)

    def splat(self, x, vt=None):
        vt = vt or self.vec
        b = self.b
        v = b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(self.i32, 0))
        return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(self.i32, vt.count), [0] * vt.count))

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
def _micro(typingctx, lanes, mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, K, tail, accumulate):
    """C[co + i*ldc + j] (+)= sum_k A[ao + i*sai + k*sak] * B[bo + k*ldb + j] for i < mr and
    j < lanes*nv, the last vector's columns limited to the first ``tail`` (1..lanes) of its
    lanes. lanes, mr and nv are compile-time constants: 16 floats a vector for AVX-512, 8
    for AVX2 (plain LLVM vectors: any target lowers them)."""
    if not _literals(lanes, mr, nv):
        return None
    L, MRv, NVv = lanes.literal_value, mr.literal_value, nv.literal_value
    sig = types.void(lanes, mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, K, tail, accumulate)

    def codegen(context, builder, signature, args):
        args = args[1:]
        _, _, _, _, sai_, sak_, _, _, ldb_, _, _, ldc_, K_, tail_, acc_ = args
        e = _IR(context, builder, signature.replace(args=signature.args[1:]), args, tail_, L)
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
                bs = [e.load(bk, L * v, v == NVv - 1) for v in range(NVv)]
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
                    total = builder.fadd(e.load(crow[i], L * v, last), part)
                    e.store(builder.select(first, part, total), crow[i], L * v, last)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _micro_nt(typingctx, lanes, mr, nr, A, ao, lda, B, bo, ldb, C, co, ldc, K, accumulate):
    """C[co + i*ldc + j] (+)= sum_{k<K} A[ao + i*lda + k] * B[bo + j*ldb + k], i < mr, j < nr:
    dot products of rows (the Gram matrix F F^T). Each of the mr x nr outputs has a vector
    of ``lanes`` partial sums over k (k = lanes q + lane), summed across its lanes at the end."""
    if not _literals(lanes, mr, nr):
        return None
    L, MRv, NRv = lanes.literal_value, mr.literal_value, nr.literal_value
    sig = types.void(lanes, mr, nr, A, ao, lda, B, bo, ldb, C, co, ldc, K, accumulate)

    def codegen(context, builder, signature, args):
        args = args[1:]
        signature = signature.replace(args=signature.args[1:])
        _, _, _, _, lda_, _, _, ldb_, _, _, ldc_, K_, acc_ = args
        K_ = builder.sext(K_, ir.IntType(64)) if K_.type.width < 64 else K_
        tail = builder.urem(K_, ir.Constant(K_.type, L))
        e = _IR(context, builder, signature, args, tail, L)
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

        nfull = builder.udiv(K_, e.const(L))
        with cgutils.for_range(builder, nfull) as loop:
            step(builder.mul(loop.index, e.const(L)), False)
        with builder.if_then(builder.icmp_unsigned("!=", tail, e.const(0))):
            step(builder.mul(nfull, e.const(L)), True)
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), e.vec]), f"llvm.vector.reduce.fadd.v{L}f32"
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
# lanes, mr and nv travel as compile-time constants (numba retypes a call with literal
# arguments when the intrinsic needs them), so each level's kernel is its own machine code;
# the entry points (_gemm_flat, _gemm2, _gemm3, _gram_blocks) take the level's lanes as an
# ordinary argument (``lanes()``) and branch once per call.
@njit(nogil=True, cache=True)
def _panels(lanes, mr, nv, A, ao, sai, sak, B, bo, ldb, C, co, ldc, kc, nc, acc):
    """mr rows of C over nc columns, in panels of nv vectors, then a panel of fewer."""
    nr = nv * lanes
    j = 0
    while j + nr <= nc:
        _micro(lanes, mr, nv, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, lanes, acc)
        j += nr
    w = nc - j
    if w > 2 * lanes:
        _micro(lanes, mr, 3, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, w - 2 * lanes, acc)
    elif w > lanes:
        _micro(lanes, mr, 2, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, w - lanes, acc)
    elif w > 0:
        _micro(lanes, mr, 1, A, ao, sai, sak, B, bo + j, ldb, C, co + j, ldc, kc, w, acc)


@njit(nogil=True, cache=True)
def _nest(lanes, mr, nv, KCb, NCb, A, ao, sai, sak, B, bo, ldb, C, co, ldc, m, n, K, accumulate):
    """The loop nest of one level's kernel (see the docstring): rows in blocks of mr, then
    4, 2 and 1 for the rest."""
    for k0 in range(0, K, KCb):
        kc = min(KCb, K - k0)
        acc = accumulate or k0 > 0
        for j0 in range(0, n, NCb):
            nc = min(NCb, n - j0)
            i = 0
            while i < m:
                a_off = ao + i * sai + k0 * sak
                b_off = bo + k0 * ldb + j0
                c_off = co + i * ldc + j0
                r = m - i
                if r >= mr:
                    _panels(lanes, mr, nv, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += mr
                elif r >= 4:
                    _panels(lanes, 4, nv, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 4
                elif r >= 2:
                    _panels(lanes, 2, nv, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 2
                else:
                    _panels(lanes, 1, nv, A, a_off, sai, sak, B, b_off, ldb, C, c_off, ldc, kc, nc, acc)
                    i += 1


@njit(nogil=True, cache=True)
def _gemm_flat(lanes, A, ao, sai, sak, B, bo, ldb, C, co, ldc, m, n, K, accumulate):
    """The loop nest on flat arrays with element offsets and strides, in the kernel of the
    level whose vectors have ``lanes`` floats (16: AVX-512, 8: AVX2)."""
    if lanes == _L16:
        _nest(_L16, _MR16, _NV16, _KC16, _NC16, A, ao, sai, sak, B, bo, ldb, C, co, ldc, m, n, K, accumulate)
    else:
        _nest(_L8, _MR8, _NV8, _KC8, _NC8, A, ao, sai, sak, B, bo, ldb, C, co, ldc, m, n, K, accumulate)


@njit(nogil=True, cache=True)
def _gemm2(lanes, a, b, c, accumulate):
    m, K = a.shape
    _gemm_flat(lanes, a, 0, a.strides[0] // 4, a.strides[1] // 4, b, 0, b.strides[0] // 4, c, 0, c.strides[0] // 4,
               m, b.shape[1], K, accumulate)


@njit(nogil=True, cache=True)
def _gemm3(lanes, a, b, c, accumulate):
    nb, m, K = a.shape
    sab, sai, sak = a.strides[0] // 4, a.strides[1] // 4, a.strides[2] // 4
    sbb, ldb = b.strides[0] // 4, b.strides[1] // 4
    scb, ldc = c.strides[0] // 4, c.strides[1] // 4
    for p in range(nb):
        _gemm_flat(lanes, a, p * sab, sai, sak, b, p * sbb, ldb, c, p * scb, ldc, m, b.shape[2], K, accumulate)


# Gram matrices: blocks of mrg x nrg dot products (Kernel.mrg, .nrg), upper triangle only,
# the lower mirrored. K goes in chunks of about 1 MiB of F (C x kc floats in L2, kc at most
# 256 lanes' worth), each chunk's lane sums added into G.
GRAM_CHUNK_FLOATS = 1 << 18


@njit(nogil=True, cache=True)
def _nt_row(lanes, mr, nrg, F, i, k0, ldf, G, ldg, j0, n, kc, acc):
    """G[i:i+mr, j0:n] (+)= F[i:i+mr, k0:k0+kc] . F[j0:n, k0:k0+kc] (mr, nrg compile-time), in
    blocks of nrg columns and then 3-, 2- and 1-column pieces."""
    ao = i * ldf + k0
    co = i * ldg
    j = j0
    while j + nrg <= n:
        _micro_nt(lanes, mr, nrg, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)
        j += nrg
    r = n - j
    if r >= 3:
        _micro_nt(lanes, mr, 3, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)
        j += 3
        r -= 3
    if r >= 2:
        _micro_nt(lanes, mr, 2, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)
        j += 2
        r -= 2
    if r >= 1:
        _micro_nt(lanes, mr, 1, F, ao, ldf, F, j * ldf + k0, ldf, G, co + j, ldg, kc, acc)


@njit(nogil=True, cache=True)
def _gram_nest(lanes, mrg, nrg, F, G, b0, bstep):
    C, K = F.shape
    ldf = F.strides[0] // 4
    ldg = G.strides[0] // 4
    # at most 256 terms in a lane's sum on every level (the chunk scales with the lanes):
    # the sums of positive terms (post-ReLU F) keep AVX-512's accuracy at 8 lanes
    kc = max(32 * lanes, min(256 * lanes, (GRAM_CHUNK_FLOATS // C) // 16 * 16))
    nblocks = (C + mrg - 1) // mrg
    for k0 in range(0, K, kc):
        klen = min(kc, K - k0)
        acc = k0 > 0
        for ib in range(b0, nblocks, bstep):
            i = ib * mrg
            # the block's rows in pieces of mrg, 2 and 1; each starts its columns at the block's first row
            while i < min(C, (ib + 1) * mrg):
                r = min(C, (ib + 1) * mrg) - i
                if r >= mrg:
                    _nt_row(lanes, mrg, nrg, F, i, k0, ldf, G, ldg, ib * mrg, C, klen, acc)
                    i += mrg
                elif r >= 2:
                    _nt_row(lanes, 2, nrg, F, i, k0, ldf, G, ldg, ib * mrg, C, klen, acc)
                    i += 2
                else:
                    _nt_row(lanes, 1, nrg, F, i, k0, ldf, G, ldg, ib * mrg, C, klen, acc)
                    i += 1


@njit(nogil=True, cache=True)
def _gram_blocks(lanes, F, G, b0, bstep):
    """G[i, j] = F[i] . F[j] for j >= the first row of i's block, over the row blocks
    b0, b0 + bstep, ... (blocks of the level's mrg rows): one thread's interleaved share."""
    if lanes == _L16:
        _gram_nest(_L16, _MRG16, _NRG16, F, G, b0, bstep)
    else:
        _gram_nest(_L8, _MRG8, _NRG8, F, G, b0, bstep)


@njit(nogil=True, cache=True)
def _mirror(G):
    """G[i, j] = G[j, i] below the diagonal (copied, so G is exactly symmetric)."""
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


def gemm(a, b, out, accumulate=False, level=None):
    """out = a @ b (out += a @ b when accumulate), 2-d (m, K) @ (K, n) or stacked 3-d.

    float32 arrays; b and out need unit stride along their last axis; a any strides.
    Returns out. Raises ValueError when the arrays do not fit (see ``usable``).
    Always one of our kernels: ``level``'s ("avx512" or "avx2"), by default the current
    level's where the products are ours, else the host level's (the AVX-512 one where the
    host has neither: its plain IR vectors lower on any target).
    """
    if a.ndim != b.ndim or a.ndim != out.ndim or a.ndim not in (2, 3):
        raise ValueError("gemm: a, b and out must all be 2-d or all 3-d")
    if a.shape[-1] != b.shape[-2] or out.shape[-2:] != (a.shape[-2], b.shape[-1]):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    if a.ndim == 3 and not (a.shape[0] == b.shape[0] == out.shape[0]):
        raise ValueError("gemm: batch sizes differ")
    if not usable(a, b, out):
        raise ValueError("gemm: needs float32 arrays with unit-stride rows in b and out")
    k = KERNELS[level] if level is not None else kernel() or KERNELS.get(isa.level(), KERNELS.get(isa.host_level(), AVX512))
    if a.ndim == 2:
        _gemm2(k.lanes, a, b, out, bool(accumulate))
    else:
        _gemm3(k.lanes, a, b, out, bool(accumulate))
    return out


def matmul(a, b, out, accumulate=False):
    """out = a @ b (out += a @ b when accumulate) through ``gemm`` where the level has a kernel
    and it takes the arrays, else numpy's matmul (which also gives numpy's error for arrays
    that do not match)."""
    if available():
        try:
            return gemm(a, b, out, accumulate)
        except ValueError:  # gemm checks before it writes: out is untouched
            pass
    if accumulate:
        out += np.matmul(a, b)
        return out
    return np.matmul(a, b, out=out)
