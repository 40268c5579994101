// The single schema block of the ssdfast operator library.
//
// Backends register their kernels elsewhere: csrc/cpu/*.cpp with TORCH_LIBRARY_IMPL(ssdfast, CPU, m)
// and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL(ssdfast, CUDA, m). Python reaches the ops as
// torch.ops.ssdfast.<name>; the typed wrappers and fake kernels live in ssdfast/ops.py.
#include <Python.h>
#include <torch/library.h>

// Importing ssdfast._C loads this shared library, which runs the registrations below.
// The module itself exposes nothing.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(ssdfast, m) {
  // boxes1 [N, 4], boxes2 [M, 4] (xyxy) -> IoU [N, M] float32.
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  // boxes [..., A, 4] xyxy, anchors [A, 4] xyxy -> offsets [..., A, 4] float32.
  m.def("box_encode(Tensor boxes, Tensor anchors, float center_variance, float size_variance) -> Tensor");
  // offsets [..., A, 4], anchors [A, 4] xyxy -> boxes [..., A, 4] xyxy float32.
  m.def("box_decode(Tensor offsets, Tensor anchors, float center_variance, float size_variance) -> Tensor");
  // gt_boxes [B, G, 4], gt_mask [B, G] bool, anchors [A, 4] -> matched gt index [B, A] int64 (-1 = background).
  m.def("match(Tensor gt_boxes, Tensor gt_mask, Tensor anchors, float iou_threshold) -> Tensor");
  // gt_boxes [B, G, 4], gt_labels [B, G] (0 = padding), anchors [A, 4]
  //   -> (offsets [B, A, 4] float32, labels [B, A] int64): the loss targets in one pass.
  m.def(
      "match_encode(Tensor gt_boxes, Tensor gt_labels, Tensor anchors, float iou_threshold, "
      "float center_variance, float size_variance) -> (Tensor, Tensor)");
  // boxes [B, N, 4], scores [B, N], classes [B, N] -> (keep [B, K] int64 padded with -1, counts [B] int64).
  m.def(
      "batched_nms_padded(Tensor boxes, Tensor scores, Tensor classes, float iou_threshold, "
      "float score_threshold, int max_output) -> (Tensor, Tensor)");
  // torchvision-compatible: boxes [N, 4], scores [N] -> kept indices [n] sorted by decreasing score.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
}
