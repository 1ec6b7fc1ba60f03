// Convolution as im2col + GEMM (the GEMM is cuBLAS's, through cupy.matmul).
//
// Layout: x (N, C, H, W); cols (N, C*KH*KW, Ho*Wo) with row r = (c*KH + a)*KW + e,
// the order of W.reshape(Cout, C*KH*KW), so y[n] = W2 @ cols[n] is already NCHW.
// The window geometry is fixed per compiled module by prepended #defines
// (VGG: 3x3, stride 1, pad 1); the array sizes are kernel arguments.
// Math: minivgg/layers/conv.py and docs/conv.md. CPU twin: minivgg/cpu/im2col.py.
#include "common.cuh"

#ifndef KH
#define KH 3
#endif
#ifndef KW
#define KW 3
#endif
#ifndef STRIDE
#define STRIDE 1
#endif
#ifndef PAD
#define PAD 1
#endif

// cols[n, (c*KH + a)*KW + e, i*Wo + j] = x[n, c, STRIDE*i - PAD + a, STRIDE*j - PAD + e]
// (0 outside the image). One thread per element of cols.
extern "C" __global__ void im2col(const real* __restrict__ x, real* __restrict__ cols,
                                  int N, int C, int H, int W, int Ho, int Wo)
{
    const idx_t total = (idx_t)N * C * KH * KW * Ho * Wo;
    GRID_STRIDE_LOOP(idx, total) {
        idx_t t = idx;
        const int j = (int)(t % Wo); t /= Wo;
        const int i = (int)(t % Ho); t /= Ho;
        const int e = (int)(t % KW); t /= KW;
        const int a = (int)(t % KH); t /= KH;
        const int c = (int)(t % C);
        const int n = (int)(t / C);
        const int h = STRIDE * i - PAD + a;
        const int w = STRIDE * j - PAD + e;
        real v = 0;
        if (h >= 0 && h < H && w >= 0 && w < W)
            v = x[(((idx_t)n * C + c) * H + h) * W + w];
        cols[idx] = v;
    }
}

// The adjoint of im2col, as a gather: dx[n, c, h, w] sums every entry of dcols
// that im2col read from (n, c, h, w), i.e. the taps (a, e) with
// h = STRIDE*i - PAD + a for a whole i in [0, Ho) (same for w). One thread per
// element of dx; no two threads write the same element, so no atomics.
extern "C" __global__ void col2im(const real* __restrict__ dcols, real* __restrict__ dx,
                                  int N, int C, int H, int W, int Ho, int Wo)
{
    const idx_t total = (idx_t)N * C * H * W;
    const idx_t P = (idx_t)Ho * Wo;
    GRID_STRIDE_LOOP(idx, total) {
        idx_t t = idx;
        const int w = (int)(t % W); t /= W;
        const int h = (int)(t % H); t /= H;
        const int c = (int)(t % C);
        const int n = (int)(t / C);
        const real* base = dcols + ((idx_t)n * C + c) * KH * KW * P;
        real acc = 0;
        for (int a = 0; a < KH; ++a) {
            const int u = h + PAD - a;
            if (u < 0 || u % STRIDE != 0) continue;
            const int i = u / STRIDE;
            if (i >= Ho) continue;
            for (int e = 0; e < KW; ++e) {
                const int v = w + PAD - e;
                if (v < 0 || v % STRIDE != 0) continue;
                const int j = v / STRIDE;
                if (j >= Wo) continue;
                acc += base[(idx_t)(a * KW + e) * P + (idx_t)i * Wo + j];
            }
        }
        dx[idx] = acc;
    }
}
