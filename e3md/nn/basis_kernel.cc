// The e3md model's edge basis (e3md/nn/basis.py, basis(..., factored=True) with the Bessel
// radial basis and a smooth or cosine cutoff) as CPU kernels called through XLA's FFI
// (e3md/nn/cpu_kernels.py builds and registers them). Per edge vector v = r_ij (Å):
//
//   r = |v|,  u = v / r  (u = v where r^2 <= the dtype's tiny, as e3md.nn.ops.normalize_and_norm)
//   rad[e, k] = g_k(r) c(r),   g_k(r) = sqrt(2 / l) sin((k+1) pi r / l) / r   (0 for r > l)
//   y[e, i]   = Y_i(u)  (real spherical harmonics, Racah normalisation, e3x's Cartesian order)
//
// with the cutoff c(r) = exp(1 - 1 / (1 - (r/rc)^2)) (smooth) or cos(pi r/rc)/2 + 1/2
// (cosine), 0 for r >= rc. The reverse mode recomputes all of it per edge (nothing is stored):
//
//   dv = (sum_k drad_k d(g_k c)/dr) u + (G - u (u . G)) / r,   G = sum_i dy_i grad_u Y_i(u)
//
// where grad_u Y_i is the gradient of the same polynomial recursion as
// e3md.so3.harmonics._unnormalized_solid_harmonics (forward-mode dual numbers), so the
// projection gives the derivative of Y_i(v / |v|) as JAX differentiates it.
//
// On XLA CPU, inside the model, this basis and its derivative are a dozen fusions over [E, K]
// and [E, (L+1)^2] arrays that the backward pass reads again (BENCHMARKS.md, session 12). Here
// each batch of kBatch edges is computed in double-precision vectors (GCC/clang vector types:
// sine, cosine and exp as branch-free polynomials, so nothing depends on the auto-vectoriser),
// and only the outputs go to memory.
// Compiled in (-D flags): E3MD_REAL, E3MD_DTYPE, E3MD_L, E3MD_K, E3MD_LIMIT (l, Å), E3MD_RC
// (rc, Å), E3MD_COSINE (0 smooth, 1 cosine cutoff), E3MD_YNORM and E3MD_YPERM (the
// normalisation factors and source order of the (L+1)^2 harmonics, in output order).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernel_common.h"

namespace {

using namespace e3md;

constexpr int L = E3MD_L, LM = (L + 1) * (L + 1), K = E3MD_K;
constexpr double kLimit = E3MD_LIMIT, kRc = E3MD_RC, kPi = 3.14159265358979323846;
constexpr double kYNorm[LM] = {E3MD_YNORM};
constexpr int kYPerm[LM] = {E3MD_YPERM};
constexpr int kBatch = 8;         // edges per vector
constexpr int64_t kBlock = 1024;  // edges per block of parallel_for (a multiple of kBatch)

typedef double V __attribute__((vector_size(kBatch * sizeof(double))));

inline V splat(double c) { return V{} + c; }
inline V vsqrt(V x) {
#if defined(__AVX512F__)
  return (V)_mm512_sqrt_pd((__m512d)x);
#else
  double out[kBatch];
  for (int i = 0; i < kBatch; ++i) out[i] = __builtin_sqrt(x[i]);
  V v;
  std::memcpy(&v, out, sizeof v);
  return v;
#endif
}

// A value and its gradient with respect to the three components of u.
struct Dual {
  V v, d0, d1, d2;
};
inline Dual operator+(const Dual& a, const Dual& b) {
  return {a.v + b.v, a.d0 + b.d0, a.d1 + b.d1, a.d2 + b.d2};
}
inline Dual operator-(const Dual& a, const Dual& b) {
  return {a.v - b.v, a.d0 - b.d0, a.d1 - b.d1, a.d2 - b.d2};
}
inline Dual operator*(const Dual& a, const Dual& b) {
  return {a.v * b.v, a.d0 * b.v + a.v * b.d0, a.d1 * b.v + a.v * b.d1, a.d2 * b.v + a.v * b.d2};
}
inline Dual operator*(double c, const Dual& a) { return {c * a.v, c * a.d0, c * a.d1, c * a.d2}; }
template <class T>
T constant(double c);
template <>
inline V constant<V>(double c) {
  return splat(c);
}
template <>
inline Dual constant<Dual>(double c) {
  return {splat(c), V{}, V{}, V{}};
}

// The unnormalised real solid harmonics of (x, y, z) in the order m = -l..l per degree
// (the recursion of e3md/so3/harmonics.py): T = V for values, Dual for gradients too.
template <class T>
void solid_harmonics(const T& x, const T& y, const T& z, T* out) {
  const T r2 = x * x + y * y + z * z;
  T c[L + 1], s[L + 1], p[L + 1][L + 1];
  c[0] = constant<T>(1);
  s[0] = constant<T>(0);
  for (int a = 1; a <= L; ++a) {
    c[a] = x * c[a - 1] - y * s[a - 1];
    s[a] = x * s[a - 1] + y * c[a - 1];
  }
  for (int m = 0; m <= L; ++m) {
    double dfact = 1;  // (2m - 1)!!
    for (int i = 1; i < 2 * m; i += 2) dfact *= i;
    p[m][m] = constant<T>(dfact);
    if (m + 1 <= L) p[m][m + 1] = double(2 * m + 1) * (z * p[m][m]);
    for (int l = m + 2; l <= L; ++l)
      p[m][l] = (1.0 / (l - m)) *
                (double(2 * l - 1) * (z * p[m][l - 1]) - double(l + m - 1) * (r2 * p[m][l - 2]));
  }
  int i = 0;
  for (int l = 0; l <= L; ++l)
    for (int m = -l; m <= l; ++m) {
      const int a = m < 0 ? -m : m;
      out[i++] = a ? p[a][l] * (m < 0 ? s[a] : c[a]) : p[0][l];
    }
}

// Taylor coefficients of cos and sin (around 0, 11 terms each).
struct Series {
  double cos[11], sin[11];
};
constexpr Series series() {
  Series c{};
  double fc = 1, fs = 1;  // 1/(2n)!, 1/(2n+1)!
  for (int n = 0; n < 11; ++n) {
    c.cos[n] = (n % 2 ? -1 : 1) * fc;
    c.sin[n] = (n % 2 ? -1 : 1) * fs;
    fc /= double((2 * n + 1) * (2 * n + 2));
    fs /= double((2 * n + 2) * (2 * n + 3));
  }
  return c;
}
constexpr Series kSeries = series();

// sin and cos of theta in [0, pi]: the series around 0 of t = min(theta, pi - theta) <= pi/2
// (degree 21: error < 2e-18), accurate relative to sin theta also for small theta.
inline void sincos_0_pi(V theta, V& s, V& c) {
  const auto upper = theta > 0.5 * kPi;
  const V t = upper ? kPi - theta : theta, t2 = t * t;
  V cs = V{}, sn = V{};
  for (int n = 10; n >= 0; --n) {
    cs = cs * t2 + kSeries.cos[n];
    sn = sn * t2 + kSeries.sin[n];
  }
  s = t * sn;
  c = upper ? -cs : cs;
}

// g_k(r) c(r) and, with kSlope, its derivative in r (NaN in, NaN out); inv_r = 1/r (0 at 0).
template <bool kSlope>
inline void radial(V r, V inv_r, V* g, V* slope) {
  const auto inside = (r <= kLimit) & (r < kRc);
  constexpr double kSafe = 0.5 * (kLimit < kRc ? kLimit : kRc);  // a safe r outside
  const V ri = inside ? r : splat(kSafe);
  const V d = ri * (1 / kRc);
  V cut, dcut;
  if (E3MD_COSINE) {
    V s, c;
    sincos_0_pi(kPi * d, s, c);
    cut = 0.5 * c + 0.5;
    dcut = (-0.5 * kPi / kRc) * s;
  } else {
    const V q = 1.0 - d * d;
    const V inv_q = 1.0 / q;
    cut = exp_nonpositive(1.0 - inv_q);
    dcut = cut * d * inv_q * inv_q * (-2 / kRc);
  }
  const double norm = std::sqrt(2 / kLimit), w = kPi / kLimit;
  V s1, c1;
  sincos_0_pi(w * ri, s1, c1);
  V sk = s1, ck = c1;                         // sin, cos of (k+1) w r
  const V outside = r == r ? V{} : r;         // 0, or NaN for NaN
  inv_r = inside ? inv_r : splat(1 / kSafe);  // at r = 0 the series is used
  for (int k = 0; k < K; ++k) {
    const double f = w * (k + 1);
    const V a = f * ri, a2 = a * a;
    const auto small = a < 1e-2;  // sin(a)/a and its derivative in a; a series near 0
    const V inv_a = inv_r * (1 / f);
    const V sinc = small ? 1.0 - a2 * (1.0 / 6) * (1.0 - a2 * (1.0 / 20)) : sk * inv_a;
    const V gk = (norm * f) * sinc;
    g[k] = inside ? gk * cut : outside;
    if (kSlope) {
      const V dsinc = small ? a * (-1.0 / 3) * (1.0 - a2 * 0.1) : (ck - sinc) * inv_a;
      slope[k] = inside ? (norm * f * f) * dsinc * cut + gk * dcut : outside;
    }
    const V sn = sk * c1 + ck * s1;
    ck = ck * c1 - sk * s1;
    sk = sn;
  }
}

// Length r, unit vector u (u = v where r^2 <= tiny of the dtype) and 1/r of a batch of edges.
struct Geometry {
  V r, u[3], inv;
  decltype(V{} < V{}) unit;
};
inline Geometry geometry(const V* v) {
  Geometry g;
  g.r = vsqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  g.unit = g.r * g.r > double(std::numeric_limits<real>::min());
  const V rec = 1.0 / g.r;  // inf at r = 0, selected away
  const V scale = g.unit ? rec : splat(1);
  for (int j = 0; j < 3; ++j) g.u[j] = v[j] * scale;
  g.inv = g.r > 0 ? rec : V{};
  return g;
}

// Between the edge-major buffers and a batch's vectors: out[i] = x[b * R + i] of its n <=
// kBatch edges (missing lanes repeat the last edge), and the reverse. Through plain arrays,
// not vector lanes, which the compiler would store and load one by one.
template <int R>
inline void to_lanes(const real* x, int n, V* out) {
  double buf[R][kBatch];
  for (int b = 0; b < kBatch; ++b)
    for (int i = 0; i < R; ++i) buf[i][b] = double(x[(b < n ? b : n - 1) * R + i]);
  for (int i = 0; i < R; ++i) std::memcpy(&out[i], buf[i], sizeof(V));
}
typedef real VR __attribute__((vector_size(kBatch * sizeof(real))));
template <int R>
inline void from_lanes(const V* x, int n, real* out) {
  real buf[R][kBatch];
  for (int i = 0; i < R; ++i) {
    const VR c = __builtin_convertvector(x[i], VR);
    std::memcpy(buf[i], &c, sizeof c);
  }
  for (int b = 0; b < n; ++b)
    for (int i = 0; i < R; ++i) out[b * R + i] = buf[i][b];
}

void forward_batch(const real* v, real* rad, real* y, int n) {
  V vc[3], g[K], t[LM], yv[LM];
  to_lanes<3>(v, n, vc);
  const Geometry geo = geometry(vc);
  radial<false>(geo.r, geo.inv, g, nullptr);
  solid_harmonics<V>(geo.u[0], geo.u[1], geo.u[2], t);
  for (int i = 0; i < LM; ++i) yv[i] = kYNorm[i] * t[kYPerm[i]];
  from_lanes<K>(g, n, rad);
  from_lanes<LM>(yv, n, y);
}

void backward_batch(const real* v, const real* drad, const real* dy, real* dv, int n) {
  V vc[3], g[K], slope[K], cr[K], cy[LM];
  to_lanes<3>(v, n, vc);
  to_lanes<K>(drad, n, cr);  // the repeated last edge's cotangents are computed, not stored
  to_lanes<LM>(dy, n, cy);
  for (int i = 0; i < LM; ++i) cy[i] *= kYNorm[i];
  const Geometry geo = geometry(vc);
  radial<true>(geo.r, geo.inv, g, slope);
  V dr = V{};
  for (int k = 0; k < K; ++k) dr += cr[k] * slope[k];
  const V one = splat(1), zero = V{};
  Dual t[LM];
  solid_harmonics<Dual>(Dual{geo.u[0], one, zero, zero}, Dual{geo.u[1], zero, one, zero},
                        Dual{geo.u[2], zero, zero, one}, t);
  V G[3] = {};
  for (int i = 0; i < LM; ++i) {
    G[0] += cy[i] * t[kYPerm[i]].d0;
    G[1] += cy[i] * t[kYPerm[i]].d1;
    G[2] += cy[i] * t[kYPerm[i]].d2;
  }
  // normalised: d r / dv = u, d u / dv = (I - u u^T) / r; else u = v and safe_norm's
  // derivative v / |v| (0 at v = 0)
  const V ug = geo.u[0] * G[0] + geo.u[1] * G[1] + geo.u[2] * G[2];
  V out[3];
  for (int j = 0; j < 3; ++j)
    out[j] = geo.unit ? dr * geo.u[j] + (G[j] - geo.u[j] * ug) * geo.inv
                      : G[j] + dr * geo.u[j] * geo.inv;
  from_lanes<3>(out, n, dv);
}

ffi::Error Forward(ffi::ThreadPool pool, Buf v_b, Out rad_b, Out y_b) {
  const int64_t edges = v_b.element_count() / 3;
  const real* v = v_b.typed_data();
  real *rad = rad_b->typed_data(), *y = y_b->typed_data();
  parallel_for(pool, edges, kBlock, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t e = begin; e < end; e += kBatch)
      forward_batch(v + 3 * e, rad + K * e, y + LM * e, int(std::min<int64_t>(kBatch, end - e)));
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, Buf v_b, Buf drad_b, Buf dy_b, Out dv_b) {
  const int64_t edges = v_b.element_count() / 3;
  const real *v = v_b.typed_data(), *drad = drad_b.typed_data(), *dy = dy_b.typed_data();
  real* dv = dv_b->typed_data();
  parallel_for(pool, edges, kBlock, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t e = begin; e < end; e += kBatch)
      backward_batch(v + 3 * e, drad + K * e, dy + LM * e, dv + 3 * e,
                     int(std::min<int64_t>(kBatch, end - e)));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_basis_fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()  // v [E, 3]
                                  .Ret<Buf>()  // rad [E, K]
                                  .Ret<Buf>()  // y [E, LM]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_basis_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()  // v [E, 3]
                                  .Arg<Buf>()  // drad [E, K]
                                  .Arg<Buf>()  // dy [E, LM]
                                  .Ret<Buf>()  // dv [E, 3]
);
