// Box maths shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// Every function here is plain float arithmetic written in one fixed order, so the CPU kernel,
// the CUDA kernel (compiled with --fmad=false, see setup.py) and the pure-PyTorch twin in
// ssdfast/reference.py produce bit-identical IoUs. That is what lets the tests compare
// matching results exactly instead of "up to ties".
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define SSD_HD __host__ __device__ __forceinline__
#else
#define SSD_HD inline
#endif

namespace ssdfast {

// An axis-aligned box in corner form (x1, y1) top-left, (x2, y2) bottom-right.
struct Box {
  float x1, y1, x2, y2;
};

SSD_HD Box load_box(const float* p) { return Box{p[0], p[1], p[2], p[3]}; }

// max/min as plain comparisons: the same result as fmaxf/fminf on finite input, and, unlike them
// (NaN rules), GCC turns these into vector max/min instructions, so the CPU loops vectorise.
SSD_HD float max_f(float a, float b) { return a > b ? a : b; }
SSD_HD float min_f(float a, float b) { return a < b ? a : b; }

SSD_HD float box_area(const Box& b) { return (b.x2 - b.x1) * (b.y2 - b.y1); }

// Intersection over union. Degenerate boxes (zero area) give 0, never NaN.
SSD_HD float box_iou(const Box& a, const Box& b) {
  const float iw = max_f(min_f(a.x2, b.x2) - max_f(a.x1, b.x1), 0.0f);
  const float ih = max_f(min_f(a.y2, b.y2) - max_f(a.y1, b.y1), 0.0f);
  const float inter = iw * ih;
  const float uni = box_area(a) + box_area(b) - inter;
  return uni > 0.0f ? inter / uni : 0.0f;
}

// SSD box coding with variances (docs/ssd.md section 3):
//   t = ((gcx - acx) / aw / vc, (gcy - acy) / ah / vc, log(gw / aw) / vs, log(gh / ah) / vs)
// Both the box and the anchor arrive in corner form.
SSD_HD void encode_box(const Box& g, const Box& a, float center_var, float size_var, float* out) {
  const float aw = a.x2 - a.x1, ah = a.y2 - a.y1;
  const float acx = (a.x1 + a.x2) * 0.5f, acy = (a.y1 + a.y2) * 0.5f;
  const float gw = g.x2 - g.x1, gh = g.y2 - g.y1;
  const float gcx = (g.x1 + g.x2) * 0.5f, gcy = (g.y1 + g.y2) * 0.5f;
  out[0] = (gcx - acx) / aw / center_var;
  out[1] = (gcy - acy) / ah / center_var;
  out[2] = logf(gw / aw) / size_var;
  out[3] = logf(gh / ah) / size_var;
}

// Inverse of encode_box: offsets t relative to anchor a -> corner-form box.
SSD_HD Box decode_box(const float* t, const Box& a, float center_var, float size_var) {
  const float aw = a.x2 - a.x1, ah = a.y2 - a.y1;
  const float acx = (a.x1 + a.x2) * 0.5f, acy = (a.y1 + a.y2) * 0.5f;
  const float cx = t[0] * center_var * aw + acx;
  const float cy = t[1] * center_var * ah + acy;
  const float w = expf(t[2] * size_var) * aw;
  const float h = expf(t[3] * size_var) * ah;
  return Box{cx - 0.5f * w, cy - 0.5f * h, cx + 0.5f * w, cy + 0.5f * h};
}

}  // namespace ssdfast
