// Bias addition after a GEMM, plain or fused with the ReLU that follows every
// VGG convolution. y is (N, F, P): P = Ho*Wo for a convolution, 1 for a fully
// connected layer. In place; one thread per element of y.
// Math: minivgg/layers/conv.py, minivgg/layers/relu.py.
#include "common.cuh"

// y[n, f, p] += b[f]
extern "C" __global__ void bias_add(real* __restrict__ y, const real* __restrict__ b,
                                    long long total, int F, long long P)
{
    GRID_STRIDE_LOOP(idx, total) {
        y[idx] += b[(idx / P) % F];
    }
}

// y[n, f, p] = max(y[n, f, p] + b[f], 0): the convolution's bias and the ReLU in one
// pass over memory. Same comparison as relu_forward, so a NaN becomes 0 on both.
extern "C" __global__ void bias_relu(real* __restrict__ y, const real* __restrict__ b,
                                     long long total, int F, long long P)
{
    GRID_STRIDE_LOOP(idx, total) {
        const real v = y[idx] + b[(idx / P) % F];
        y[idx] = v > 0 ? v : (real)0;
    }
}
