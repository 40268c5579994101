// Class-aware greedy NMS on the CPU.
//
// Candidates are visited once in decreasing score order; each is compared only with the boxes
// already kept *of its own class*, and the scan stops as soon as max_output boxes are kept.
// That gives exactly "per-class NMS, then the best max_output by score", at a fraction of the
// cost of an all-pairs suppression matrix.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <vector>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

// One image: boxes [N, 4], scores [N], classes [N] -> keep[max_output] (-1 padded); returns the count.
int64_t nms_image(const float* boxes, const float* scores, const int64_t* classes, int64_t n, float iou_threshold,
                  bool filter_scores, float score_threshold, int64_t max_output, int64_t* keep) {
  std::vector<int64_t> order;
  order.reserve(n);
  // A NaN score is never kept (and would break the sort's ordering); filtered runs keep only
  // scores above the threshold.
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(scores[i]) && (!filter_scores || scores[i] > score_threshold)) order.push_back(i);
  // Stable: equal scores keep their input order (lowest index first).
  std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return scores[i] > scores[j]; });

  std::vector<int64_t> kept;
  std::unordered_map<int64_t, std::vector<Box>> kept_boxes_of_class;  // a candidate meets only its own class
  for (const int64_t i : order) {
    if (static_cast<int64_t>(kept.size()) >= max_output) break;
    const Box box = load_box(boxes + 4 * i);
    std::vector<Box>& same_class = kept_boxes_of_class[classes[i]];
    bool suppressed = false;
    for (const Box& k : same_class) {
      if (box_iou(k, box) > iou_threshold) {
        suppressed = true;
        break;
      }
    }
    if (!suppressed) {
      kept.push_back(i);
      same_class.push_back(box);
    }
  }
  std::fill(keep, keep + max_output, -1);
  std::copy(kept.begin(), kept.end(), keep);
  return static_cast<int64_t>(kept.size());
}

std::tuple<at::Tensor, at::Tensor> batched_nms_padded_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                          const at::Tensor& classes, double iou_threshold,
                                                          double score_threshold, int64_t max_output) {
  check_nms_inputs(boxes, scores, classes, iou_threshold, max_output);
  const at::Tensor b = as_float(boxes), s = as_float(scores), c = classes.to(at::kLong).contiguous();
  const int64_t B = b.size(0), N = b.size(1);
  at::Tensor keep = at::empty({B, max_output}, c.options());
  at::Tensor counts = at::empty({B}, c.options());
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      counts.data_ptr<int64_t>()[i] =
          nms_image(b.data_ptr<float>() + i * N * 4, s.data_ptr<float>() + i * N, c.data_ptr<int64_t>() + i * N, N,
                    static_cast<float>(iou_threshold), true, static_cast<float>(score_threshold), max_output,
                    keep.data_ptr<int64_t>() + i * max_output);
  });
  return {keep, counts};
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_single_nms_inputs(boxes, scores, iou_threshold);
  const at::Tensor b = as_float(boxes), s = as_float(scores);
  const int64_t n = b.size(0);
  const std::vector<int64_t> one_class(n, 0);
  at::Tensor keep = at::empty({n}, b.options().dtype(at::kLong));
  const int64_t count = nms_image(b.data_ptr<float>(), s.data_ptr<float>(), one_class.data(), n,
                                  static_cast<float>(iou_threshold), false, 0.0f, n, keep.data_ptr<int64_t>());
  return keep.narrow(0, 0, count).clone();
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) {
  m.impl("batched_nms_padded", &batched_nms_padded_cpu);
  m.impl("nms", &nms_cpu);
}

}  // namespace ssdfast
