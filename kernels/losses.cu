// The element-wise parts of the image-synthesis losses. Each kernel writes, per
// element, the loss term and the gradient; the host only sums the terms (a
// reduction) and runs the GEMMs (Gram matrix, (G - A) F). One thread per element
// written, gathers only.
// Math: minivgg/losses.py and docs/losses.md.
#include "common.cuh"

// Content loss: d = F - P, term = d^2 (L = 1/2 sum term, dL/dF = d).
extern "C" __global__ void content_diff(const real* __restrict__ F, const real* __restrict__ P,
                                        real* __restrict__ d, real* __restrict__ term, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        const real v = F[i] - P[i];
        d[i] = v;
        term[i] = v * v;
    }
}

// Style loss, the part between the two GEMMs: D = G - A for G (N, C, C) and the
// target A (C, C) broadcast over the batch (CC = C*C) or (N, C, C) (CC = N*C*C);
// term = D^2, so E = 1/(4 C^2 M^2) sum term.
extern "C" __global__ void gram_diff(const real* __restrict__ G, const real* __restrict__ A,
                                     real* __restrict__ D, real* __restrict__ term,
                                     long long n, long long CC)
{
    GRID_STRIDE_LOOP(i, n) {
        const real v = G[i] - A[i % CC];
        D[i] = v;
        term[i] = v * v;
    }
}

// Style gradient, after dF = D F (GEMM): dF *= 1/(C^2 M^2), and, with mask != 0,
// zero where F < 0 (Gatys 2016 eq. 6, for a loss taken on a layer before its ReLU).
extern "C" __global__ void style_grad_mask(real* __restrict__ dF, const real* __restrict__ F,
                                           real scale, int mask, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        dF[i] = (mask && F[i] < 0) ? (real)0 : dF[i] * scale;
    }
}

// Total variation, x (NC, H, W), over the pixels with a right and a lower neighbour:
//   dh = x[i, j+1] - x[i, j], dv = x[i+1, j] - x[i, j], s = dh^2 + dv^2,
//   term = s^(beta/2), w = beta s^(beta/2 - 1) (s floored at 1e-12 unless beta = 2).
// Other pixels get term = w = 0. One thread per pixel.
__device__ __forceinline__ bool tv_inside(int i, int j, int H, int W) { return i < H - 1 && j < W - 1; }

extern "C" __global__ void tv_forward(const real* __restrict__ x, real* __restrict__ term,
                                      real* __restrict__ w, int NC, int H, int W, real beta)
{
    const idx_t total = (idx_t)NC * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        const int j = (int)(idx % W);
        const int i = (int)((idx / W) % H);
        real t = 0, g = 0;
        if (tv_inside(i, j, H, W)) {
            const real dh = x[idx + 1] - x[idx];
            const real dv = x[idx + W] - x[idx];
            const real s = dh * dh + dv * dv;
            if (beta == (real)2) {
                t = s;
                g = 2;
            } else {
                t = real_pow(s, beta / 2);
                g = beta * real_pow(s > (real)1e-12 ? s : (real)1e-12, beta / 2 - 1);
            }
        }
        term[idx] = t;
        w[idx] = g;
    }
}

// dR/dx[i, j] gathers the three terms that contain x[i, j]:
//   -w[i, j] (dh[i, j] + dv[i, j]) + w[i, j-1] dh[i, j-1] + w[i-1, j] dv[i-1, j].
extern "C" __global__ void tv_backward(const real* __restrict__ x, const real* __restrict__ w,
                                       real* __restrict__ dx, int NC, int H, int W)
{
    const idx_t total = (idx_t)NC * H * W;
    GRID_STRIDE_LOOP(idx, total) {
        const int j = (int)(idx % W);
        const int i = (int)((idx / W) % H);
        real g = 0;
        if (tv_inside(i, j, H, W))
            g -= w[idx] * ((x[idx + 1] - x[idx]) + (x[idx + W] - x[idx]));
        if (j >= 1 && tv_inside(i, j - 1, H, W))
            g += w[idx - 1] * (x[idx] - x[idx - 1]);
        if (i >= 1 && tv_inside(i - 1, j, H, W))
            g += w[idx - W] * (x[idx] - x[idx - W]);
        dx[idx] = g;
    }
}

// Alpha-norm: term = |x|^alpha, g = alpha |x|^(alpha-1) sign(x).
extern "C" __global__ void alpha_norm(const real* __restrict__ x, real* __restrict__ term,
                                      real* __restrict__ g, real alpha, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        const real v = x[i];
        const real a = real_abs(v);
        const real sign = v > 0 ? (real)1 : (v < 0 ? (real)-1 : (real)0);
        term[i] = real_pow(a, alpha);
        g[i] = alpha * real_pow(a, alpha - 1) * sign;
    }
}
