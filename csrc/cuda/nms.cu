// Class-aware greedy NMS on the GPU with a fixed-size output and no host synchronisation.
//
// Candidates are first sorted by score per image (at::sort on [B, N], on the device). Then one
// block per image walks the sorted list in chunks of 64 (one thread per candidate):
//   a. each thread tests its candidate against the boxes already kept of the same class;
//   b. each thread builds a 64-bit row: which later chunk members of its class it overlaps;
//   c. thread 0 resolves the chunk in order with bit operations (64 steps, no IoU work) and
//      appends the survivors to the kept list;
// and the walk stops as soon as max_output boxes are kept or the scores drop below the threshold.
// Greedy order, the class rule and the tie rule (lowest index first) are those of the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

constexpr int kChunk = 64;  // candidates per step == threads per block == bits in a row mask

__global__ void nms_kernel(const float* __restrict__ boxes, const float* __restrict__ sorted_scores,
                           const float* __restrict__ sort_keys, const int64_t* __restrict__ order, const int64_t* __restrict__ classes, int64_t N,
                           float iou_threshold, bool filter_scores, float score_threshold, int64_t max_output,
                           int64_t* __restrict__ keep, int64_t* __restrict__ counts, Box* __restrict__ kept_boxes,
                           int64_t* __restrict__ kept_classes) {
  __shared__ Box s_box[kChunk];
  __shared__ int64_t s_class[kChunk];
  __shared__ unsigned long long s_row[kChunk];
  __shared__ bool s_dead[kChunk];  // invalid, or suppressed by an already kept box
  __shared__ int64_t s_count;
  const int64_t b = blockIdx.x;
  const int t = threadIdx.x;
  boxes += b * N * 4; sorted_scores += b * N; order += b * N; classes += b * N;
  keep += b * max_output; kept_boxes += b * max_output; kept_classes += b * max_output;
  if (t == 0) s_count = 0;
  __syncthreads();

  for (int64_t start = 0; start < N && s_count < max_output; start += kChunk) {
    const int64_t p = start + t;
    // A NaN score is never kept (every backend); filtered runs keep only scores above the threshold.
    const bool valid = p < N && !isnan(sorted_scores[p]) && (!filter_scores || sorted_scores[p] > score_threshold);
    if (valid) {
      s_box[t] = load_box(boxes + 4 * order[p]);
      s_class[t] = classes[order[p]];
    }
    __syncthreads();
    // a. Against the kept list (read-only in this phase).
    bool dead = !valid;
    const int64_t count = s_count;
    for (int64_t k = 0; k < count && !dead; ++k)
      dead = kept_classes[k] == s_class[t] && box_iou(kept_boxes[k], s_box[t]) > iou_threshold;
    s_dead[t] = dead;
    // b. Against later members of the chunk.
    unsigned long long row = 0ull;
    if (valid)
      for (int j = t + 1; j < kChunk && start + j < N; ++j)
        if (s_class[j] == s_class[t] && box_iou(s_box[t], s_box[j]) > iou_threshold) row |= 1ull << j;
    s_row[t] = row;
    __syncthreads();
    // c. Sequential resolution of the chunk.
    if (t == 0) {
      unsigned long long removed = 0ull;
      int64_t c = s_count;
      for (int i = 0; i < kChunk && c < max_output; ++i) {
        if (s_dead[i] || ((removed >> i) & 1ull)) continue;
        keep[c] = order[start + i];
        kept_boxes[c] = s_box[i];
        kept_classes[c] = s_class[i];
        ++c;
        removed |= s_row[i];
      }
      s_count = c;
    }
    __syncthreads();
    // Sorted keys (NaN ranked as -inf, so last): once the chunk's first key is not above the
    // threshold, no later candidate is either.
    if (filter_scores && !(sort_keys[start] > score_threshold)) break;
  }
  for (int64_t k = s_count + t; k < max_output; k += kChunk) keep[k] = -1;
  if (t == 0) counts[b] = s_count;
}

// boxes [B, N, 4], scores [B, N], classes [B, N] (all on one CUDA device) -> keep [B, K], counts [B].
std::tuple<at::Tensor, at::Tensor> launch_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                              const at::Tensor& classes, double iou_threshold, bool filter_scores,
                                              double score_threshold, int64_t max_output) {
  const at::Tensor b = as_float(boxes), s = as_float(scores), c = classes.to(at::kLong).contiguous();
  const int64_t B = b.size(0), N = b.size(1);
  at::Tensor keep = at::empty({B, max_output}, c.options());
  at::Tensor counts = at::zeros({B}, c.options());
  if (B == 0) return {keep, counts};
  if (N == 0 || max_output == 0) return {keep.fill_(-1), counts};
  // Stable sort keeps equal scores in index order, as the CPU kernel does. A descending sort would
  // put NaN first; ranking NaN as -inf sends it to the end, so the early stop below stays correct.
  const at::Tensor keys = at::where(at::isnan(s), -std::numeric_limits<float>::infinity(), s);
  const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  const at::Tensor sort_keys = std::get<0>(sorted).contiguous(), order = std::get<1>(sorted).contiguous();
  const at::Tensor sorted_scores = s.gather(1, order);  // the real scores, NaN included, in key order
  at::Tensor kept_boxes = at::empty({B, max_output, 4}, b.options());
  at::Tensor kept_classes = at::empty({B, max_output}, c.options());
  nms_kernel<<<static_cast<unsigned int>(B), kChunk, 0, at::cuda::getCurrentCUDAStream()>>>(
      b.data_ptr<float>(), sorted_scores.data_ptr<float>(), sort_keys.data_ptr<float>(), order.data_ptr<int64_t>(), c.data_ptr<int64_t>(), N,
      static_cast<float>(iou_threshold), filter_scores, static_cast<float>(score_threshold), max_output,
      keep.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), reinterpret_cast<Box*>(kept_boxes.data_ptr<float>()),
      kept_classes.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keep, counts};
}

std::tuple<at::Tensor, at::Tensor> batched_nms_padded_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                           const at::Tensor& classes, double iou_threshold,
                                                           double score_threshold, int64_t max_output) {
  check_nms_inputs(boxes, scores, classes, iou_threshold, max_output);
  const c10::cuda::CUDAGuard guard(boxes.device());
  return launch_nms(boxes, scores, classes, iou_threshold, true, score_threshold, max_output);
}

// torchvision-compatible: the number kept is only known on the device, so this one op does sync
// (one scalar copy to the host) to return a tensor of the right length.
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_single_nms_inputs(boxes, scores, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const at::Tensor one_class = at::zeros({1, n}, boxes.options().dtype(at::kLong));
  const auto result = launch_nms(boxes.unsqueeze(0), scores.unsqueeze(0), one_class, iou_threshold, false, 0.0, n);
  const int64_t count = std::get<1>(result).item<int64_t>();  // host sync
  return std::get<0>(result).select(0, 0).narrow(0, 0, count).clone();
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CUDA, m) {
  m.impl("batched_nms_padded", &batched_nms_padded_cuda);
  m.impl("nms", &nms_cuda);
}

}  // namespace ssdfast
