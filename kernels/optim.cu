// The optimizers' element-wise update steps, in place, one thread per element.
// Scalars that depend only on the step number (bias corrections) are computed on
// the host. L-BFGS needs only dot products and axpys, which CuPy's own ops do.
// Math: minivgg/optim.py.
#include "common.cuh"

// Adam (Kingma & Ba 2015), torch.optim.Adam's arithmetic:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   x -= step * m / (sqrt(v) / sqrt_bc2 + eps),  step = lr / (1 - b1^k), sqrt_bc2 = sqrt(1 - b2^k).
extern "C" __global__ void adam_update(real* __restrict__ x, const real* __restrict__ g,
                                       real* __restrict__ m, real* __restrict__ v,
                                       real b1, real one_minus_b1, real b2, real one_minus_b2,
                                       real step, real sqrt_bc2, real eps, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        const real gi = g[i];
        const real mi = m[i] * b1 + gi * one_minus_b1;
        const real vi = v[i] * b2 + (gi * gi) * one_minus_b2;
        m[i] = mi;
        v[i] = vi;
        x[i] -= step * (mi / (real_sqrt(vi) / sqrt_bc2 + eps));
    }
}

// SGD with heavy-ball momentum (torch.optim.SGD, dampening 0):
//   buf = g on the first step, else momentum * buf + g;  x -= lr * buf.
extern "C" __global__ void sgd_update(real* __restrict__ x, const real* __restrict__ g,
                                      real* __restrict__ buf, real lr, real momentum,
                                      int first, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        const real b = first ? g[i] : buf[i] * momentum + g[i];
        buf[i] = b;
        x[i] -= lr * b;
    }
}
