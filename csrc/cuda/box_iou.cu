// Pairwise IoU on the GPU: one thread per (i, j) pair.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../box_math.h"
#include "../checks.h"
#include "launch.cuh"

namespace ssdfast {
namespace {

__global__ void box_iou_kernel(const float* __restrict__ b1, const float* __restrict__ b2, int64_t n, int64_t m,
                               float* __restrict__ out) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * m;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / m, j = idx % m;
    out[idx] = box_iou(load_box(b1 + 4 * i), load_box(b2 + 4 * j));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1", 2, "[N, 4]");
  check_boxes(boxes2, "boxes2", 2, "[M, 4]");
  check_same_device(boxes1, "boxes1", boxes2, "boxes2");
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = as_float(boxes1), b2 = as_float(boxes2);
  const int64_t n = b1.size(0), m = b2.size(0);
  at::Tensor out = at::empty({n, m}, b1.options());
  if (n * m == 0) return out;
  box_iou_kernel<<<grid_for(n * m), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      b1.data_ptr<float>(), b2.data_ptr<float>(), n, m, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CUDA, m) { m.impl("box_iou", &box_iou_cuda); }

}  // namespace ssdfast
