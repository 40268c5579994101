// SSD box encode / decode on the CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

template <typename F>
at::Tensor apply_per_anchor(const at::Tensor& x, const at::Tensor& anchors, F fn) {
  const at::Tensor xf = as_float(x), af = as_float(anchors);
  at::Tensor out = at::empty_like(xf);
  const int64_t num_anchors = af.size(0), total = xf.numel() / 4;
  const float* px = xf.data_ptr<float>();
  const float* pa = af.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, total, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(px + 4 * i, load_box(pa + 4 * (i % num_anchors)), po + 4 * i);
  });
  return out;
}

at::Tensor box_encode_cpu(const at::Tensor& boxes, const at::Tensor& anchors, double cv, double sv) {
  check_coder_inputs(boxes, "boxes", anchors, cv, sv);
  const float fcv = static_cast<float>(cv), fsv = static_cast<float>(sv);
  return apply_per_anchor(boxes, anchors, [=](const float* b, const Box& a, float* out) {
    encode_box(load_box(b), a, fcv, fsv, out);
  });
}

// exp of 8 floats at once (glibc's expf is one float per call). Cephes' expf: exp(x) = 2^n exp(r)
// with n = round(x / ln 2) and r = x - n ln 2 (ln 2 in two parts, so r is exact enough), exp(r) by
// a degree-7 polynomial, 2^n built in the float's exponent bits. Within 2 ulp of expf, not
// bit-identical: decode is checked against its twin with a tolerance. Overflow gives inf,
// underflow 0 and NaN stays NaN, as expf does.
inline Floats exp_lanes(Floats x) {
  const Floats hi = Floats{} + 88.3762626647949f, lo = Floats{} - 87.3365447505531f;
  const Floats xc = min_f(max_f(x, lo), hi);
  const Floats fx = xc * 1.44269504088896341f + 0.5f;
  Floats n = __builtin_convertvector(__builtin_convertvector(fx, Ints), Floats);  // truncates toward 0...
  n = n > fx ? n - 1.0f : n;                                                      // ...so fix negatives: floor
  const Floats r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  Floats p = Floats{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const Ints exponent = (__builtin_convertvector(n, Ints) + 127) << 23;
  Floats y = p * (Floats)exponent;  // a vector cast reinterprets the bits
  y = x > hi ? Floats{} + INFINITY : y;
  y = x < lo ? Floats{} : y;
  return x != x ? x : y;  // NaN in, NaN out
}

// Anchors as centre and size arrays, computed once per call as decode_box does, padded to whole
// blocks of 8 (the padding is decoded too, never stored).
struct AnchorCenters {
  std::vector<float> cx, cy, w, h;
  AnchorCenters(const float* anchors, int64_t n) {
    const size_t padded = (n + kLanes - 1) / kLanes * kLanes;
    cx.assign(padded, 0.0f); cy.assign(padded, 0.0f); w.assign(padded, 1.0f); h.assign(padded, 1.0f);
    for (int64_t a = 0; a < n; ++a) {
      const Box b = load_box(anchors + 4 * a);
      w[a] = b.x2 - b.x1; h[a] = b.y2 - b.y1;
      cx[a] = (b.x1 + b.x2) * 0.5f; cy[a] = (b.y1 + b.y2) * 0.5f;
    }
  }
};

// Decodes anchors [a0, a0 + m) (m <= 8) of one image: t and out point at anchor a0's 4 floats.
// The 4-float rows are split into one array per coordinate, decoded 8 at a time in decode_box's
// operation order (only exp differs), and interleaved back.
__attribute__((always_inline)) inline void decode_block(const float* t, const AnchorCenters& an, int64_t a0, int m,
                                                        float cv, float sv, float* out) {
  float c[4][kLanes] = {};
  for (int l = 0; l < m; ++l)
    for (int j = 0; j < 4; ++j) c[j][l] = t[4 * l + j];
  const Floats aw = load_floats(&an.w[a0]), ah = load_floats(&an.h[a0]);
  const Floats cx = load_floats(c[0]) * cv * aw + load_floats(&an.cx[a0]);
  const Floats cy = load_floats(c[1]) * cv * ah + load_floats(&an.cy[a0]);
  const Floats w = exp_lanes(load_floats(c[2]) * sv) * aw;
  const Floats h = exp_lanes(load_floats(c[3]) * sv) * ah;
  store_floats(c[0], cx - 0.5f * w);
  store_floats(c[1], cy - 0.5f * h);
  store_floats(c[2], cx + 0.5f * w);
  store_floats(c[3], cy + 0.5f * h);
  for (int l = 0; l < m; ++l)
    for (int j = 0; j < 4; ++j) out[4 * l + j] = c[j][l];
}

// Anchors [begin, end) of one image.
SSD_CPU_VECTOR_CLONES
void decode_range(const float* t, const AnchorCenters& an, int64_t begin, int64_t end, float cv, float sv,
                  float* out) {
  int64_t a = begin;
  for (; a + kLanes <= end; a += kLanes) decode_block(t + 4 * a, an, a, kLanes, cv, sv, out + 4 * a);
  if (a < end) decode_block(t + 4 * a, an, a, static_cast<int>(end - a), cv, sv, out + 4 * a);
}

at::Tensor box_decode_cpu(const at::Tensor& offsets, const at::Tensor& anchors, double cv, double sv) {
  check_coder_inputs(offsets, "offsets", anchors, cv, sv);
  const at::Tensor t = as_float(offsets), af = as_float(anchors);
  at::Tensor out = at::empty_like(t);
  const int64_t A = af.size(0);
  if (t.numel() == 0 || A == 0) return out;
  const AnchorCenters centers(af.data_ptr<float>(), A);
  // Work pieces of (image, 1024 anchors): even a single image is split across threads.
  constexpr int64_t kPiece = 1024;
  const int64_t images = t.numel() / (4 * A), pieces_per_image = (A + kPiece - 1) / kPiece;
  const float fcv = static_cast<float>(cv), fsv = static_cast<float>(sv);
  at::parallel_for(0, images * pieces_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      const int64_t image = piece / pieces_per_image, first = piece % pieces_per_image * kPiece;
      decode_range(t.data_ptr<float>() + image * A * 4, centers, first, std::min(A, first + kPiece), fcv, fsv,
                   out.data_ptr<float>() + image * A * 4);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) {
  m.impl("box_encode", &box_encode_cpu);
  m.impl("box_decode", &box_decode_cpu);
}

}  // namespace ssdfast
