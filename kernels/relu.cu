// ReLU forward and backward, element-wise. One thread per element.
// Math: minivgg/layers/relu.py. CPU twin: minivgg/cpu/im2col.py (relu_*).
#include "common.cuh"

// y = max(x, 0), written as the CPU twin does (x > 0 ? x : 0).
extern "C" __global__ void relu_forward(const real* __restrict__ x, real* __restrict__ y,
                                        long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        const real v = x[i];
        y[i] = v > 0 ? v : (real)0;
    }
}

// dx = dy * [y > 0]; the mask is taken from the output (y > 0 exactly where x > 0).
extern "C" __global__ void relu_backward(const real* __restrict__ dy, const real* __restrict__ y,
                                         real* __restrict__ dx, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = y[i] > 0 ? dy[i] : (real)0;
    }
}
