// SSD box encode / decode on the GPU: one thread per box.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../box_math.h"
#include "../checks.h"
#include "launch.cuh"

namespace ssdfast {
namespace {

template <bool kEncode>
__global__ void box_coder_kernel(const float* __restrict__ x, const float* __restrict__ anchors, int64_t total,
                                 int64_t num_anchors, float cv, float sv, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Box a = load_box(anchors + 4 * (i % num_anchors));
    if (kEncode) {
      encode_box(load_box(x + 4 * i), a, cv, sv, out + 4 * i);
    } else {
      const Box b = decode_box(x + 4 * i, a, cv, sv);
      out[4 * i] = b.x1; out[4 * i + 1] = b.y1; out[4 * i + 2] = b.x2; out[4 * i + 3] = b.y2;
    }
  }
}

template <bool kEncode>
at::Tensor box_coder_cuda(const at::Tensor& x, const at::Tensor& anchors, double cv, double sv) {
  const char* name = kEncode ? "boxes" : "offsets";
  check_coder_inputs(x, name, anchors, cv, sv);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xf = as_float(x), af = as_float(anchors);
  at::Tensor out = at::empty_like(xf);
  const int64_t total = xf.numel() / 4;
  if (total == 0) return out;
  box_coder_kernel<kEncode><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      xf.data_ptr<float>(), af.data_ptr<float>(), total, af.size(0), static_cast<float>(cv), static_cast<float>(sv),
      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CUDA, m) {
  m.impl("box_encode", &box_coder_cuda<true>);
  m.impl("box_decode", &box_coder_cuda<false>);
}

}  // namespace ssdfast
