// Average and max pooling over K x K windows every S pixels, floor rounding
// (Ho = (H - K)/S + 1, as torch). x is (NC, H, W): batch and channels flattened.
// Every kernel runs one thread per element it writes: forward per output pixel,
// backward per input pixel (a gather over the windows that cover it), so no
// atomics. K and S are fixed per compiled module by prepended #defines (VGG: 2, 2).
// Math: minivgg/layers/pool.py. CPU twin: minivgg/cpu/im2col.py (*_pool_*).
#include "common.cuh"

#ifndef POOL_K
#define POOL_K 2
#endif
#ifndef POOL_S
#define POOL_S 2
#endif

// The windows (rows) covering input row h are i in [lo, hi]: i*S <= h <= i*S + K - 1.
__device__ __forceinline__ int pool_lo(int h) { return h < POOL_K ? 0 : (h - POOL_K) / POOL_S + 1; }
__device__ __forceinline__ int pool_hi(int h, int Ho) { const int i = h / POOL_S; return i < Ho - 1 ? i : Ho - 1; }

// y[p, i, j] = 1/K^2 sum_{a, e < K} x[p, S*i + a, S*j + e]
extern "C" __global__ void avg_pool_forward(const real* __restrict__ x, real* __restrict__ y,
                                            int NC, int H, int W, int Ho, int Wo)
{
    const idx_t total = (idx_t)NC * Ho * Wo;
    GRID_STRIDE_LOOP(idx, total) {
        const int j = (int)(idx % Wo);
        const int i = (int)((idx / Wo) % Ho);
        const idx_t p = idx / ((idx_t)Wo * Ho);
        const real* win = x + (p * H + (idx_t)POOL_S * i) * W + (idx_t)POOL_S * j;
        real acc = 0;
        for (int a = 0; a < POOL_K; ++a)
            for (int e = 0; e < POOL_K; ++e)
                acc += win[a * W + e];
        y[idx] = acc * ((real)1 / (POOL_K * POOL_K));
    }
}

// dx[p, h, w] = 1/K^2 sum over windows (i, j) containing (h, w) of dy[p, i, j];
// pixels of a border row/column that no window reaches get 0.
extern "C" __global__ void avg_pool_backward(const real* __restrict__ dy, real* __restrict__ dx,
                                             int NC, int H, int W, int Ho, int Wo)
{
    const idx_t total = (idx_t)NC * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        const int w = (int)(idx % W);
        const int h = (int)((idx / W) % H);
        const idx_t p = idx / ((idx_t)W * H);
        const real* d = dy + p * Ho * Wo;
        const int i1 = pool_hi(h, Ho), j1 = pool_hi(w, Wo);
        real acc = 0;
        for (int i = pool_lo(h); i <= i1; ++i)
            for (int j = pool_lo(w); j <= j1; ++j)
                acc += d[(idx_t)i * Wo + j];
        dx[idx] = acc * ((real)1 / (POOL_K * POOL_K));
    }
}

// y[p, i, j] = max of the window; arg[p, i, j] = offset a*K + e of its first maximum
// in row-major order (torch's choice; a NaN wins, as in torch).
extern "C" __global__ void max_pool_forward(const real* __restrict__ x, real* __restrict__ y,
                                            int* __restrict__ arg,
                                            int NC, int H, int W, int Ho, int Wo)
{
    const idx_t total = (idx_t)NC * Ho * Wo;
    GRID_STRIDE_LOOP(idx, total) {
        const int j = (int)(idx % Wo);
        const int i = (int)((idx / Wo) % Ho);
        const idx_t p = idx / ((idx_t)Wo * Ho);
        const real* win = x + (p * H + (idx_t)POOL_S * i) * W + (idx_t)POOL_S * j;
        real best = win[0];
        int best_at = 0;
        for (int a = 0; a < POOL_K; ++a)
            for (int e = 0; e < POOL_K; ++e) {
                const real v = win[a * W + e];
                if (v > best || v != v) { best = v; best_at = a * POOL_K + e; }
            }
        y[idx] = best;
        arg[idx] = best_at;
    }
}

// dx[p, h, w] = sum of dy[p, i, j] over the windows (i, j) whose chosen maximum is (h, w).
extern "C" __global__ void max_pool_backward(const real* __restrict__ dy, const int* __restrict__ arg,
                                             real* __restrict__ dx,
                                             int NC, int H, int W, int Ho, int Wo)
{
    const idx_t total = (idx_t)NC * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        const int w = (int)(idx % W);
        const int h = (int)((idx / W) % H);
        const idx_t p = idx / ((idx_t)W * H);
        const real* d = dy + p * Ho * Wo;
        const int* m = arg + p * Ho * Wo;
        const int i1 = pool_hi(h, Ho), j1 = pool_hi(w, Wo);
        real acc = 0;
        for (int i = pool_lo(h); i <= i1; ++i)
            for (int j = pool_lo(w); j <= j1; ++j) {
                const idx_t o = (idx_t)i * Wo + j;
                if (m[o] == (h - POOL_S * i) * POOL_K + (w - POOL_S * j)) acc += d[o];
            }
        dx[idx] = acc;
    }
}
