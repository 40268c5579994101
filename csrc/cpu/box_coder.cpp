// SSD box encode / decode on the CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

at::Tensor box_decode_cpu(const at::Tensor& offsets, const at::Tensor& anchors, double cv, double sv) {
  check_coder_inputs(offsets, "offsets", anchors, cv, sv);
  const float fcv = static_cast<float>(cv), fsv = static_cast<float>(sv);
  return apply_per_anchor(offsets, anchors, [=](const float* t, const Box& a, float* out) {
    const Box b = decode_box(t, a, fcv, fsv);
    out[0] = b.x1; out[1] = b.y1; out[2] = b.x2; out[3] = b.y2;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) {
  m.impl("box_encode", &box_encode_cpu);
  m.impl("box_decode", &box_decode_cpu);
}

}  // namespace ssdfast
