// Pairwise IoU on the CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1", 2, "[N, 4]");
  check_boxes(boxes2, "boxes2", 2, "[M, 4]");
  check_same_device(boxes1, "boxes1", boxes2, "boxes2");
  const at::Tensor b1 = as_float(boxes1), b2 = as_float(boxes2);
  const int64_t n = b1.size(0), m = b2.size(0);
  at::Tensor out = at::empty({n, m}, b1.options());
  const float* p1 = b1.data_ptr<float>();
  const float* p2 = b2.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Box a = load_box(p1 + 4 * i);
      for (int64_t j = 0; j < m; ++j) po[i * m + j] = box_iou(a, load_box(p2 + 4 * j));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) { m.impl("box_iou", &box_iou_cpu); }

}  // namespace ssdfast
