// Memory-efficient attention on CUDA: out = normalize(scale * q.k^T + bias) . v without ever
// storing the [nq, nk] weights. The forward pass keeps a running maximum and sum per query
// (online softmax) and saves one number per query (its log-sum-exp, or the Taylor sum); the
// backward pass recomputes every score from q and k. Memory grows with nq + nk, not nq * nk:
// attention across all n^2 edges of a graph at n = 128 (n^4 pairs per head) needs megabytes.
//
// The same arithmetic as the CPU's blocked kernel (src/kernels/cpu/flash.rs), which the GPU
// check compares it against:
// - a key is visible when it is real (key_valid), not later than the query (times), and
//   allowed by the pair mask (pairs); hidden keys weigh exactly 0;
// - softmax: a query that sees no key gets 0 and a log-sum-exp of -inf; a NaN score makes
//   the output NaN (it never vanishes);
// - Taylor: weights (1 + s + s^2/2) / max(sum, eps), hidden ones 0; the clamp passes the
//   gradient through the sum only where sum >= eps.
//
// Layout: q [P, H, nq, d], k [P, H, nk, d], v [P, H, nk, e], bias [P, H, nq, nk], out
// [P, H, nq, e], all contiguous; one block of ROWS threads per (problem, head) and block of
// queries (keys, for the key and value gradients), each thread one row, and tiles of keys
// (queries) staged in shared memory. Every thread owns the gradient rows it writes: no atomics.
// Gradients are added into what the buffers hold (dfdx's accumulation).
//
// Kernels are templated on the element type and on W, a bound on the head widths d and e that
// keeps each thread's rows in registers; the host picks the least W in {16, 32, 64, 128}.
// Scores, maxima and sums are computed in the element type.

#define ROWS 64

struct Args {
    // device pointers; 0 where absent
    unsigned long long q, k, v, bias, out, stat;
    unsigned long long key_valid;  // u8 [P, nk]
    unsigned long long query_time; // u32 [P, nq]
    unsigned long long key_time;   // u32 [P, nk]
    unsigned long long pairs;      // u8 [P, nq, nk]
    unsigned long long grad_out, dsum, dq, dk, dv, dbias;
    int problems, heads, nq, nk, d, e;
    int taylor;
    double scale, eps;
};
// the layout src/kernels/cuda/attention.rs asserts for its copy of the struct
static_assert(sizeof(Args) == 176 && __builtin_offsetof(Args, problems) == 128 &&
                  __builtin_offsetof(Args, taylor) == 152 && __builtin_offsetof(Args, scale) == 160,
              "Args differs from src/kernels/cuda/attention.rs");

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }
__device__ __forceinline__ float log_of(float x) { return logf(x); }
__device__ __forceinline__ double log_of(double x) { return log(x); }

// Keys (or queries) per shared-memory tile: 32, or 16 for rows over 32 wide (static shared
// memory stays under 48 KB in double precision).
template <int W> struct Tile { static const int N = W <= 32 ? 32 : 16; };

__device__ __forceinline__ bool visible(const Args &a, int p, int i, int j) {
    if (a.key_valid && !((const unsigned char *)a.key_valid)[(size_t)p * a.nk + j]) return false;
    if (a.key_time && ((const unsigned *)a.key_time)[(size_t)p * a.nk + j] >
                          ((const unsigned *)a.query_time)[(size_t)p * a.nq + i])
        return false;
    if (a.pairs && !((const unsigned char *)a.pairs)[((size_t)p * a.nq + i) * a.nk + j]) return false;
    return true;
}

// The block's (problem * heads + head) and its first row, rows being `rows` long.
__device__ __forceinline__ void place(int rows, int &ph, int &first) {
    int blocks = (rows + ROWS - 1) / ROWS;
    ph = blockIdx.x / blocks;
    first = (blockIdx.x % blocks) * ROWS;
}

// `n` rows of `width` from `src` (row stride `width`) into `dst` (row stride W), by the block.
template <typename T, int W>
__device__ __forceinline__ void stage(T *dst, const T *src, int n, int width) {
    for (int x = threadIdx.x; x < n * width; x += blockDim.x) dst[(x / width) * W + x % width] = src[x];
}

// Row `row` of a [rows, width] buffer into registers, zero past `width` (or everywhere for a
// thread past the last row).
template <typename T, int W>
__device__ __forceinline__ void load_row(T (&r)[W], unsigned long long buffer, size_t row, int width, bool live) {
#pragma unroll
    for (int c = 0; c < W; c++) r[c] = (live && c < width) ? ((const T *)buffer)[row * width + c] : T(0);
}

template <typename T, int W> __device__ __forceinline__ void zero_row(T (&r)[W]) {
#pragma unroll
    for (int c = 0; c < W; c++) r[c] = T(0);
}

// The weight of score x (scaled, biased) under the normaliser, before dividing by the sum.
template <typename T> __device__ __forceinline__ T taylor_of(T x) { return T(1) + x + x * x * T(0.5); }

template <typename T, int W> __device__ void forward(const Args &a) {
    const int BK = Tile<W>::N;
    __shared__ T ks[BK * W];
    __shared__ T vs[BK * W];
    __shared__ T scores[BK * ROWS]; // each thread's scores of the tile, [key][thread]
    T *s = scores + threadIdx.x;
    int ph, first;
    place(a.nq, ph, first);
    const int p = ph / a.heads, i = first + threadIdx.x;
    const bool live = i < a.nq;
    const T scale = (T)a.scale;
    const T *K = (const T *)a.k + (size_t)ph * a.nk * a.d;
    const T *V = (const T *)a.v + (size_t)ph * a.nk * a.e;
    const T *bias = a.bias ? (const T *)a.bias + ((size_t)ph * a.nq + i) * a.nk : 0;
    T qr[W], acc[W];
    load_row(qr, a.q, (size_t)ph * a.nq + i, a.d, live);
    zero_row(acc);
    T m = neg_inf<T>(), l = T(0);
    bool nan = false;
    for (int j0 = 0; j0 < a.nk; j0 += BK) {
        const int bk = min(BK, a.nk - j0);
        __syncthreads();
        stage<T, W>(ks, K + (size_t)j0 * a.d, bk, a.d);
        stage<T, W>(vs, V + (size_t)j0 * a.e, bk, a.e);
        __syncthreads();
        if (!live) continue;
        T tile_max = neg_inf<T>();
        for (int jj = 0; jj < bk; jj++) {
            const int j = j0 + jj;
            T dot = T(0);
#pragma unroll
            for (int c = 0; c < W; c++) dot += qr[c] * ks[jj * W + c];
            T x = scale * dot + (bias ? bias[j] : T(0));
            if (a.taylor) {
                x = visible(a, p, i, j) ? taylor_of(x) : T(0);
            } else if (!visible(a, p, i, j)) {
                x = neg_inf<T>();
            }
            s[jj * ROWS] = x;
            tile_max = fmax(tile_max, x); // skips NaN
        }
        if (a.taylor) {
            for (int jj = 0; jj < bk; jj++) {
                const T w = s[jj * ROWS];
                l += w;
#pragma unroll
                for (int c = 0; c < W; c++) acc[c] += w * vs[jj * W + c];
            }
            continue;
        }
        const T new_m = fmax(m, tile_max);
        if (new_m == neg_inf<T>()) {
            // no visible key yet, or nothing but NaN: a NaN must not vanish
            for (int jj = 0; jj < bk; jj++) nan = nan || isnan(s[jj * ROWS]);
            continue;
        }
        const T correction = m == neg_inf<T>() ? T(0) : exp_of(m - new_m);
        l *= correction;
#pragma unroll
        for (int c = 0; c < W; c++) acc[c] *= correction;
        for (int jj = 0; jj < bk; jj++) {
            const T w = exp_of(s[jj * ROWS] - new_m);
            l += w;
#pragma unroll
            for (int c = 0; c < W; c++) acc[c] += w * vs[jj * W + c];
        }
        m = new_m;
    }
    if (!live) return;
    T inv, stat;
    if (a.taylor) {
        const T z = l < (T)a.eps ? (T)a.eps : l; // keeps a NaN
        inv = !(z <= T(0)) ? T(1) / z : T(0);
        stat = l;
    } else if (nan) {
        inv = quiet_nan<T>();
        stat = quiet_nan<T>();
    } else if (!(l <= T(0))) { // a NaN sum goes this way too, and on to the output
        inv = T(1) / l;
        stat = m + log_of(l);
    } else {
        inv = T(0);
        stat = neg_inf<T>();
    }
    T *out = (T *)a.out + ((size_t)ph * a.nq + i) * a.e;
#pragma unroll
    for (int c = 0; c < W; c++)
        if (c < a.e) out[c] = acc[c] * inv;
    ((T *)a.stat)[(size_t)ph * a.nq + i] = stat;
}

// D_i = dO_i . O_i, one thread per query.
template <typename T> __device__ void dsum(const Args &a) {
    const size_t rows = (size_t)a.problems * a.heads * a.nq;
    const size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const T *g = (const T *)a.grad_out + r * a.e;
    const T *o = (const T *)a.out + r * a.e;
    T sum = T(0);
    for (int c = 0; c < a.e; c++) sum += g[c] * o[c];
    ((T *)a.dsum)[r] = sum;
}

// The weight of (i, j) and the score's gradient, from the scaled, biased score x, the query's
// saved statistic, D_i, and dp = dO_i . v_j.
template <typename T>
__device__ __forceinline__ void weight_and_grad(const Args &a, bool vis, T x, T stat, T dsum_i, T dp,
                                                T &w, T &ds) {
    if (a.taylor) {
        const T eps = (T)a.eps;
        const T inv_z = T(1) / (stat < eps ? eps : stat);
        const T through = stat >= eps ? dsum_i : T(0); // the clamp passes no gradient
        w = vis ? taylor_of(x) * inv_z : T(0);
        ds = vis ? (dp - through) * inv_z * (T(1) + x) : T(0);
    } else {
        w = (vis && stat != neg_inf<T>()) ? exp_of(x - stat) : T(0);
        ds = w * (dp - dsum_i);
    }
}

// dq (and the bias gradient): one thread per query, tiles of keys and values.
template <typename T, int W> __device__ void grad_queries(const Args &a) {
    const int BK = Tile<W>::N;
    __shared__ T ks[BK * W];
    __shared__ T vs[BK * W];
    int ph, first;
    place(a.nq, ph, first);
    const int p = ph / a.heads, i = first + threadIdx.x;
    const bool live = i < a.nq;
    const size_t row = (size_t)ph * a.nq + i;
    const T scale = (T)a.scale;
    const T *K = (const T *)a.k + (size_t)ph * a.nk * a.d;
    const T *V = (const T *)a.v + (size_t)ph * a.nk * a.e;
    const T *bias = a.bias ? (const T *)a.bias + row * a.nk : 0;
    T *dbias = a.dbias ? (T *)a.dbias + row * a.nk : 0;
    T qr[W], g[W], dq[W];
    load_row(qr, a.q, row, a.d, live);
    load_row(g, a.grad_out, row, a.e, live);
    zero_row(dq);
    const T stat = live ? ((const T *)a.stat)[row] : T(0);
    const T dsum_i = live ? ((const T *)a.dsum)[row] : T(0);
    for (int j0 = 0; j0 < a.nk; j0 += BK) {
        const int bk = min(BK, a.nk - j0);
        __syncthreads();
        stage<T, W>(ks, K + (size_t)j0 * a.d, bk, a.d);
        stage<T, W>(vs, V + (size_t)j0 * a.e, bk, a.e);
        __syncthreads();
        if (!live) continue;
        for (int jj = 0; jj < bk; jj++) {
            const int j = j0 + jj;
            T dot = T(0), dp = T(0);
#pragma unroll
            for (int c = 0; c < W; c++) {
                dot += qr[c] * ks[jj * W + c];
                dp += g[c] * vs[jj * W + c];
            }
            const T x = scale * dot + (bias ? bias[j] : T(0));
            T w, ds;
            weight_and_grad(a, visible(a, p, i, j), x, stat, dsum_i, dp, w, ds);
            if (dbias) dbias[j] += ds;
#pragma unroll
            for (int c = 0; c < W; c++) dq[c] += ds * ks[jj * W + c];
        }
    }
    if (!live) return;
    T *out = (T *)a.dq + row * a.d;
#pragma unroll
    for (int c = 0; c < W; c++)
        if (c < a.d) out[c] += scale * dq[c];
}

// dk and dv: one thread per key, tiles of queries and their output gradients.
template <typename T, int W> __device__ void grad_keys(const Args &a) {
    const int BQ = Tile<W>::N;
    __shared__ T qs[BQ * W];
    __shared__ T gs[BQ * W];
    __shared__ T stats[BQ];
    __shared__ T dsums[BQ];
    int ph, first;
    place(a.nk, ph, first);
    const int p = ph / a.heads, j = first + threadIdx.x;
    const bool live = j < a.nk;
    const size_t row = (size_t)ph * a.nk + j;
    const T scale = (T)a.scale;
    const T *Q = (const T *)a.q + (size_t)ph * a.nq * a.d;
    const T *G = (const T *)a.grad_out + (size_t)ph * a.nq * a.e;
    const T *bias = a.bias ? (const T *)a.bias + (size_t)ph * a.nq * a.nk : 0;
    T kr[W], vr[W], dk[W], dv[W];
    load_row(kr, a.k, row, a.d, live);
    load_row(vr, a.v, row, a.e, live);
    zero_row(dk);
    zero_row(dv);
    for (int i0 = 0; i0 < a.nq; i0 += BQ) {
        const int bq = min(BQ, a.nq - i0);
        __syncthreads();
        stage<T, W>(qs, Q + (size_t)i0 * a.d, bq, a.d);
        stage<T, W>(gs, G + (size_t)i0 * a.e, bq, a.e);
        for (int x = threadIdx.x; x < bq; x += blockDim.x) {
            stats[x] = ((const T *)a.stat)[(size_t)ph * a.nq + i0 + x];
            dsums[x] = ((const T *)a.dsum)[(size_t)ph * a.nq + i0 + x];
        }
        __syncthreads();
        if (!live) continue;
        for (int ii = 0; ii < bq; ii++) {
            const int i = i0 + ii;
            T dot = T(0), dp = T(0);
#pragma unroll
            for (int c = 0; c < W; c++) {
                dot += qs[ii * W + c] * kr[c];
                dp += gs[ii * W + c] * vr[c];
            }
            const T x = scale * dot + (bias ? bias[(size_t)i * a.nk + j] : T(0));
            T w, ds;
            weight_and_grad(a, visible(a, p, i, j), x, stats[ii], dsums[ii], dp, w, ds);
#pragma unroll
            for (int c = 0; c < W; c++) {
                dv[c] += w * gs[ii * W + c];
                dk[c] += ds * qs[ii * W + c];
            }
        }
    }
    if (!live) return;
#pragma unroll
    for (int c = 0; c < W; c++) {
        if (c < a.d) ((T *)a.dk)[row * a.d + c] += scale * dk[c];
        if (c < a.e) ((T *)a.dv)[row * a.e + c] += dv[c];
    }
}

// One element type and one width per compilation (build.rs compiles every pair into a module
// of its own, so a device compiles only the kernels it runs).
#if !defined(ELEMENT) || !defined(WIDTH)
#error "compile with -DELEMENT=float or double and -DWIDTH=16, 32, 64 or 128"
#endif

extern "C" __global__ void attention_dsum(const Args a) { dsum<ELEMENT>(a); }
extern "C" __global__ void __launch_bounds__(ROWS) attention_forward(const Args a) {
    forward<ELEMENT, WIDTH>(a);
}
extern "C" __global__ void __launch_bounds__(ROWS) attention_grad_queries(const Args a) {
    grad_queries<ELEMENT, WIDTH>(a);
}
extern "C" __global__ void __launch_bounds__(ROWS) attention_grad_keys(const Args a) {
    grad_keys<ELEMENT, WIDTH>(a);
}
