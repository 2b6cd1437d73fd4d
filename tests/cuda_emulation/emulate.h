// Just enough of CUDA to run a kernel file on the host: each block's threads are real threads
// that meet at __syncthreads (a barrier), blocks run one after another, and __shared__ arrays
// are static (one block at a time uses them). Slow, but it runs the kernels' own code, so their
// indexing, tiling, masking and arithmetic are checked on a machine without a GPU.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(threads)

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};

inline Dim3 blockIdx, blockDim, gridDim;
inline thread_local Dim3 threadIdx;
inline std::barrier<> *block_barrier = nullptr;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

inline float __int_as_float(int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline double __longlong_as_double(long long bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}

using std::exp;
using std::fmax;
using std::isnan;
using std::log;
using std::min;

// Runs `kernel` over `blocks` blocks of `threads` threads.
template <typename Args>
void launch(void (*kernel)(const Args), unsigned blocks, unsigned threads, const Args &args) {
    gridDim.x = blocks;
    blockDim.x = threads;
    for (unsigned b = 0; b < blocks; b++) {
        blockIdx.x = b;
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; t++)
            pool.emplace_back([&, t] {
                threadIdx.x = t;
                kernel(args);
            });
        for (auto &th : pool) th.join();
    }
}
