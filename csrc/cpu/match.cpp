// SSD matching (DESIGN section 3) on the CPU, one image per task, no [G, A] IoU matrix stored.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

// Matches one image. gt: [G, 4], valid: [G], anchors: [A, 4]; writes matched[A] (-1 = background).
void match_image(const float* gt, const bool* valid, int64_t num_gt, const float* anchors, int64_t num_anchors,
                 float iou_threshold, int64_t* matched) {
  std::vector<float> anchor_best_iou(num_anchors, -1.0f);  // best IoU of each anchor over ground truths
  std::vector<float> gt_best_iou(num_gt, -1.0f);           // best IoU of each ground truth over anchors
  std::vector<int64_t> gt_best_anchor(num_gt, -1);
  for (int64_t a = 0; a < num_anchors; ++a) {
    const Box anchor = load_box(anchors + 4 * a);
    matched[a] = -1;
    for (int64_t g = 0; g < num_gt; ++g) {
      if (!valid[g]) continue;
      const float iou = box_iou(load_box(gt + 4 * g), anchor);
      // Strict '>' in ascending order: on ties the lowest index wins, for both reductions.
      if (iou > anchor_best_iou[a]) { anchor_best_iou[a] = iou; matched[a] = g; }
      if (iou > gt_best_iou[g]) { gt_best_iou[g] = iou; gt_best_anchor[g] = a; }
    }
  }
  // Each ground truth claims its best anchor whatever the IoU; a later one wins a contested anchor.
  for (int64_t g = 0; g < num_gt; ++g) {
    if (!valid[g]) continue;
    matched[gt_best_anchor[g]] = g;
    anchor_best_iou[gt_best_anchor[g]] = 2.0f;
  }
  for (int64_t a = 0; a < num_anchors; ++a)
    if (!(anchor_best_iou[a] > iou_threshold)) matched[a] = -1;
}

at::Tensor match_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_mask, const at::Tensor& anchors,
                     double iou_threshold) {
  check_match_inputs(gt_boxes, gt_mask, anchors, iou_threshold);
  const at::Tensor gt = as_float(gt_boxes), an = as_float(anchors), mask = gt_mask.contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), A = an.size(0);
  at::Tensor matched = at::empty({B, A}, gt.options().dtype(at::kLong));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      match_image(gt.data_ptr<float>() + b * G * 4, mask.data_ptr<bool>() + b * G, G, an.data_ptr<float>(), A,
                  static_cast<float>(iou_threshold), matched.data_ptr<int64_t>() + b * A);
  });
  return matched;
}

std::tuple<at::Tensor, at::Tensor> match_encode_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                                                    const at::Tensor& anchors, double iou_threshold, double cv,
                                                    double sv) {
  check_match_encode_inputs(gt_boxes, gt_labels, anchors, iou_threshold, cv, sv);
  const at::Tensor gt = as_float(gt_boxes), an = as_float(anchors);
  const at::Tensor labels = gt_labels.to(at::kLong).contiguous();
  const at::Tensor valid = labels.gt(0).contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), A = an.size(0);
  at::Tensor offsets = at::empty({B, A, 4}, gt.options());
  at::Tensor out_labels = at::empty({B, A}, labels.options());
  const float fcv = static_cast<float>(cv), fsv = static_cast<float>(sv);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> matched(A);
    for (int64_t b = begin; b < end; ++b) {
      const float* g = gt.data_ptr<float>() + b * G * 4;
      const int64_t* l = labels.data_ptr<int64_t>() + b * G;
      match_image(g, valid.data_ptr<bool>() + b * G, G, an.data_ptr<float>(), A, static_cast<float>(iou_threshold),
                  matched.data());
      float* off = offsets.data_ptr<float>() + b * A * 4;
      int64_t* lab = out_labels.data_ptr<int64_t>() + b * A;
      for (int64_t a = 0; a < A; ++a) {
        const int64_t m = matched[a];
        if (m < 0) {
          off[4 * a] = off[4 * a + 1] = off[4 * a + 2] = off[4 * a + 3] = 0.0f;
          lab[a] = 0;
        } else {
          encode_box(load_box(g + 4 * m), load_box(an.data_ptr<float>() + 4 * a), fcv, fsv, off + 4 * a);
          lab[a] = l[m];
        }
      }
    }
  });
  return {offsets, out_labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) {
  m.impl("match", &match_cpu);
  m.impl("match_encode", &match_encode_cpu);
}

}  // namespace ssdfast
