// A CPU emulation of the CUDA execution model, enough to run minivgg's kernels.
//
// minivgg/gpu/emulate.py compiles a translation unit
//
//     #include "emulate.h"
//     <the kernel file, exactly as NVRTC gets it>
//     one launcher per kernel: minivgg_launch_<name>, minivgg_signature_<name>
//
// with g++ into a shared library and calls the launchers through ctypes. A launch
// takes the grid, the block and `void **args` (one pointer per kernel argument,
// pointing at the argument's value), the same convention as cuLaunchKernel, and
// runs the kernel body once for every (block, thread) of the grid, sequentially,
// in forward or reverse order. That is faithful for kernels that do not use
// __shared__, __syncthreads or atomics (which is why those are not defined
// here: a kernel that uses them does not compile against this header) and whose
// threads write disjoint elements; running both orders checks the latter.
#ifndef MINIVGG_EMULATE_H
#define MINIVGG_EMULATE_H

#include <math.h>
#include <stddef.h>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in variables. thread_local so that two Python threads may launch at once.
static thread_local uint3 blockIdx, threadIdx;
static thread_local dim3 blockDim, gridDim;

namespace minivgg_emu {

// One character per kernel parameter type, checked by the Python launcher against
// the arguments it passes: a wrong order, count or dtype is an error, not a silent
// reinterpretation (on a real GPU it would be).
template <class T> struct code;
template <> struct code<int> { static constexpr char c = 'i'; };
template <> struct code<unsigned int> { static constexpr char c = 'u'; };
template <> struct code<long long> { static constexpr char c = 'q'; };
template <> struct code<float> { static constexpr char c = 'f'; };
template <> struct code<double> { static constexpr char c = 'd'; };
template <class T> struct code<T *> {  // pointers: the element's code in upper case
    static constexpr char c = (char)(code<typename std::remove_const<T>::type>::c - 'a' + 'A');
};

template <class... A> const char *signature(void (*)(A...))
{
    static const char s[] = {code<A>::c..., '\0'};
    return s;
}

// 'w' for each parameter that points to writable memory, 'r' for the others.
template <class T> struct writable { static constexpr bool v = false; };
template <class T> struct writable<T *> { static constexpr bool v = !std::is_const<T>::value; };
template <class... A> const char *writable_mask(void (*)(A...))
{
    static const char s[] = {(writable<A>::v ? 'w' : 'r')..., '\0'};
    return s;
}

template <class... A, size_t... I>
int launch(void (*f)(A...), const unsigned int *grid, const unsigned int *block, void **args,
           int reverse, std::index_sequence<I...>)
{
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || block[0] == 0 || block[1] == 0 || block[2] == 0)
        return 1;  // cudaErrorInvalidConfiguration
    if ((unsigned long long)block[0] * block[1] * block[2] > 1024)
        return 2;  // more threads per block than any GPU allows
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    const long long nb = (long long)grid[0] * grid[1] * grid[2];
    const long long nt = (long long)block[0] * block[1] * block[2];
    for (long long bi = 0; bi < nb; ++bi) {
        const long long b = reverse ? nb - 1 - bi : bi;
        blockIdx.x = (unsigned)(b % grid[0]);
        blockIdx.y = (unsigned)((b / grid[0]) % grid[1]);
        blockIdx.z = (unsigned)(b / ((long long)grid[0] * grid[1]));
        for (long long ti = 0; ti < nt; ++ti) {
            const long long t = reverse ? nt - 1 - ti : ti;
            threadIdx.x = (unsigned)(t % block[0]);
            threadIdx.y = (unsigned)((t / block[0]) % block[1]);
            threadIdx.z = (unsigned)(t / ((long long)block[0] * block[1]));
            f(*static_cast<A *>(args[I])...);
        }
    }
    return 0;
}

template <class... A>
int launch(void (*f)(A...), const unsigned int *grid, const unsigned int *block, void **args, int reverse)
{
    return launch(f, grid, block, args, reverse, std::index_sequence_for<A...>{});
}

}  // namespace minivgg_emu

// Emitted after the kernel file, once per kernel.
#define MINIVGG_EMULATE_EXPORT(name)                                                         \
    extern "C" int minivgg_launch_##name(const unsigned int *g, const unsigned int *b,       \
                                         void **args, int reverse)                           \
    {                                                                                        \
        return minivgg_emu::launch(name, g, b, args, reverse);                               \
    }                                                                                        \
    extern "C" const char *minivgg_signature_##name(void) { return minivgg_emu::signature(name); } \
    extern "C" const char *minivgg_writable_##name(void) { return minivgg_emu::writable_mask(name); }

#endif  // MINIVGG_EMULATE_H
