// Fused CPU inference kernels of SCConv's elementwise steps (paper variant, float32, no autograd).
//
// scconv::sru   : SRU, eqs. 1-4, in two passes over the input: GroupNorm statistics, then one pass
//                 that normalises (with eq. 2's ratio folded into the affine), gates and
//                 cross-reconstructs, writing the output once.
// scconv::sru_squeeze : SRU followed by CRU's squeezes, without writing SRU's output.
// scconv::fuse_ : CRU's fuse, eqs. 7-9, in two passes: the branch means, then
//                 y1 <- beta * y1 + (1 - beta) * concat(pwc2, reused) in place, without writing Y2.
//
// Both take NCHW-contiguous or channels_last tensors (anything else is made contiguous first) and
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
        const float tt = t;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) {
          float x1c, x1d;
          const float x2c = gate_x2(xc[p], ac, bc, tt, x1c);
          const float x2d = gate_x2(xd[p], ad, bd, tt, x1d);
          oc[p] = x1c + x2d;
          od[p] = x1d + x2c;
        }
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
        const float tt = t;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) {
          float x1c, x1d;
          gate_x2(xc[p], ac, bc, tt, x1c);
          const float x2d = gate_x2(xd[p], ad, bd, tt, x1d);
          oc[p] = x1c + x2d;
        }
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
// thread-local buffer and are multiplied by the squeeze weight (C_sq, C / groups) from there.
at::Tensor sru_squeeze_cpu(const at::Tensor& input, const at::Tensor& scale_in, const at::Tensor& shift_in,
                           int64_t num_groups, double eps, double threshold, const at::Tensor& weight_in,
                           int64_t groups) {
  TORCH_CHECK(input.dim() == 4 && input.scalar_type() == at::kFloat, "scconv::sru_squeeze: float32 (N, C, H, W) input");
  const bool nhwc = !is_nchw(input) && is_nhwc(input);
  const at::Tensor x = nhwc ? input : input.contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous(), shift = shift_in.to(at::kFloat).contiguous();
  const at::Tensor weight = weight_in.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), G = num_groups;
  const int64_t S = weight.size(0), K = C / groups, So = S / groups;  // outputs, inputs and outputs per group
  TORCH_CHECK(C % G == 0 && C % groups == 0 && S % groups == 0 && weight.numel() == S * K,
              "scconv::sru_squeeze: shapes do not match");
  at::Tensor out = at::empty({N, S, x.size(2), x.size(3)}, x.options().memory_format(
      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float t = static_cast<float>(threshold);
  std::vector<float> A, B;
  gate_affine(xp, nhwc, N, C, P, G, eps, scale.data_ptr<float>(), shift.data_ptr<float>(), A, B);
  const int64_t half = C / 2, rest = C - half;
  constexpr int64_t T = 64;  // pixels per tile
  const int64_t tiles = (P + T - 1) / T;
  if (!nhwc) {
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> buffer(C * T), accumulator(T);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / tiles, p0 = (i % tiles) * T, len = std::min(T, P - p0);
        const float tt = t;
        for (int64_t c = 0; c < C; ++c) {  // buffer[c] = W1[c] X[c] + W2[d] X[d], d = (c + C / 2) mod C
          const int64_t d = c < rest ? c + half : c - rest;
          const float* xc = xp + (n * C + c) * P + p0;
          const float* xd = xp + (n * C + d) * P + p0;
          const float ac = A[n * C + c], bc = B[n * C + c], ad = A[n * C + d], bd = B[n * C + d];
          float* row = buffer.data() + c * T;
#pragma omp simd
          for (int64_t p = 0; p < len; ++p) {
            float x1c, x1d;
            gate_x2(xc[p], ac, bc, tt, x1c);
            const float x2d = gate_x2(xd[p], ad, bd, tt, x1d);
            row[p] = x1c + x2d;
          }
        }
        for (int64_t o = 0; o < S; ++o) {
          const int64_t g = o / So;
          const float* w = wp + o * K;
          float* acc = accumulator.data();
          std::fill(acc, acc + T, 0.0f);
          for (int64_t k = 0; k < K; ++k) {
            const float wk = w[k];
            const float* row = buffer.data() + (g * K + k) * T;
#pragma omp simd
            for (int64_t p = 0; p < T; ++p) acc[p] += wk * row[p];
          }
          std::memcpy(op + (n * S + o) * P + p0, acc, len * sizeof(float));
        }
      }
    });
  } else {
    // transposed weight per group: wt[g][k][o], so that a pixel's outputs are one vector
    std::vector<float> wt(S * K);
    for (int64_t o = 0; o < S; ++o)
      for (int64_t k = 0; k < K; ++k) wt[((o / So) * K + k) * So + o % So] = wp[o * K + k];
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> x1(C), x2(C), acc(S);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / tiles, p0 = (i % tiles) * T, len = std::min(T, P - p0);
        const float* a = A.data() + n * C;
        const float* b = B.data() + n * C;
        const float tt = t;
        for (int64_t p = p0; p < p0 + len; ++p) {
          const float* row = xp + (n * P + p) * C;
          float* x1p = x1.data();
          float* x2p = x2.data();
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float x1v;
            x2p[c] = gate_x2(row[c], a[c], b[c], tt, x1v);
            x1p[c] = x1v;
          }
#pragma omp simd
          for (int64_t c = 0; c < rest; ++c) x1p[c] += x2p[c + half];
#pragma omp simd
          for (int64_t c = rest; c < C; ++c) x1p[c] += x2p[c - rest];
          float* orow = op + (n * P + p) * S;
          for (int64_t g = 0; g < groups; ++g) {
            float* accp = acc.data() + g * So;
            std::fill(accp, accp + So, 0.0f);
            for (int64_t k = 0; k < K; ++k) {
              const float v = x1p[g * K + k];
              const float* wrow = wt.data() + (g * K + k) * So;
#pragma omp simd
              for (int64_t o = 0; o < So; ++o) accp[o] += v * wrow[o];
            }
          }
          std::memcpy(orow, acc.data(), S * sizeof(float));
        }
      }
    });
  }
  return out;
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

}  // namespace

TORCH_LIBRARY(scconv, m) {
  m.def("sru(Tensor x, Tensor scale, Tensor shift, int num_groups, float eps, float threshold) -> Tensor");
  m.def("fuse_(Tensor(a!) y1, Tensor pwc2, Tensor reused) -> ()");
  m.def("sru_squeeze(Tensor x, Tensor scale, Tensor shift, int num_groups, float eps, float threshold, "
        "Tensor weight, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(scconv, CPU, m) {
  m.impl("sru", &sru_cpu);
  m.impl("fuse_", &fuse_cpu);
  m.impl("sru_squeeze", &sru_squeeze_cpu);
}
