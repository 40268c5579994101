// Input validation shared by the CPU and CUDA entry points: every message names the argument
// and says what was expected and what arrived, so a wrong call fails loudly at the op boundary.
#pragma once

#include <ATen/ATen.h>

namespace ssdfast {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "ssdfast: ", name,
              " must be a floating point tensor (float32, float16, bfloat16 or float64), got ",
              t.scalar_type());
}

// A tensor whose last dimension holds 4 box coordinates and whose rank is `rank`.
inline void check_boxes(const at::Tensor& t, const char* name, int64_t rank, const char* shape) {
  check_float(t, name);
  TORCH_CHECK(t.dim() == rank && t.size(-1) == 4, "ssdfast: ", name, " must have shape ", shape,
              ", got ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "ssdfast: ", an, " and ", bn,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_threshold(double v, const char* name) {
  TORCH_CHECK(v >= 0.0 && v <= 1.0, "ssdfast: ", name, " must be in [0, 1], got ", v);
}

inline void check_variances(double center_var, double size_var) {
  TORCH_CHECK(center_var > 0.0 && size_var > 0.0,
              "ssdfast: variances must be positive, got center_variance=", center_var,
              " size_variance=", size_var);
}

// Box coding: x is [..., A, 4] (boxes or offsets) and anchors [A, 4].
inline void check_coder_inputs(const at::Tensor& x, const char* name, const at::Tensor& anchors, double center_var,
                               double size_var) {
  check_float(x, name);
  check_boxes(anchors, "anchors", 2, "[A, 4]");
  TORCH_CHECK(x.dim() >= 2 && x.size(-1) == 4 && x.size(-2) == anchors.size(0), "ssdfast: ", name,
              " must have shape [..., A, 4] with A = ", anchors.size(0), " (the number of anchors), got ",
              x.sizes());
  check_same_device(x, name, anchors, "anchors");
  check_variances(center_var, size_var);
}

// Ground truth for matching: boxes [B, G, 4] and a per-box tensor [B, G] (mask or labels).
inline void check_ground_truth(const at::Tensor& gt_boxes, const at::Tensor& per_box, const char* per_box_name,
                               const at::Tensor& anchors) {
  check_boxes(gt_boxes, "gt_boxes", 3, "[B, G, 4]");
  check_boxes(anchors, "anchors", 2, "[A, 4]");
  TORCH_CHECK(per_box.dim() == 2 && per_box.size(0) == gt_boxes.size(0) && per_box.size(1) == gt_boxes.size(1),
              "ssdfast: ", per_box_name, " must have shape [B, G] = [", gt_boxes.size(0), ", ",
              gt_boxes.size(1), "] to match gt_boxes, got ", per_box.sizes());
  check_same_device(gt_boxes, "gt_boxes", per_box, per_box_name);
  check_same_device(gt_boxes, "gt_boxes", anchors, "anchors");
  // Zero anchors would leave "each ground truth claims its best anchor" without an anchor to claim.
  TORCH_CHECK(anchors.size(0) > 0, "ssdfast: anchors must hold at least one box to match against, got A = 0");
}

inline void check_match_inputs(const at::Tensor& gt_boxes, const at::Tensor& gt_mask, const at::Tensor& anchors,
                               double iou_threshold) {
  check_ground_truth(gt_boxes, gt_mask, "gt_mask", anchors);
  TORCH_CHECK(gt_mask.scalar_type() == at::kBool, "ssdfast: gt_mask must be a bool tensor, got ",
              gt_mask.scalar_type());
  check_threshold(iou_threshold, "iou_threshold");
}

inline void check_match_encode_inputs(const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                                      const at::Tensor& anchors, double iou_threshold, double center_var,
                                      double size_var) {
  check_ground_truth(gt_boxes, gt_labels, "gt_labels", anchors);
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong || gt_labels.scalar_type() == at::kInt,
              "ssdfast: gt_labels must be an int64 or int32 tensor (0 = padding), got ", gt_labels.scalar_type());
  check_threshold(iou_threshold, "iou_threshold");
  check_variances(center_var, size_var);
}

// boxes [N, 4] and scores [N] for the torchvision-compatible single-image nms.
inline void check_single_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes(boxes, "boxes", 2, "[N, 4]");
  check_float(scores, "scores");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "ssdfast: scores must have shape [N] = [",
              boxes.size(0), "] to match boxes, got ", scores.sizes());
  check_same_device(boxes, "boxes", scores, "scores");
  check_threshold(iou_threshold, "iou_threshold");
}

// Boxes/scores/classes for the padded batched NMS.
inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& classes,
                             double iou_threshold, int64_t max_output) {
  check_boxes(boxes, "boxes", 3, "[B, N, 4]");
  check_float(scores, "scores");
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == boxes.size(0) && scores.size(1) == boxes.size(1),
              "ssdfast: scores must have shape [B, N] = [", boxes.size(0), ", ", boxes.size(1),
              "] to match boxes, got ", scores.sizes());
  TORCH_CHECK(classes.scalar_type() == at::kLong || classes.scalar_type() == at::kInt,
              "ssdfast: classes must be an int64 or int32 tensor, got ", classes.scalar_type());
  TORCH_CHECK(classes.sizes() == scores.sizes(), "ssdfast: classes must have shape [B, N] = ", scores.sizes(),
              ", got ", classes.sizes());
  check_same_device(boxes, "boxes", scores, "scores");
  check_same_device(boxes, "boxes", classes, "classes");
  check_threshold(iou_threshold, "iou_threshold");
  TORCH_CHECK(max_output >= 0, "ssdfast: max_output must be >= 0, got ", max_output);
}

// Kernels read float32, contiguous memory. For float32 contiguous input this is free (no copy);
// fp16/bf16/fp64 input costs one elementwise cast, which keeps one kernel instantiation per op.
inline at::Tensor as_float(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace ssdfast
