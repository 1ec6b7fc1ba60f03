// Shared by every kernel in kernels/*.cu.
//
// The kernels are built three ways from the same text: by NVRTC through
// cupy.RawModule (minivgg/gpu), by nvcc (--ptx checks), and by g++ against the
// CPU emulation header minivgg/gpu/emulate.h (tests, device="emulated"). So:
// no host headers, no __shared__/__syncthreads, no atomics; every kernel is a
// grid-stride loop over the elements it writes ("one thread per output
// element", gather rather than scatter), which makes the result independent of
// the grid size and of the order threads run in.
#ifndef MINIVGG_COMMON_CUH
#define MINIVGG_COMMON_CUH

// 64-bit element indices: a VGG activation on a large image passes 2^31 elements
// in im2col buffers (C*9*H*W for conv1_2 at 2048x2048 is 2.4e9).
typedef long long idx_t;

// for (i over [0, n)) with a stride of the whole grid, Caffe's CUDA_KERNEL_LOOP.
#define GRID_STRIDE_LOOP(i, n)                                                  \
    for (idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; i < (idx_t)(n); \
         i += (idx_t)blockDim.x * gridDim.x)

// The element type, chosen by the loader with a prepended #define (float on the
// GPU; double too in the emulation, for finite-difference checks).
#ifndef MINIVGG_REAL
#define MINIVGG_REAL float
#endif
typedef MINIVGG_REAL real;

// Math on `real` without host headers: NVRTC and nvcc provide powf/sqrtf/fabsf and
// pow/sqrt/fabs as built-ins, the emulation header gets them from <math.h>.
__device__ __forceinline__ float real_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double real_pow(double a, double b) { return pow(a, b); }
__device__ __forceinline__ float real_sqrt(float a) { return sqrtf(a); }
__device__ __forceinline__ double real_sqrt(double a) { return sqrt(a); }
__device__ __forceinline__ float real_abs(float a) { return fabsf(a); }
__device__ __forceinline__ double real_abs(double a) { return fabs(a); }

#endif  // MINIVGG_COMMON_CUH
