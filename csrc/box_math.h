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

// CPU vector lanes. The CPU kernels' hot loops work on Floats, 8 floats held as one value (GCC/Clang
// vector extensions): +, -, *, / and comparisons act lane by lane, and `mask ? x : y` selects lane
// by lane. Each lane does exactly the scalar operations, so results are bit-identical to the
// scalar code. SSD_CPU_VECTOR_CLONES compiles a function twice, for AVX2 (one 8-float instruction
// per operation) and for the x86-64 baseline (two SSE instructions); the loader picks the best one
// for the CPU at run time (an ifunc), so the build still runs on any x86-64. AVX2 does not imply
// FMA, and -ffp-contract=off forbids contraction anyway. Elsewhere it expands to nothing.
#if !defined(__CUDACC__)
// Floats are passed between inline functions of one file only, so the ABI note GCC prints for
// 32-byte vectors in a non-AVX build does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#include <cstdint>
#include <cstring>
namespace ssdfast {
constexpr int kLanes = 8;
using Floats = float __attribute__((vector_size(4 * kLanes)));
using Ints = int32_t __attribute__((vector_size(4 * kLanes)));  // also the type of a Floats comparison
inline Floats load_floats(const float* p) { Floats v; std::memcpy(&v, p, sizeof v); return v; }
inline void store_floats(float* p, Floats v) { std::memcpy(p, &v, sizeof v); }
inline Ints load_ints(const int32_t* p) { Ints v; std::memcpy(&v, p, sizeof v); return v; }
inline void store_ints(int32_t* p, Ints v) { std::memcpy(p, &v, sizeof v); }
}  // namespace ssdfast
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define SSD_CPU_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SSD_CPU_VECTOR_CLONES
#endif
#endif

namespace ssdfast {

// An axis-aligned box in corner form (x1, y1) top-left, (x2, y2) bottom-right.
struct Box {
  float x1, y1, x2, y2;
};

SSD_HD Box load_box(const float* p) { return Box{p[0], p[1], p[2], p[3]}; }

// max/min as plain comparisons: the same result as fmaxf/fminf on finite input, and, unlike them
// (NaN rules), GCC turns these into vector max/min instructions, so the CPU loops vectorise.
// Templates so that the same source serves float and Floats (8 lanes).
template <typename T> SSD_HD T max_f(T a, T b) { return a > b ? a : b; }
template <typename T> SSD_HD T min_f(T a, T b) { return a < b ? a : b; }

SSD_HD float box_area(const Box& b) { return (b.x2 - b.x1) * (b.y2 - b.y1); }

// Intersection over union from corners and areas (loops that meet one box many times compute its
// area once; the value is box_area's, so the IoU is the same). T is float, or Floats on the CPU:
// one source, the same operations in the same order, so 8-lane IoUs are bit-identical to scalar ones.
template <typename T>
SSD_HD T iou_from_corners(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  const T zero = T{};
  const T iw = max_f(min_f(ax2, bx2) - max_f(ax1, bx1), zero);
  const T ih = max_f(min_f(ay2, by2) - max_f(ay1, by1), zero);
  const T inter = iw * ih;
  const T uni = area_a + area_b - inter;
  // Divide first, then select: the same value, and a division that always runs keeps the CPU
  // loops branch-free.
  const T ratio = inter / uni;
  return uni > zero ? ratio : zero;
}

SSD_HD float box_iou_with_areas(const Box& a, float area_a, const Box& b, float area_b) {
  return iou_from_corners(a.x1, a.y1, a.x2, a.y2, area_a, b.x1, b.y1, b.x2, b.y2, area_b);
}

// Intersection over union. Degenerate boxes (zero area) give 0, never NaN.
SSD_HD float box_iou(const Box& a, const Box& b) { return box_iou_with_areas(a, box_area(a), b, box_area(b)); }

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
