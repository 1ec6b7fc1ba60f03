// Exact recomputation of the few outputs of y = relu(conv3x3(x, W) + b) on which float32
// rounding decides something discrete: which unit of a 2x2 max-pool window is the largest
// (and so receives the window's whole gradient). Two outputs closer than the convolution's
// float32 error (~1e-6 of the layer's scale) tie by chance; listing them (pool_tie_mark)
// and summing their 9*C products again in double (conv3x3_relu_exact) makes the pool's
// choice the one an exact computation makes. The CPU backend does the same
// (minivgg/cpu/fast/winograd.py, refine_pool_ties).
#include "common.cuh"

// flag[idx] = 1 when y[idx] lies within tol[n] of the maximum of its 2x2 stride-2 window
// (floor rounding: rows and columns past the last whole window have none), that maximum is
// positive, and at least two values of the window lie that close; else 0.
// y: (N, C, H, W); tol: (N,), one threshold per image. One thread per element of y.
extern "C" __global__ void pool_tie_mark(const real* __restrict__ y, const real* __restrict__ tol,
                                         int* __restrict__ flag, int N, int C, int H, int W)
{
    const idx_t total = (idx_t)N * C * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        const int j = (int)(idx % W);
        const int i = (int)((idx / W) % H);
        const idx_t p = idx / ((idx_t)W * H);  // image * C + channel
        int mark = 0;
        if (i < H / 2 * 2 && j < W / 2 * 2) {
            const real* win = y + (p * H + (i / 2 * 2)) * (idx_t)W + (j / 2 * 2);
            real m = win[0];
            for (int a = 0; a < 2; ++a)
                for (int e = 0; e < 2; ++e)
                    if (win[a * W + e] > m) m = win[a * W + e];
            if (m > 0) {
                const real t = tol[p / C];
                int close = 0;
                for (int a = 0; a < 2; ++a)
                    for (int e = 0; e < 2; ++e)
                        if (m - win[a * W + e] <= t) ++close;
                mark = close >= 2 && m - y[idx] <= t;
            }
        }
        flag[idx] = mark;
    }
}

// For each listed output at[k] (a flat index into y: (N, F, H, W)):
//     y[n, o, i, j] = max(0, b[o] + sum_{c, a, e} Wt[o, c, a, e] x[n, c, i + a - 1, j + e - 1])
// summed in double (3x3 kernels, stride 1, zero padding 1). One thread per listed output;
// the listed outputs are distinct, so every thread writes its own element.
extern "C" __global__ void conv3x3_relu_exact(const real* __restrict__ x, const real* __restrict__ Wt,
                                              const real* __restrict__ b, real* __restrict__ y,
                                              const idx_t* __restrict__ at, idx_t count,
                                              int C, int F, int H, int W)
{
    GRID_STRIDE_LOOP(k, count) {
        const idx_t idx = at[k];
        const int j = (int)(idx % W);
        const int i = (int)((idx / W) % H);
        const int o = (int)((idx / ((idx_t)W * H)) % F);
        const idx_t n = idx / ((idx_t)W * H * F);
        double acc = (double)b[o];
        for (int c = 0; c < C; ++c) {
            const real* xc = x + (n * C + c) * (idx_t)H * W;
            const real* wc = Wt + ((idx_t)o * C + c) * 9;
            for (int a = 0; a < 3; ++a) {
                const int r = i + a - 1;
                if (r < 0 || r >= H) continue;
                for (int e = 0; e < 3; ++e) {
                    const int q = j + e - 1;
                    if (q < 0 || q >= W) continue;
                    acc += (double)wc[a * 3 + e] * (double)xc[(idx_t)r * W + q];
                }
            }
        }
        y[idx] = acc > 0 ? (real)acc : (real)0;
    }
}
