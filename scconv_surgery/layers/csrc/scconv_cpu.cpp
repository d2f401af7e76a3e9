// Fused CPU inference kernels of SCConv's elementwise steps (paper variant, float32, no autograd).
//
// scconv::sru   : SRU, eqs. 1-4, in two passes over the input: GroupNorm statistics, then one pass
//                 that normalises (with eq. 2's ratio folded into the affine), gates and
//                 cross-reconstructs, writing the output once.
// scconv::sru_squeeze : SRU followed by CRU's squeezes, without writing SRU's output.
// scconv::sru_squeeze_split : the same, its output as two tensors (the squeezed upper and lower
//                 parts) in the memory format asked for.
// scconv::fuse_ : CRU's fuse, eqs. 7-9, in two passes: the branch means, then
//                 y1 <- beta * y1 + (1 - beta) * concat(pwc2, reused) in place, without writing Y2.
// scconv::cru_fuse_ : CRU after GWC (stride 1): PWC1, PWC2 and the fuse (eqs. 5-9) in two passes,
//                 in place in GWC's output, the 1x1 convs as one product with beta folded in.
//
// The 1x1 products are a small register-blocked matrix product on thread-local tiles.
//
// All take NCHW-contiguous or channels_last tensors (anything else is made contiguous first) and
// parallelise with at::parallel_for. The loops are written for the compiler's auto-vectoriser
// (built with the host's vector extensions; see scconv_surgery/layers/_kernels.py); exp is a
// Cephes-style polynomial (about 2 ulp), so gate decisions within float rounding of the threshold
// may differ from torch.sigmoid's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

#define SCCONV_INLINE inline __attribute__((always_inline))

SCCONV_INLINE float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // round to nearest by adding and subtracting 1.5 * 2^23 (vectorises; std::floor does not here)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

SCCONV_INLINE float sigmoid(float z) { return 1.0f / (1.0f + exp_approx(-z)); }

// W1 * X and W2 * X of one element (DESIGN section 2, steps 3-5).
SCCONV_INLINE float gate_x2(float x, float a, float b, float t, float& x1) {
  const float s = sigmoid(x * a + b);
  const bool keep = s > t;
  const float x2 = keep ? 0.0f : s * x;
  x1 = keep ? x : x2;
  return x2;
}

// eq. 4 over n pixels of a channel pair (c, d = c + C / 2), each the other's partner:
// out_c = W1 X[c] + W2 X[d], out_d = W1 X[d] + W2 X[c]; (a, b): each channel's gate affine.
SCCONV_INLINE void reconstruct_pair(const float* xc, const float* xd, float ac, float bc, float ad, float bd,
                                    float t, float* oc, float* od, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) {
    float x1c, x1d;
    const float x2c = gate_x2(xc[p], ac, bc, t, x1c);
    const float x2d = gate_x2(xd[p], ad, bd, t, x1d);
    oc[p] = x1c + x2d;
    od[p] = x1d + x2c;
  }
}

// eq. 4 over n pixels of one channel c whose partner d does not take c back (odd C):
// out_c = W1 X[c] + W2 X[d].
SCCONV_INLINE void reconstruct_one(const float* xc, const float* xd, float ac, float bc, float ad, float bd,
                                   float t, float* oc, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) {
    float x1c, x1d;
    gate_x2(xc[p], ac, bc, t, x1c);
    const float x2d = gate_x2(xd[p], ad, bd, t, x1d);
    oc[p] = x1c + x2d;
  }
}

// sum and sum of squares of n floats, in double across blocks of float partial sums
inline void sum_sumsq(const float* p, int64_t n, int64_t stride, double& sum, double& sumsq) {
  constexpr int64_t kBlock = 1024;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    float s = 0.0f, ss = 0.0f;
    if (stride == 1) {
#pragma omp simd reduction(+ : s, ss)
      for (int64_t i = start; i < end; ++i) {
        s += p[i];
        ss += p[i] * p[i];
      }
    } else {
      for (int64_t i = start; i < end; ++i) {
        const float v = p[i * stride];
        s += v;
        ss += v * v;
      }
    }
    sum += s;
    sumsq += ss;
  }
}


// ---- a small register-blocked matrix product: D (M x N) = A (M x K) * B (K x N), row-major ----
// N is a multiple of the vector width VW (callers pad B's and D's rows); A's entries are
// broadcast, B's rows are loaded as vectors. GCC / Clang vector extensions: AVX-512 registers
// where the build enables them, AVX2 or SSE registers otherwise.
#if defined(__AVX512F__)
constexpr int64_t VW = 16;
constexpr int kMaxNV = 4;  // 4 x 4 accumulators of 32 zmm registers
#else
constexpr int64_t VW = 8;
constexpr int kMaxNV = 2;
#endif
typedef float vfloat __attribute__((vector_size(VW * sizeof(float))));

SCCONV_INLINE vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

SCCONV_INLINE void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

SCCONV_INLINE int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

template <int MR, int NV>
SCCONV_INLINE void micro_kernel(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* D,
                                int64_t ldd) {
  vfloat acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vfloat{};
  for (int64_t k = 0; k < K; ++k) {
    vfloat b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + k * ldb + v * VW);
    for (int r = 0; r < MR; ++r) {
      const vfloat a = A[r * lda + k] - vfloat{};  // a broadcast (x - 0 folds to x)
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(D + r * ldd + v * VW, acc[r][v]);
}

template <int NV>
void gemm_columns(int64_t M, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* D,
                  int64_t ldd) {
  constexpr int MR = NV >= 3 ? 4 : (NV == 2 ? 6 : 8);
  int64_t i = 0;
  for (; i + MR <= M; i += MR) micro_kernel<MR, NV>(K, A + i * lda, lda, B, ldb, D + i * ldd, ldd);
  for (; i < M; ++i) micro_kernel<1, NV>(K, A + i * lda, lda, B, ldb, D + i * ldd, ldd);
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* D,
          int64_t ldd) {
  const int64_t nv = N / VW;
  int64_t j = 0;
  for (; j + kMaxNV <= nv; j += kMaxNV) gemm_columns<kMaxNV>(M, K, A, lda, B + j * VW, ldb, D + j * VW, ldd);
  switch (nv - j) {
    case 3: gemm_columns<3>(M, K, A, lda, B + j * VW, ldb, D + j * VW, ldd); break;
    case 2: gemm_columns<2>(M, K, A, lda, B + j * VW, ldb, D + j * VW, ldd); break;
    case 1: gemm_columns<1>(M, K, A, lda, B + j * VW, ldb, D + j * VW, ldd); break;
    default: break;
  }
}

// Where channel o of sample n, pixel p of an output goes: one tensor, or two split at a channel.
struct OutView {
  float* base;
  int64_t sn, sc, sp;
};

OutView out_view(const at::Tensor& t) { return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(3)}; }

struct Outputs {
  OutView first, second;
  int64_t split;  // channels [0, split) go to first, the rest to second
  SCCONV_INLINE float* at(int64_t n, int64_t o) const {
    return o < split ? first.base + n * first.sn + o * first.sc
                     : second.base + n * second.sn + (o - split) * second.sc;
  }
  SCCONV_INLINE int64_t sp(int64_t o) const { return o < split ? first.sp : second.sp; }
};

// Writes a tile of products, element (o, p) at product[o * ld_o + p * ld_p], to outputs
// o_begin ... o_begin + count - 1 of sample n, pixels p0 ... p0 + len - 1; the loop order follows
// the destination (pixels inner for NCHW planes, channels inner for channels_last rows).
void write_tile(const Outputs& outs, int64_t n, int64_t o_begin, int64_t count, int64_t p0, int64_t len,
                const float* product, int64_t ld_o, int64_t ld_p) {
  if (outs.sp(o_begin) == 1 && outs.sp(o_begin + count - 1) == 1) {
    for (int64_t o = 0; o < count; ++o) {
      float* dst = outs.at(n, o_begin + o) + p0;
      const float* src = product + o * ld_o;
      if (ld_p == 1) {
        std::memcpy(dst, src, len * sizeof(float));
      } else {
        for (int64_t p = 0; p < len; ++p) dst[p] = src[p * ld_p];
      }
    }
    return;
  }
  std::vector<float*> dst(count);
  std::vector<int64_t> sp(count);
  for (int64_t o = 0; o < count; ++o) {
    dst[o] = outs.at(n, o_begin + o);
    sp[o] = outs.sp(o_begin + o);
  }
  for (int64_t p = 0; p < len; ++p) {
    const float* src = product + p * ld_p;
    for (int64_t o = 0; o < count; ++o) dst[o][(p0 + p) * sp[o]] = src[o * ld_o];
  }
}

// Pixels per tile of a channel-major (C x T) buffer: about 128 KiB, at least 64 pixels per plane
// (a tile reads C planes at once; short runs defeat the hardware prefetcher), a multiple of 64.
int64_t plane_tile(int64_t C, int64_t P) {
  const int64_t t = std::min<int64_t>(512, std::max<int64_t>(64, (32768 / std::max<int64_t>(C, 1)) / 64 * 64));
  return std::min(t, round_up(P, 64));
}

bool is_nchw(const at::Tensor& t) { return t.is_contiguous(); }
bool is_nhwc(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

// GroupNorm statistics (pass 1 of SRU): per (n, c) the a, b of z = x * a + b, with the folded
// affine (scale, shift) applied: z = GN(x) * w of eqs. 1-3.
void gate_affine(const float* xp, bool nhwc, int64_t N, int64_t C, int64_t P, int64_t G, double eps,
                 const float* sc, const float* sh, std::vector<float>& A, std::vector<float>& B) {
  const int64_t D = C / G;
  A.assign(N * C, 0.0f);
  B.assign(N * C, 0.0f);
  std::vector<double> mean(N * G), rstd(N * G);
  if (!nhwc) {
    at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double s = 0.0, ss = 0.0;
        sum_sumsq(xp + i * D * P, D * P, 1, s, ss);
        const double m = s / (D * P);
        mean[i] = m;
        rstd[i] = 1.0 / std::sqrt(std::max(ss / (D * P) - m * m, 0.0) + eps);
      }
    });
  } else {
    std::vector<double> csum(N * C, 0.0), csumsq(N * C, 0.0);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> s(C), ss(C);
      for (int64_t n = begin; n < end; ++n) {
        constexpr int64_t kBlock = 256;
        for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
          std::fill(s.begin(), s.end(), 0.0f);
          std::fill(ss.begin(), ss.end(), 0.0f);
          const int64_t p1 = std::min(P, p0 + kBlock);
          for (int64_t p = p0; p < p1; ++p) {
            const float* row = xp + (n * P + p) * C;
            float* sp = s.data();
            float* ssp = ss.data();
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              sp[c] += row[c];
              ssp[c] += row[c] * row[c];
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            csum[n * C + c] += s[c];
            csumsq[n * C + c] += ss[c];
          }
        }
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        double s = 0.0, ss = 0.0;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          s += csum[n * C + c];
          ss += csumsq[n * C + c];
        }
        const double m = s / (D * P);
        mean[n * G + g] = m;
        rstd[n * G + g] = 1.0 / std::sqrt(std::max(ss / (D * P) - m * m, 0.0) + eps);
      }
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t g = n * G + c / D;
      const double a = rstd[g] * sc[c];
      A[n * C + c] = static_cast<float>(a);
      B[n * C + c] = static_cast<float>(sh[c] - mean[g] * a);
    }
  }

}

at::Tensor sru_cpu(const at::Tensor& input, const at::Tensor& scale_in, const at::Tensor& shift_in,
                   int64_t num_groups, double eps, double threshold) {
  TORCH_CHECK(input.dim() == 4 && input.scalar_type() == at::kFloat, "scconv::sru: float32 (N, C, H, W) input");
  const bool nhwc = !is_nchw(input) && is_nhwc(input);
  const at::Tensor x = nhwc ? input : input.contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous(), shift = shift_in.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), G = num_groups, D = C / G;
  TORCH_CHECK(C % G == 0, "scconv::sru: num_groups must divide C");
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* sc = scale.data_ptr<float>();
  const float* sh = shift.data_ptr<float>();
  const float t = static_cast<float>(threshold);

  std::vector<float> A, B;
  gate_affine(xp, nhwc, N, C, P, G, eps, sc, sh, A, B);

  // pass 2: out[c] = W1[c] X[c] + W2[p] X[p] with p = (c + C / 2) mod C (eq. 4)
  const int64_t half = C / 2;
  if (!nhwc && C % 2 == 0) {  // channel pairs (c, c + C / 2): each is the other's partner
    at::parallel_for(0, N * half, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / half, c = i % half, d = c + half;
        const float* xc = xp + (n * C + c) * P;
        const float* xd = xp + (n * C + d) * P;
        float* oc = op + (n * C + c) * P;
        float* od = op + (n * C + d) * P;
        const float ac = A[n * C + c], bc = B[n * C + c], ad = A[n * C + d], bd = B[n * C + d];
        reconstruct_pair(xc, xd, ac, bc, ad, bd, t, oc, od, P);
      }
    });
  } else if (!nhwc) {  // odd C: each output plane reads its own and its partner's plane
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / C, c = i % C, d = (c + half) % C;
        const float* xc = xp + (n * C + c) * P;
        const float* xd = xp + (n * C + d) * P;
        float* oc = op + (n * C + c) * P;
        const float ac = A[n * C + c], bc = B[n * C + c], ad = A[n * C + d], bd = B[n * C + d];
        reconstruct_one(xc, xd, ac, bc, ad, bd, t, oc, P);
      }
    });
  } else {  // channels_last: per pixel, over contiguous channels
    at::parallel_for(0, N * P, 256, [&](int64_t begin, int64_t end) {
      std::vector<float> x1(C), x2(C);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / P;
        const float* row = xp + i * C;
        float* orow = op + i * C;
        const float* a = A.data() + n * C;
        const float* b = B.data() + n * C;
        float* x1p = x1.data();
        float* x2p = x2.data();
        const float tt = t;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          float x1v;
          x2p[c] = gate_x2(row[c], a[c], b[c], tt, x1v);
          x1p[c] = x1v;
        }
        const int64_t rest = C - half;  // out[c] = x1[c] + x2[c + half] for c < rest, else x2[c - rest]
#pragma omp simd
        for (int64_t c = 0; c < rest; ++c) orow[c] = x1p[c] + x2p[c + half];
#pragma omp simd
        for (int64_t c = rest; c < C; ++c) orow[c] = x1p[c] + x2p[c - rest];
      }
    });
  }
  return out;
}

// SRU (eqs. 1-4) followed by CRU's squeezes (1x1 convs, `groups` groups of equal size), without
// writing SRU's output: per tile of pixels, the reconstructed values of every channel go to a
// thread-local buffer, which is multiplied by the squeeze weight (S, C / groups) with the
// register-blocked product above; the products go to `outs`.
void sru_squeeze_into(const at::Tensor& x, bool nhwc, const at::Tensor& scale_in, const at::Tensor& shift_in,
                      int64_t num_groups, double eps, double threshold, const at::Tensor& weight_in, int64_t groups,
                      const Outputs& outs) {
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous(), shift = shift_in.to(at::kFloat).contiguous();
  const at::Tensor weight = weight_in.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), G = num_groups;
  const int64_t S = weight.size(0), K = C / groups, So = S / groups;  // outputs, inputs and outputs per group
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float t = static_cast<float>(threshold);
  std::vector<float> A, B;
  gate_affine(xp, nhwc, N, C, P, G, eps, scale.data_ptr<float>(), shift.data_ptr<float>(), A, B);
  const int64_t half = C / 2, rest = C - half;
  if (!nhwc) {
    const int64_t T = plane_tile(C, P), tiles = (P + T - 1) / T;  // T: a multiple of VW
    // buffer (C x T): the reconstructed channels of a tile; per group, D (So x T) = W_g (So x K) * buffer_g
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> buffer(C * T, 0.0f), product(So * T);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / tiles, p0 = (i % tiles) * T, len = std::min(T, P - p0);
        const float tt = t;
        if (C % 2 == 0) {  // channel pairs (c, c + C / 2): each gate computed once
          for (int64_t c = 0; c < half; ++c) {
            const int64_t d = c + half;
            const float* xc = xp + (n * C + c) * P + p0;
            const float* xd = xp + (n * C + d) * P + p0;
            const float ac = A[n * C + c], bc = B[n * C + c], ad = A[n * C + d], bd = B[n * C + d];
            float* rc = buffer.data() + c * T;
            float* rd = buffer.data() + d * T;
            reconstruct_pair(xc, xd, ac, bc, ad, bd, tt, rc, rd, len);
          }
        }
        for (int64_t c = 0; c < (C % 2 == 0 ? 0 : C); ++c) {  // odd C: buffer[c] = W1[c] X[c] + W2[d] X[d], d = (c + C / 2) mod C
          const int64_t d = c < rest ? c + half : c - rest;
          const float* xc = xp + (n * C + c) * P + p0;
          const float* xd = xp + (n * C + d) * P + p0;
          const float ac = A[n * C + c], bc = B[n * C + c], ad = A[n * C + d], bd = B[n * C + d];
          float* row = buffer.data() + c * T;
          reconstruct_one(xc, xd, ac, bc, ad, bd, tt, row, len);
        }
        for (int64_t g = 0; g < groups; ++g) {
          gemm(So, T, K, wp + g * So * K, K, buffer.data() + g * K * T, T, product.data(), T);
          write_tile(outs, n, g * So, So, p0, len, product.data(), T, 1);
        }
      }
    });
  } else {
    // buffer (T x C): a tile's reconstructed pixels; per group, D (T x So) = buffer_g (T x K) * W_g^T (K x So)
    constexpr int64_t T = 64;  // pixels per tile
    const int64_t tiles = (P + T - 1) / T;
    const int64_t Sp = round_up(So, VW);
    std::vector<float> wt(groups * K * Sp, 0.0f);  // wt[g][k][o], zero-padded to Sp columns
    for (int64_t o = 0; o < S; ++o)
      for (int64_t k = 0; k < K; ++k) wt[((o / So) * K + k) * Sp + o % So] = wp[o * K + k];
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> x1(C), x2(C), buffer(T * C), product(T * Sp);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / tiles, p0 = (i % tiles) * T, len = std::min(T, P - p0);
        const float* a = A.data() + n * C;
        const float* b = B.data() + n * C;
        const float tt = t;
        for (int64_t p = 0; p < len; ++p) {
          const float* row = xp + (n * P + p0 + p) * C;
          float* x1p = x1.data();
          float* x2p = x2.data();
          float* out = buffer.data() + p * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float x1v;
            x2p[c] = gate_x2(row[c], a[c], b[c], tt, x1v);
            x1p[c] = x1v;
          }
#pragma omp simd
          for (int64_t c = 0; c < rest; ++c) out[c] = x1p[c] + x2p[c + half];
#pragma omp simd
          for (int64_t c = rest; c < C; ++c) out[c] = x1p[c] + x2p[c - rest];
        }
        for (int64_t g = 0; g < groups; ++g) {
          gemm(len, Sp, K, buffer.data() + g * K, C, wt.data() + g * K * Sp, Sp, product.data(), Sp);
          write_tile(outs, n, g * So, So, p0, len, product.data(), 1, Sp);
        }
      }
    });
  }
}

void check_sru_squeeze(const at::Tensor& input, const at::Tensor& weight, int64_t num_groups, int64_t groups) {
  TORCH_CHECK(input.dim() == 4 && input.scalar_type() == at::kFloat, "scconv::sru_squeeze: float32 (N, C, H, W) input");
  const int64_t C = input.size(1), S = weight.size(0);
  TORCH_CHECK(groups >= 1 && C % num_groups == 0 && C % groups == 0 && S % groups == 0 &&
                  weight.numel() == S * (C / groups),
              "scconv::sru_squeeze: shapes do not match");
}

// One output (N, S, H, W) in the input's memory format.
at::Tensor sru_squeeze_cpu(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
                           int64_t num_groups, double eps, double threshold, const at::Tensor& weight,
                           int64_t groups) {
  check_sru_squeeze(input, weight, num_groups, groups);
  const bool nhwc = !is_nchw(input) && is_nhwc(input);
  const at::Tensor x = nhwc ? input : input.contiguous();
  at::Tensor out = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3)}, x.options().memory_format(
      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  const OutView v = out_view(out);
  sru_squeeze_into(x, nhwc, scale, shift, num_groups, eps, threshold, weight, groups, {v, v, weight.size(0)});
  return out;
}

// Two outputs, channels [0, split) and [split, S), each its own tensor in the memory format asked
// for (channels_last: each can feed a k x k conv in oneDNN's fast layout without a copy).
std::tuple<at::Tensor, at::Tensor> sru_squeeze_split_cpu(const at::Tensor& input, const at::Tensor& scale,
                                                         const at::Tensor& shift, int64_t num_groups, double eps,
                                                         double threshold, const at::Tensor& weight, int64_t groups,
                                                         int64_t split, bool channels_last) {
  check_sru_squeeze(input, weight, num_groups, groups);
  TORCH_CHECK(0 < split && split < weight.size(0), "scconv::sru_squeeze_split: split must leave both parts non-empty");
  const bool nhwc = !is_nchw(input) && is_nhwc(input);
  const at::Tensor x = nhwc ? input : input.contiguous();
  const auto options = x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous);
  at::Tensor first = at::empty({x.size(0), split, x.size(2), x.size(3)}, options);
  at::Tensor second = at::empty({x.size(0), weight.size(0) - split, x.size(2), x.size(3)}, options);
  sru_squeeze_into(x, nhwc, scale, shift, num_groups, eps, threshold, weight, groups,
                   {out_view(first), out_view(second), split});
  return {first, second};
}

// A (N, C, H, W) float tensor viewed as base + n * sn + c * sc + p * sp (p = h * W + w).
struct View {
  const float* base;
  int64_t sn, sc, sp;
};

View view_of(const at::Tensor& t) {
  TORCH_CHECK(t.stride(2) == t.size(3) * t.stride(3) || t.size(2) == 1, "scconv::fuse_: pixels must be uniformly strided");
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(3)};
}

void fuse_cpu(const at::Tensor& y1, const at::Tensor& pwc2_in, const at::Tensor& reused_in) {
  TORCH_CHECK(y1.dim() == 4 && y1.scalar_type() == at::kFloat, "scconv::fuse_: float32 (N, C, H, W) y1");
  TORCH_CHECK(is_nchw(y1) || is_nhwc(y1), "scconv::fuse_: y1 must be contiguous or channels_last");
  const bool nhwc = !is_nchw(y1);
  auto usable = [](const at::Tensor& t) {
    return t.stride(2) == t.size(3) * t.stride(3) ? t : t.contiguous();
  };
  const at::Tensor pwc2 = usable(pwc2_in), reused = usable(reused_in);
  const int64_t N = y1.size(0), C = y1.size(1), P = y1.size(2) * y1.size(3), C2 = pwc2.size(1);
  TORCH_CHECK(C2 + reused.size(1) == C, "scconv::fuse_: channel counts do not add up");
  float* yp = y1.data_ptr<float>();
  const View v2 = view_of(pwc2), vr = view_of(reused);
  // Y2's channel c of sample n: its base pointer and pixel stride
  auto y2_at = [&](int64_t n, int64_t c) -> const float* {
    return c < C2 ? v2.base + n * v2.sn + c * v2.sc : vr.base + n * vr.sn + (c - C2) * vr.sc;
  };
  const int64_t y1_sc = nhwc ? 1 : P, y1_sp = nhwc ? C : 1;
  std::vector<float> beta(N * C);
  // pass 1: beta = sigmoid(GAP(Y1) - GAP(Y2)) (eqs. 7-8)
  if (!nhwc) {
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / C, c = i % C;
        double s1 = 0.0, s2 = 0.0, unused = 0.0;
        sum_sumsq(yp + n * C * P + c * y1_sc, P, 1, s1, unused);
        sum_sumsq(y2_at(n, c), P, c < C2 ? v2.sp : vr.sp, s2, unused);
        beta[i] = sigmoid(static_cast<float>((s1 - s2) / P));
      }
    });
  } else {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(C);
      std::vector<float> part(C);
      for (int64_t n = begin; n < end; ++n) {
        std::fill(acc.begin(), acc.end(), 0.0);
        constexpr int64_t kBlock = 256;
        for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
          std::fill(part.begin(), part.end(), 0.0f);
          float* pp = part.data();
          for (int64_t p = p0; p < std::min(P, p0 + kBlock); ++p) {
            const float* row = yp + n * C * P + p * C;
            const float* r2 = v2.base + n * v2.sn + p * v2.sp;
            const float* rr = vr.base + n * vr.sn + p * vr.sp;
#pragma omp simd
            for (int64_t c = 0; c < C2; ++c) pp[c] += row[c] - r2[c * v2.sc];
#pragma omp simd
            for (int64_t c = C2; c < C; ++c) pp[c] += row[c] - rr[(c - C2) * vr.sc];
          }
          for (int64_t c = 0; c < C; ++c) acc[c] += part[c];
        }
        for (int64_t c = 0; c < C; ++c) beta[n * C + c] = sigmoid(static_cast<float>(acc[c] / P));
      }
    });
  }
  // pass 2: Y = Y2 + beta * (Y1 - Y2), into y1 (eq. 9)
  if (!nhwc) {
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / C, c = i % C;
        float* y = yp + n * C * P + c * y1_sc;
        const float* y2 = y2_at(n, c);
        const int64_t s2 = c < C2 ? v2.sp : vr.sp;
        const float b = beta[i];
        if (s2 == 1) {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) y[p] = y2[p] + b * (y[p] - y2[p]);
        } else {
          for (int64_t p = 0; p < P; ++p) y[p] = y2[p * s2] + b * (y[p] - y2[p * s2]);
        }
      }
    });
  } else {
    at::parallel_for(0, N * P, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / P, p = i % P;
        float* row = yp + i * C;
        const float* r2 = v2.base + n * v2.sn + p * v2.sp;
        const float* rr = vr.base + n * vr.sn + p * vr.sp;
        const float* b = beta.data() + n * C;
#pragma omp simd
        for (int64_t c = 0; c < C2; ++c) row[c] = r2[c * v2.sc] + b[c] * (row[c] - r2[c * v2.sc]);
#pragma omp simd
        for (int64_t c = C2; c < C; ++c) {
          const float v = rr[(c - C2) * vr.sc];
          row[c] = v + b[c] * (row[c] - v);
        }
      }
    });
  }
  (void)y1_sp;
}

// CRU from GWC's output (stride 1): y1 <- beta * (y1 + PWC1(up)) + (1 - beta) * Y2, Y2 = W2 low
// (PWC2 with identity rows for the reused channels), eqs. 5-9, in place in y1 and in two passes:
// the branch means (GAP(PWC1(up)) = PWC1(GAP(up)) and GAP(Y2) = W2 GAP(low), by linearity), then
// per tile of pixels the products W1 up and W2 low into thread-local buffers and the fuse from
// there: neither PWC1's, PWC2's nor Y2's output is written.
void cru_fuse_cpu(const at::Tensor& y1, const at::Tensor& up_in, const at::Tensor& low_in, const at::Tensor& w1_in,
                  const at::Tensor& w2_in) {
  TORCH_CHECK(y1.dim() == 4 && y1.scalar_type() == at::kFloat, "scconv::cru_fuse_: float32 (N, C, H, W) y1");
  TORCH_CHECK(is_nchw(y1) || is_nhwc(y1), "scconv::cru_fuse_: y1 must be contiguous or channels_last");
  auto usable = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.stride(2) == t.size(3) * t.stride(3) ? t : t.to(at::kFloat).contiguous();
  };
  const at::Tensor up = usable(up_in), low = usable(low_in);
  const int64_t N = y1.size(0), C = y1.size(1), P = y1.size(2) * y1.size(3), U = up.size(1), L = low.size(1),
                K = U + L;
  const at::Tensor w1 = w1_in.to(at::kFloat).contiguous().view({C, U});
  const at::Tensor w2 = w2_in.to(at::kFloat).contiguous().view({C, L});
  TORCH_CHECK(up.size(0) == N && low.size(0) == N && up.size(2) * up.size(3) == P && low.size(2) * low.size(3) == P,
              "scconv::cru_fuse_: up and low must have y1's batch and pixels (stride 1)");
  const bool nhwc = !is_nchw(y1);
  float* yp = y1.data_ptr<float>();
  const float* w1p = w1.data_ptr<float>();
  const float* w2p = w2.data_ptr<float>();
  const View vu = view_of(up), vl = view_of(low);
  auto part = [&](int64_t n, int64_t k, int64_t& sp) -> const float* {  // channel k of [up; low]
    if (k < U) {
      sp = vu.sp;
      return vu.base + n * vu.sn + k * vu.sc;
    }
    sp = vl.sp;
    return vl.base + n * vl.sn + (k - U) * vl.sc;
  };
  // pass 1: the means of y1 and of [up; low]
  std::vector<double> m1(N * C), ms(N * K);
  if (!nhwc) {
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double s = 0.0, unused = 0.0;
        sum_sumsq(yp + i * P, P, 1, s, unused);
        m1[i] = s / P;
      }
    });
  } else {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> partial(C);
      for (int64_t n = begin; n < end; ++n) {
        constexpr int64_t kBlock = 256;
        for (int64_t c = 0; c < C; ++c) m1[n * C + c] = 0.0;
        for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
          std::fill(partial.begin(), partial.end(), 0.0f);
          float* pp = partial.data();
          for (int64_t p = p0; p < std::min(P, p0 + kBlock); ++p) {
            const float* row = yp + (n * P + p) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) pp[c] += row[c];
          }
          for (int64_t c = 0; c < C; ++c) m1[n * C + c] += partial[c];
        }
        for (int64_t c = 0; c < C; ++c) m1[n * C + c] /= P;
      }
    });
  }
  at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t sp;
      const float* src = part(i / K, i % K, sp);
      double s = 0.0, unused = 0.0;
      sum_sumsq(src, P, sp, s, unused);
      ms[i] = s / P;
    }
  });
  // beta = sigmoid(GAP(Y1) - GAP(Y2)) (eqs. 7-8)
  std::vector<float> beta(N * C), mean_parts(N * K);
  for (int64_t i = 0; i < N * K; ++i) mean_parts[i] = static_cast<float>(ms[i]);
  at::parallel_for(0, N * C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / C, c = i % C;
      const float* mu = mean_parts.data() + n * K;
      const float* ml = mu + U;
      const float* a = w1p + c * U;
      const float* b = w2p + c * L;
      float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1)
      for (int64_t k = 0; k < U; ++k) s1 += a[k] * mu[k];
#pragma omp simd reduction(+ : s2)
      for (int64_t k = 0; k < L; ++k) s2 += b[k] * ml[k];
      beta[i] = sigmoid(static_cast<float>(m1[i] + s1 - s2));
    }
  });
  // pass 2: y1 <- beta * (y1 + W1 up) + (1 - beta) * W2 low, tile by tile (eqs. 5, 6 and 9): the
  // products W1 up and W2 low of a tile in thread-local buffers, weights shared by all samples
  if (!nhwc) {
    const int64_t T = plane_tile(C, P), tiles = (P + T - 1) / T;
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> parts(K * T, 0.0f), d1(C * T), d2(C * T);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / tiles, p0 = (i % tiles) * T, len = std::min(T, P - p0);
        for (int64_t k = 0; k < K; ++k) {
          int64_t sp;
          const float* src = part(n, k, sp) + p0 * sp;
          float* dst = parts.data() + k * T;
          if (sp == 1) {
            std::memcpy(dst, src, len * sizeof(float));
          } else {
            for (int64_t p = 0; p < len; ++p) dst[p] = src[p * sp];
          }
        }
        gemm(C, T, U, w1p, U, parts.data(), T, d1.data(), T);
        gemm(C, T, L, w2p, L, parts.data() + U * T, T, d2.data(), T);
        for (int64_t c = 0; c < C; ++c) {
          float* y = yp + (n * C + c) * P + p0;
          const float* e1 = d1.data() + c * T;
          const float* e2 = d2.data() + c * T;
          const float b = beta[n * C + c], rb = 1.0f - b;
#pragma omp simd
          for (int64_t p = 0; p < len; ++p) y[p] = b * (y[p] + e1[p]) + rb * e2[p];
        }
      }
    });
  } else {
    // the weights transposed, (U x Cp) and (L x Cp), zero-padded to Cp columns
    const int64_t Cp = round_up(C, VW);
    std::vector<float> w1t(U * Cp, 0.0f), w2t(L * Cp, 0.0f), one_minus(N * C);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t k = 0; k < U; ++k) w1t[k * Cp + c] = w1p[c * U + k];
      for (int64_t k = 0; k < L; ++k) w2t[k * Cp + c] = w2p[c * L + k];
    }
    for (int64_t i = 0; i < N * C; ++i) one_minus[i] = 1.0f - beta[i];
    constexpr int64_t T = 64;
    const int64_t tiles = (P + T - 1) / T;
    const bool rows = vu.sc == 1 && vl.sc == 1;  // channels_last parts: each pixel's channels contiguous
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> parts(T * K), d1(T * Cp), d2(T * Cp);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / tiles, p0 = (i % tiles) * T, len = std::min(T, P - p0);
        if (rows) {
          for (int64_t p = 0; p < len; ++p) {
            std::memcpy(parts.data() + p * K, vu.base + n * vu.sn + (p0 + p) * vu.sp, U * sizeof(float));
            std::memcpy(parts.data() + p * K + U, vl.base + n * vl.sn + (p0 + p) * vl.sp, L * sizeof(float));
          }
        } else {
          for (int64_t k = 0; k < K; ++k) {
            int64_t sp;
            const float* src = part(n, k, sp) + p0 * sp;
            for (int64_t p = 0; p < len; ++p) parts[p * K + k] = src[p * sp];
          }
        }
        gemm(len, Cp, U, parts.data(), K, w1t.data(), Cp, d1.data(), Cp);
        gemm(len, Cp, L, parts.data() + U, K, w2t.data(), Cp, d2.data(), Cp);
        const float* b = beta.data() + n * C;
        const float* rb = one_minus.data() + n * C;
        for (int64_t p = 0; p < len; ++p) {
          float* y = yp + (n * P + p0 + p) * C;
          const float* e1 = d1.data() + p * Cp;
          const float* e2 = d2.data() + p * Cp;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) y[c] = b[c] * (y[c] + e1[c]) + rb[c] * e2[c];
        }
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY(scconv, m) {
  m.def("sru(Tensor x, Tensor scale, Tensor shift, int num_groups, float eps, float threshold) -> Tensor");
  m.def("fuse_(Tensor(a!) y1, Tensor pwc2, Tensor reused) -> ()");
  m.def("sru_squeeze(Tensor x, Tensor scale, Tensor shift, int num_groups, float eps, float threshold, "
        "Tensor weight, int groups) -> Tensor");
  m.def("sru_squeeze_split(Tensor x, Tensor scale, Tensor shift, int num_groups, float eps, float threshold, "
        "Tensor weight, int groups, int split, bool channels_last) -> (Tensor, Tensor)");
  m.def("cru_fuse_(Tensor(a!) y1, Tensor up, Tensor low, Tensor w1, Tensor w2) -> ()");
}

TORCH_LIBRARY_IMPL(scconv, CPU, m) {
  m.impl("sru", &sru_cpu);
  m.impl("fuse_", &fuse_cpu);
  m.impl("sru_squeeze", &sru_squeeze_cpu);
  m.impl("sru_squeeze_split", &sru_squeeze_split_cpu);
  m.impl("cru_fuse_", &cru_fuse_cpu);
}
