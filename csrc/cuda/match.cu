// SSD matching (docs/ssd.md section 2) on the GPU, in two kernels over a (anchor chunk, image) grid.
//
//  1. best_per_anchor_kernel: one thread per anchor loops over the image's ground truths (kept in
//     shared memory) and records the anchor's best ground truth. The best anchor of each ground truth
//     is found at the same time by a max-reduction of a packed 64-bit key
//         key = (IoU bits << 32) | (0xFFFFFFFF - anchor)
//     (non-negative float bits order like the floats; the low half makes the lowest anchor win ties):
//     a warp shuffle reduction, then one shared-memory atomicMax per warp, then one global atomicMax
//     per block. No [G, A] IoU matrix is ever stored.
//  2. claim_and_encode_kernel: each anchor checks whether a ground truth claimed it (the last claimant
//     wins), applies the IoU threshold and, for match_encode, writes offsets and labels.
// No host synchronisation anywhere: the op is safe inside a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../box_math.h"
#include "../checks.h"
#include "launch.cuh"

namespace ssdfast {
namespace {

// Shared memory holds G boxes and G keys; 1024 ground truths per image fit in 25 KB.
constexpr int64_t kMaxGroundTruths = 1024;
using Key = unsigned long long;

__device__ __forceinline__ Key pack_key(float iou, int64_t anchor) {
  return (static_cast<Key>(__float_as_uint(iou)) << 32) | (0xFFFFFFFFull - static_cast<Key>(anchor));
}
__device__ __forceinline__ int64_t key_anchor(Key key) { return 0xFFFFFFFFll - static_cast<int64_t>(key & 0xFFFFFFFFull); }

__global__ void best_per_anchor_kernel(const float* __restrict__ gt, const bool* __restrict__ valid, int64_t G,
                                       const float* __restrict__ anchors, int64_t A, float* __restrict__ best_iou,
                                       int64_t* __restrict__ best_gt, Key* __restrict__ gt_keys) {
  extern __shared__ __align__(16) unsigned char smem[];  // holds 64-bit keys and float boxes
  Key* s_key = reinterpret_cast<Key*>(smem);
  Box* s_gt = reinterpret_cast<Box*>(s_key + G);
  bool* s_valid = reinterpret_cast<bool*>(s_gt + G);
  const int64_t b = blockIdx.y;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    s_key[g] = 0;
    s_gt[g] = load_box(gt + (b * G + g) * 4);
    s_valid[g] = valid[b * G + g];
  }
  __syncthreads();

  const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool active = a < A;
  const Box anchor = active ? load_box(anchors + 4 * a) : Box{0.f, 0.f, 0.f, 0.f};
  float best = -1.0f;
  int64_t best_g = -1;
  for (int64_t g = 0; g < G; ++g) {
    if (!s_valid[g]) continue;  // same branch for the whole block: the shuffles below stay converged
    const float iou = box_iou(s_gt[g], anchor);
    if (active && iou > best) { best = iou; best_g = g; }  // ascending g, strict '>': lowest index wins
    Key key = active ? pack_key(iou, a) : 0ull;
    for (int offset = 16; offset > 0; offset /= 2) {
      const Key other = __shfl_xor_sync(0xffffffffu, key, offset);
      key = other > key ? other : key;
    }
    if ((threadIdx.x & 31) == 0 && key != 0ull) atomicMax(&s_key[g], key);
  }
  if (active) {
    best_iou[b * A + a] = best;
    best_gt[b * A + a] = best_g;
  }
  __syncthreads();
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x)
    if (s_key[g] != 0ull) atomicMax(&gt_keys[b * G + g], s_key[g]);
}

__global__ void claim_and_encode_kernel(const float* __restrict__ gt, const bool* __restrict__ valid,
                                        const int64_t* __restrict__ gt_labels, int64_t G,
                                        const float* __restrict__ anchors, int64_t A, const float* __restrict__ best_iou,
                                        const Key* __restrict__ gt_keys, float iou_threshold, float cv, float sv,
                                        int64_t* __restrict__ matched, float* __restrict__ offsets,
                                        int64_t* __restrict__ labels) {
  extern __shared__ __align__(16) unsigned char smem[];  // holds 64-bit keys and float boxes
  int64_t* s_claimed = reinterpret_cast<int64_t*>(smem);  // anchor claimed by each ground truth (-1: none)
  const int64_t b = blockIdx.y;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x)
    s_claimed[g] = valid[b * G + g] ? key_anchor(gt_keys[b * G + g]) : -1;
  __syncthreads();

  const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (a >= A) return;
  float iou = best_iou[b * A + a];
  int64_t m = matched[b * A + a];
  for (int64_t g = 0; g < G; ++g)
    if (s_claimed[g] == a) { m = g; iou = 2.0f; }  // ascending g: the last claimant wins
  if (!(iou > iou_threshold)) m = -1;
  matched[b * A + a] = m;
  if (offsets == nullptr) return;
  float* off = offsets + (b * A + a) * 4;
  if (m < 0) {
    off[0] = off[1] = off[2] = off[3] = 0.0f;
    labels[b * A + a] = 0;
  } else {
    encode_box(load_box(gt + (b * G + m) * 4), load_box(anchors + 4 * a), cv, sv, off);
    labels[b * A + a] = gt_labels[b * G + m];
  }
}

// Runs both kernels. With gt_labels defined it also fills offsets [B, A, 4] and labels [B, A].
at::Tensor launch_match(const at::Tensor& gt, const at::Tensor& valid, const at::Tensor& gt_labels,
                        const at::Tensor& anchors, double iou_threshold, double cv, double sv, at::Tensor* offsets,
                        at::Tensor* labels) {
  const int64_t B = gt.size(0), G = gt.size(1), A = anchors.size(0);
  TORCH_CHECK(G <= kMaxGroundTruths, "ssdfast: the CUDA matcher takes at most ", kMaxGroundTruths,
              " ground-truth boxes per image (G), got G = ", G);
  at::Tensor matched = at::empty({B, A}, gt.options().dtype(at::kLong));
  if (offsets != nullptr) {
    *offsets = at::empty({B, A, 4}, gt.options());
    *labels = at::empty({B, A}, gt.options().dtype(at::kLong));
  }
  if (B == 0 || A == 0) return matched;
  at::Tensor best_iou = at::empty({B, A}, gt.options());
  at::Tensor keys = at::zeros({B, std::max<int64_t>(G, 1)}, gt.options().dtype(at::kLong));
  Key* key_ptr = reinterpret_cast<Key*>(keys.data_ptr<int64_t>());
  const dim3 grid(static_cast<unsigned int>((A + kThreads - 1) / kThreads), static_cast<unsigned int>(B));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const size_t smem1 = G * (sizeof(Key) + sizeof(Box) + sizeof(bool));
  best_per_anchor_kernel<<<grid, kThreads, smem1, stream>>>(gt.data_ptr<float>(), valid.data_ptr<bool>(), G,
                                                           anchors.data_ptr<float>(), A, best_iou.data_ptr<float>(),
                                                           matched.data_ptr<int64_t>(), key_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const bool encode = offsets != nullptr;
  claim_and_encode_kernel<<<grid, kThreads, G * sizeof(int64_t), stream>>>(
      gt.data_ptr<float>(), valid.data_ptr<bool>(), encode ? gt_labels.data_ptr<int64_t>() : nullptr, G,
      anchors.data_ptr<float>(), A, best_iou.data_ptr<float>(), key_ptr, static_cast<float>(iou_threshold),
      static_cast<float>(cv), static_cast<float>(sv), matched.data_ptr<int64_t>(),
      encode ? offsets->data_ptr<float>() : nullptr, encode ? labels->data_ptr<int64_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return matched;
}

at::Tensor match_cuda(const at::Tensor& gt_boxes, const at::Tensor& gt_mask, const at::Tensor& anchors,
                      double iou_threshold) {
  check_match_inputs(gt_boxes, gt_mask, anchors, iou_threshold);
  const c10::cuda::CUDAGuard guard(gt_boxes.device());
  return launch_match(as_float(gt_boxes), gt_mask.contiguous(), at::Tensor(), as_float(anchors), iou_threshold, 1.0,
                      1.0, nullptr, nullptr);
}

std::tuple<at::Tensor, at::Tensor> match_encode_cuda(const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                                                     const at::Tensor& anchors, double iou_threshold, double cv,
                                                     double sv) {
  check_match_encode_inputs(gt_boxes, gt_labels, anchors, iou_threshold, cv, sv);
  const c10::cuda::CUDAGuard guard(gt_boxes.device());
  const at::Tensor labels = gt_labels.to(at::kLong).contiguous();
  at::Tensor offsets, out_labels;
  launch_match(as_float(gt_boxes), labels.gt(0).contiguous(), labels, as_float(anchors), iou_threshold, cv, sv,
               &offsets, &out_labels);
  return {offsets, out_labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CUDA, m) {
  m.impl("match", &match_cuda);
  m.impl("match_encode", &match_encode_cuda);
}

}  // namespace ssdfast
