// The CUDA attention kernels (src/kernels/cuda/attention.cu), run on the host through
// emulate.h, against a plain reference that materialises the weights, in double precision. The
// reference's own gradients are checked against finite differences of its forward pass first,
// so the kernels are held to an independent oracle. Compiled once per element type and width
// (scripts/cuda_emulate.sh): -DELEMENT=float|double -DWIDTH=16|32|64|128.
//
// Cases: softmax and Taylor; with and without a bias; key padding, causal times and a pair mask
// with a query that sees no key; Taylor's clamp below eps; a NaN in one query; more queries than
// a block of rows and more keys than a tile. Gradient buffers start non-zero: the kernels must
// add into them.
#include "emulate.h"

#include "../../src/kernels/cuda/attention.cu"

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

using T = ELEMENT;

struct Case {
    std::string name;
    int P, H, nq, nk, d, e;
    bool taylor = false, bias = false, padded = false, causal = false, pairs = false;
    double scale = 0.4, eps = 1e-6;
    bool nan_query = false;
};

struct Problem {
    Case c;
    std::vector<double> q, k, v, bias, grad_out;
    std::vector<uint8_t> key_valid, pairs;
    std::vector<uint32_t> query_time, key_time;

    size_t qi(int ph, int i, int x) const { return ((size_t)ph * c.nq + i) * c.d + x; }
    size_t ki(int ph, int j, int x) const { return ((size_t)ph * c.nk + j) * c.d + x; }
    size_t vi(int ph, int j, int x) const { return ((size_t)ph * c.nk + j) * c.e + x; }
    size_t oi(int ph, int i, int x) const { return ((size_t)ph * c.nq + i) * c.e + x; }
    size_t bi(int ph, int i, int j) const { return ((size_t)ph * c.nq + i) * c.nk + j; }

    bool visible(int p, int i, int j) const {
        if (!key_valid.empty() && !key_valid[(size_t)p * c.nk + j]) return false;
        if (!key_time.empty() && key_time[(size_t)p * c.nk + j] > query_time[(size_t)p * c.nq + i])
            return false;
        if (!pairs.empty() && !pairs[((size_t)p * c.nq + i) * c.nk + j]) return false;
        return true;
    }
};

Problem make(const Case &c, unsigned seed) {
    Problem pr{c};
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    auto fill = [&](std::vector<double> &x, size_t n, double s) {
        x.resize(n);
        for (auto &y : x) y = s * u(rng);
    };
    const size_t ph = (size_t)c.P * c.H;
    fill(pr.q, ph * c.nq * c.d, 1.0);
    fill(pr.k, ph * c.nk * c.d, 1.0);
    fill(pr.v, ph * c.nk * c.e, 1.0);
    fill(pr.grad_out, ph * c.nq * c.e, 1.0);
    if (c.bias) fill(pr.bias, ph * c.nq * c.nk, 2.0);
    if (c.padded) {
        pr.key_valid.assign((size_t)c.P * c.nk, 1);
        for (int j = c.nk - 3; j < c.nk; j++) pr.key_valid[(size_t)(c.P - 1) * c.nk + j] = 0;
    }
    if (c.causal) {
        for (int p = 0; p < c.P; p++) {
            for (int i = 0; i < c.nq; i++) pr.query_time.push_back(i);
            for (int j = 0; j < c.nk; j++) pr.key_time.push_back(j);
        }
    }
    if (c.pairs) {
        pr.pairs.resize((size_t)c.P * c.nq * c.nk);
        for (auto &x : pr.pairs) x = u(rng) < 0.6;
        // query 3 of the first problem sees no key
        for (int j = 0; j < c.nk; j++) pr.pairs[(size_t)3 * c.nk + j] = 0;
    }
    if (c.nan_query) pr.q[pr.qi(c.H, 5, 0)] = NAN; // problem 1, head 0, query 5
    return pr;
}

struct Result {
    std::vector<double> out, dq, dk, dv, dbias;
};

// The reference: weights materialised row by row, gradients by hand.
Result reference(const Problem &pr) {
    const Case &c = pr.c;
    Result r;
    const size_t ph_n = (size_t)c.P * c.H;
    r.out.assign(ph_n * c.nq * c.e, 0);
    r.dq.assign(pr.q.size(), 0);
    r.dk.assign(pr.k.size(), 0);
    r.dv.assign(pr.v.size(), 0);
    r.dbias.assign(ph_n * c.nq * c.nk, 0);
    std::vector<double> x(c.nk), w(c.nk), dw(c.nk);
    std::vector<char> vis(c.nk);
    for (int ph = 0; ph < (int)ph_n; ph++) {
        const int p = ph / c.H;
        for (int i = 0; i < c.nq; i++) {
            for (int j = 0; j < c.nk; j++) {
                double dot = 0;
                for (int a = 0; a < c.d; a++) dot += pr.q[pr.qi(ph, i, a)] * pr.k[pr.ki(ph, j, a)];
                x[j] = c.scale * dot + (c.bias ? pr.bias[pr.bi(ph, i, j)] : 0.0);
                vis[j] = pr.visible(p, i, j);
            }
            double sum = 0;
            bool clamped = false;
            if (c.taylor) {
                for (int j = 0; j < c.nk; j++) {
                    w[j] = vis[j] ? 1 + x[j] + x[j] * x[j] / 2 : 0;
                    sum += w[j];
                }
                clamped = sum < c.eps;
                const double z = clamped ? c.eps : sum;
                for (int j = 0; j < c.nk; j++) w[j] /= z;
            } else {
                double m = -INFINITY;
                for (int j = 0; j < c.nk; j++)
                    if (vis[j]) m = std::max(m, x[j]);
                for (int j = 0; j < c.nk; j++) {
                    w[j] = (vis[j] && m > -INFINITY) ? std::exp(x[j] - m) : 0;
                    sum += w[j];
                }
                for (int j = 0; j < c.nk; j++) w[j] = sum > 0 ? w[j] / sum : 0;
            }
            for (int j = 0; j < c.nk; j++)
                for (int a = 0; a < c.e; a++) r.out[pr.oi(ph, i, a)] += w[j] * pr.v[pr.vi(ph, j, a)];
            // backward of L = sum(grad_out * out)
            double dsum = 0;
            for (int j = 0; j < c.nk; j++) {
                dw[j] = 0;
                for (int a = 0; a < c.e; a++) dw[j] += pr.grad_out[pr.oi(ph, i, a)] * pr.v[pr.vi(ph, j, a)];
                dsum += w[j] * dw[j];
                for (int a = 0; a < c.e; a++) r.dv[pr.vi(ph, j, a)] += w[j] * pr.grad_out[pr.oi(ph, i, a)];
            }
            for (int j = 0; j < c.nk; j++) {
                double ds;
                if (c.taylor) {
                    // w = t / z with z = max(sum t, eps): dL/dt = (dw - [not clamped] dsum) / z
                    const double z = clamped ? c.eps : sum;
                    ds = vis[j] ? (dw[j] - (clamped ? 0.0 : dsum)) / z * (1 + x[j]) : 0;
                } else {
                    ds = w[j] * (dw[j] - dsum);
                }
                r.dbias[pr.bi(ph, i, j)] = ds;
                for (int a = 0; a < c.d; a++) {
                    r.dq[pr.qi(ph, i, a)] += c.scale * ds * pr.k[pr.ki(ph, j, a)];
                    r.dk[pr.ki(ph, j, a)] += c.scale * ds * pr.q[pr.qi(ph, i, a)];
                }
            }
        }
    }
    if (!c.bias) r.dbias.clear();
    return r;
}

double loss(const Problem &pr) {
    Result r = reference(pr);
    double l = 0;
    for (size_t x = 0; x < r.out.size(); x++) l += pr.grad_out[x] * r.out[x];
    return l;
}

// The reference's gradients against central differences of its loss, at a few entries of each
// input. Returns false (and says where) when one is off.
bool check_reference(const Problem &base) {
    Result r = reference(base);
    std::mt19937 rng(7);
    struct Input {
        const char *name;
        std::vector<double> Problem::*field;
        const std::vector<double> *grad;
    } inputs[] = {{"q", &Problem::q, &r.dq},
                  {"k", &Problem::k, &r.dk},
                  {"v", &Problem::v, &r.dv},
                  {"bias", &Problem::bias, &r.dbias}};
    for (auto &in : inputs) {
        const size_t n = (base.*in.field).size();
        for (int t = 0; t < 6 && n > 0; t++) {
            const size_t at = rng() % n;
            Problem plus = base, minus = base;
            const double h = 1e-5;
            (plus.*in.field)[at] += h;
            (minus.*in.field)[at] -= h;
            const double fd = (loss(plus) - loss(minus)) / (2 * h);
            const double an = (*in.grad)[at];
            if (std::fabs(fd - an) > 1e-6 + 1e-5 * std::fabs(fd)) {
                std::printf("  reference gradient of %s[%zu]: %.9g by hand, %.9g by differences\n",
                            in.name, at, an, fd);
                return false;
            }
        }
    }
    return true;
}

template <typename U> std::vector<U> cast(const std::vector<double> &x) {
    return std::vector<U>(x.begin(), x.end());
}

Result run_kernels(const Problem &pr, double prior) {
    const Case &c = pr.c;
    auto q = cast<T>(pr.q), k = cast<T>(pr.k), v = cast<T>(pr.v), g = cast<T>(pr.grad_out);
    auto bias = cast<T>(pr.bias);
    const size_t rows = (size_t)c.P * c.H * c.nq;
    std::vector<T> out(rows * c.e), stat(rows), dsum_buf(rows);
    std::vector<T> dq(q.size(), (T)prior), dk(k.size(), (T)prior), dv(v.size(), (T)prior);
    std::vector<T> dbias(bias.size(), (T)prior);
    auto key_valid = pr.key_valid, pairs = pr.pairs;
    auto query_time = pr.query_time, key_time = pr.key_time;
    auto ptr = [](auto &x) -> unsigned long long { return x.empty() ? 0 : (unsigned long long)(uintptr_t)x.data(); };
    Args a{};
    a.q = ptr(q), a.k = ptr(k), a.v = ptr(v), a.bias = ptr(bias);
    a.out = ptr(out), a.stat = ptr(stat);
    a.key_valid = ptr(key_valid), a.pairs = ptr(pairs);
    a.query_time = ptr(query_time), a.key_time = ptr(key_time);
    a.grad_out = ptr(g), a.dsum = ptr(dsum_buf);
    a.dq = ptr(dq), a.dk = ptr(dk), a.dv = ptr(dv), a.dbias = ptr(dbias);
    a.problems = c.P, a.heads = c.H, a.nq = c.nq, a.nk = c.nk, a.d = c.d, a.e = c.e;
    a.taylor = c.taylor, a.scale = c.scale, a.eps = c.eps;
    const unsigned ph = c.P * c.H;
    launch(attention_forward, ph * ((c.nq + ROWS - 1) / ROWS), ROWS, a);
    launch(attention_dsum, (unsigned)((rows + 255) / 256), 256, a);
    launch(attention_grad_queries, ph * ((c.nq + ROWS - 1) / ROWS), ROWS, a);
    launch(attention_grad_keys, ph * ((c.nk + ROWS - 1) / ROWS), ROWS, a);
    auto back = [prior](const std::vector<T> &x, bool grad) {
        std::vector<double> y(x.begin(), x.end());
        if (grad)
            for (auto &z : y) z -= prior;
        return y;
    };
    return {back(out, false), back(dq, true), back(dk, true), back(dv, true), back(dbias, true)};
}

// The worst |got - want| / (atol + rtol |want|) of a tensor: at most 1 passes; a NaN where the
// reference has none fails.
double worst(const std::vector<double> &got, const std::vector<double> &want, double atol, double rtol) {
    if (got.size() != want.size()) return INFINITY;
    double w = 0;
    for (size_t x = 0; x < got.size(); x++) {
        const double d = std::fabs(got[x] - want[x]) / (atol + rtol * std::fabs(want[x]));
        if (!(d <= w)) w = std::isnan(d) ? INFINITY : d;
    }
    return w;
}

int main() {
    const bool f32 = sizeof(T) == 4;
    const double atol = f32 ? 1e-4 : 1e-9, rtol = f32 ? 1e-3 : 1e-9;
    // head widths that fill this build's width, and ones that do not
    const int d = WIDTH, e = WIDTH / 2 + 3 > WIDTH ? WIDTH : WIDTH / 2 + 3;
    std::vector<Case> cases = {
        {"softmax plain", 2, 2, 70, 45, d, e},
        {"softmax bias padded causal", 2, 2, 70, 45, e, d},
        {"softmax pairs (a query sees no key)", 2, 2, 33, 33, d, e},
        {"taylor plain", 2, 2, 70, 45, d, e},
        {"taylor bias padded causal", 2, 2, 66, 40, e, d},
        {"taylor clamped (eps above every sum)", 1, 2, 20, 19, 3, e},
        {"softmax NaN in one query", 2, 2, 20, 37, 3, e},
    };
    cases[1].bias = cases[1].padded = cases[1].causal = true;
    cases[2].pairs = cases[2].bias = true;
    cases[3].taylor = true;
    cases[4].taylor = cases[4].bias = cases[4].padded = cases[4].causal = true;
    cases[4].scale = 0.1;
    cases[5].taylor = true, cases[5].eps = 100; // every sum is under 19 × 2.9
    cases[6].nan_query = true;
    int failed = 0;
    std::printf("attention.cu on the host, %s, width %d: |kernel - reference| / (%.0e + %.0e |reference|)\n",
                f32 ? "f32" : "f64", WIDTH, atol, rtol);
    for (size_t n = 0; n < cases.size(); n++) {
        const Case &c = cases[n];
        Problem pr = make(c, 1000 + n);
        bool ok = true;
        if (!c.nan_query) {
            if (!check_reference(pr)) {
                std::printf("%-40s reference gradients wrong\n", c.name.c_str());
                failed++;
                continue;
            }
        }
        Result want = reference(pr);
        Result got = run_kernels(pr, 0.5);
        if (c.nan_query) {
            // the NaN query's output row is NaN; every other row matches
            const int ph = c.H; // problem 1, head 0
            for (int i = 0; i < c.nq; i++)
                for (int x = 0; x < c.e; x++) {
                    const size_t at = pr.oi(ph, i, x);
                    const bool nan = std::isnan(got.out[at]);
                    if (i == 5 ? !nan : nan) ok = false;
                    if (i == 5) got.out[at] = want.out[at] = 0;
                }
            const double wo = worst(got.out, want.out, atol, rtol);
            ok = ok && wo <= 1;
            std::printf("%-40s out %.1e, NaN row NaN and alone: %s  %s\n", c.name.c_str(), wo,
                        ok ? "yes" : "no", ok ? "ok" : "FAILED");
        } else {
            const double wo = worst(got.out, want.out, atol, rtol);
            const double wq = worst(got.dq, want.dq, atol, rtol);
            const double wk = worst(got.dk, want.dk, atol, rtol);
            const double wv = worst(got.dv, want.dv, atol, rtol);
            const double wb = worst(got.dbias, want.dbias, atol, rtol);
            ok = wo <= 1 && wq <= 1 && wk <= 1 && wv <= 1 && wb <= 1;
            std::printf("%-40s out %.1e dq %.1e dk %.1e dv %.1e dbias %.1e  %s\n", c.name.c_str(), wo, wq,
                        wk, wv, wb, ok ? "ok" : "FAILED");
        }
        failed += !ok;
    }
    if (failed) std::printf("%d of %zu cases FAILED\n", failed, cases.size());
    return failed ? 1 : 0;
}
