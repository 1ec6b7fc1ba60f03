"""Vector shuffles numba's loops do not get: written as LLVM IR through numba intrinsics.

``_deinterleave4(src, so, dst, do, ldd, n)``: dst[do + p * ldd + j] = src[so + 4 j + p] for
p < 4, j < n: a row split into its four phases (the Winograd input transform's tiles start
every 4 columns). numba's loop over j with four stride-4 loads stays scalar; here each
4 LANES floats are four vector loads, twelve shuffles and four vector stores.

Reference: the plain index loops written above each intrinsic's contract; the shuffles
equal them exactly (tests/test_winograd.py, on every ISA level the host has).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import isa
from .gemm import _IR

# Floats a vector: 16 where numba's target has AVX-512, else 8. On an AVX2 target LLVM
# splits the 16-float shuffles into 8-float halves; the 8-float version of the same
# shuffles weaves rows back faster there and splits them as fast (docs/benchmarks.md).
# A compile-time choice, by the target numba compiles for (its cache is keyed on it too).
LANES = 16 if isa.host_level() == "avx512" else 8


def _phase_masks():
    """For each phase p: the shuffle of two LANES-vectors taking their elements p, p+4, ...
    (LANES / 2), and the shuffle joining two halves into one vector."""
    i32 = ir.IntType(32)
    half = [ir.Constant(ir.VectorType(i32, LANES // 2), [p + 4 * k for k in range(LANES // 2)]) for p in range(4)]
    join = ir.Constant(ir.VectorType(i32, LANES), list(range(LANES)))
    return half, join


@intrinsic
def _deinterleave4(typingctx, src, so, dst, do, ldd, n):
    sig = types.void(src, so, dst, do, ldd, n)

    def codegen(context, builder, signature, args):
        _, so_, _, do_, ldd_, n_ = args
        e = _IR(context, builder, signature, args, ir.Constant(ir.IntType(64), LANES), LANES)
        so_, do_, ldd_, n_ = map(e.int, (so_, do_, ldd_, n_))
        sp, dp = e.pointer(0, so_), e.pointer(2, do_)
        half, join = _phase_masks()
        dst_rows = [e.at(dp, builder.mul(e.const(p), ldd_)) for p in range(4)]
        nblocks = builder.udiv(n_, e.const(LANES))
        with cgutils.for_range(builder, nblocks) as loop:
            j0 = builder.mul(loop.index, e.const(LANES))
            s0 = builder.mul(j0, e.const(4))
            v = [e.load(sp, builder.add(s0, e.const(LANES * k))) for k in range(4)]
            for p in range(4):
                lo = builder.shuffle_vector(v[0], v[1], half[p])
                hi = builder.shuffle_vector(v[2], v[3], half[p])
                e.store(builder.shuffle_vector(lo, hi, join), dst_rows[p], j0)
        rest = builder.mul(nblocks, e.const(LANES))
        with cgutils.for_range(builder, builder.sub(n_, rest)) as loop:
            j = builder.add(rest, loop.index)
            s = builder.mul(j, e.const(4))
            for p in range(4):
                x = builder.load(e.at(sp, builder.add(s, e.const(p))))
                builder.store(x, e.at(dst_rows[p], j))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _interleave4(typingctx, src, so, lds, dst, do, n, relu):
    """dst[do + 4 j + p] = src[so + p * lds + j] for p < 4, j < n; max(., 0) when relu: the
    output transform's four phases of a row woven back into the row."""
    sig = types.void(src, so, lds, dst, do, n, relu)

    def codegen(context, builder, signature, args):
        _, so_, lds_, _, do_, n_, relu_ = args
        e = _IR(context, builder, signature, args, ir.Constant(ir.IntType(64), LANES), LANES)
        so_, lds_, do_, n_ = map(e.int, (so_, lds_, do_, n_))
        sp, dp = e.pointer(0, so_), e.pointer(3, do_)
        i32 = ir.IntType(32)
        # two phases' LANES values zipped into 2 LANES (a0 b0 a1 b1 ...), split into two vectors
        zip_lo = ir.Constant(ir.VectorType(i32, LANES), [k // 2 + (k % 2) * LANES for k in range(LANES)])
        zip_hi = ir.Constant(ir.VectorType(i32, LANES), [LANES // 2 + k // 2 + (k % 2) * LANES for k in range(LANES)])
        # then pairs (a b) of phases 0,1 with pairs (c d) of phases 2,3: a b c d per column
        pair_lo = ir.Constant(ir.VectorType(i32, LANES), [(k // 4) * 2 + (k % 2) + ((k // 2) % 2) * LANES for k in range(LANES)])
        pair_hi = ir.Constant(ir.VectorType(i32, LANES), [LANES // 2 + (k // 4) * 2 + (k % 2) + ((k // 2) % 2) * LANES for k in range(LANES)])
        rows = [e.at(sp, builder.mul(e.const(p), lds_)) for p in range(4)]
        on = builder.icmp_unsigned("!=", relu_, ir.Constant(relu_.type, 0))
        nblocks = builder.udiv(n_, e.const(LANES))

        def rect(v):
            return builder.select(on, builder.select(builder.fcmp_ordered(">", v, e.zero), v, e.zero), v)

        def rect1(x):
            z = ir.Constant(ir.FloatType(), 0.0)
            return builder.select(on, builder.select(builder.fcmp_ordered(">", x, z), x, z), x)

        with cgutils.for_range(builder, nblocks) as loop:
            j0 = builder.mul(loop.index, e.const(LANES))
            a, b, c, d = (e.load(rows[p], j0) for p in range(4))
            ab_lo, ab_hi = builder.shuffle_vector(a, b, zip_lo), builder.shuffle_vector(a, b, zip_hi)
            cd_lo, cd_hi = builder.shuffle_vector(c, d, zip_lo), builder.shuffle_vector(c, d, zip_hi)
            out = [builder.shuffle_vector(ab_lo, cd_lo, pair_lo), builder.shuffle_vector(ab_lo, cd_lo, pair_hi),
                   builder.shuffle_vector(ab_hi, cd_hi, pair_lo), builder.shuffle_vector(ab_hi, cd_hi, pair_hi)]
            d0 = builder.mul(j0, e.const(4))
            for k in range(4):
                e.store(rect(out[k]), dp, builder.add(d0, e.const(LANES * k)))
        rest = builder.mul(nblocks, e.const(LANES))
        with cgutils.for_range(builder, builder.sub(n_, rest)) as loop:
            j = builder.add(rest, loop.index)
            for p in range(4):
                x = builder.load(e.at(rows[p], j))
                builder.store(rect1(x), e.at(dp, builder.add(builder.mul(j, e.const(4)), e.const(p))))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _repeat2(typingctx, src, so, dst, do, n, scale):
    """dst[do + 2 k] = dst[do + 2 k + 1] = scale * src[so + k] for k < n: a row of a 2x2
    average pool's backward (scale 1/4), each value over its window's two columns."""
    sig = types.void(src, so, dst, do, n, scale)

    def codegen(context, builder, signature, args):
        _, so_, _, do_, n_, scale_ = args
        e = _IR(context, builder, signature, args, ir.Constant(ir.IntType(64), LANES), LANES)
        so_, do_, n_ = map(e.int, (so_, do_, n_))
        sp, dp = e.pointer(0, so_), e.pointer(2, do_)
        i32 = ir.IntType(32)
        lo = ir.Constant(ir.VectorType(i32, LANES), [k // 2 for k in range(LANES)])
        hi = ir.Constant(ir.VectorType(i32, LANES), [LANES // 2 + k // 2 for k in range(LANES)])
        sv = e.splat(scale_)
        nblocks = builder.udiv(n_, e.const(LANES))
        with cgutils.for_range(builder, nblocks) as loop:
            k0 = builder.mul(loop.index, e.const(LANES))
            v = builder.fmul(e.load(sp, k0), sv)
            d0 = builder.mul(k0, e.const(2))
            e.store(builder.shuffle_vector(v, v, lo), dp, d0)
            e.store(builder.shuffle_vector(v, v, hi), dp, builder.add(d0, e.const(LANES)))
        rest = builder.mul(nblocks, e.const(LANES))
        with cgutils.for_range(builder, builder.sub(n_, rest)) as loop:
            k = builder.add(rest, loop.index)
            x = builder.fmul(builder.load(e.at(sp, k)), scale_)
            d = builder.mul(k, e.const(2))
            builder.store(x, e.at(dp, d))
            builder.store(x, e.at(dp, builder.add(d, e.const(1))))
        return context.get_dummy_value()

    return sig, codegen
