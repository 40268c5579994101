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
  float* po = out.data_ptr<float>();
  // boxes2 as columns (x1[], y1[], x2[], y2[]): the inner loop then reads contiguous floats and the
  // compiler vectorises it. Same arithmetic as box_iou() in box_math.h, so results are identical.
  const at::Tensor cols = b2.t().contiguous();
  const float* x1 = cols.data_ptr<float>();
  const float *y1 = x1 + m, *x2 = x1 + 2 * m, *y2 = x1 + 3 * m;
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Box a = load_box(p1 + 4 * i);
      const float area_a = box_area(a);
      float* row = po + i * m;
      for (int64_t j = 0; j < m; ++j) {
        const float iw = max_f(min_f(a.x2, x2[j]) - max_f(a.x1, x1[j]), 0.0f);
        const float ih = max_f(min_f(a.y2, y2[j]) - max_f(a.y1, y1[j]), 0.0f);
        const float inter = iw * ih;
        const float uni = area_a + (x2[j] - x1[j]) * (y2[j] - y1[j]) - inter;
        row[j] = uni > 0.0f ? inter / uni : 0.0f;
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) { m.impl("box_iou", &box_iou_cpu); }

}  // namespace ssdfast
