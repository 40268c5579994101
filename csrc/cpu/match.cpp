// SSD matching (docs/ssd.md section 2) on the CPU, one image per task, no [G, A] IoU matrix stored.
//
// Cost model. The work that matters is (valid ground truths) x (anchors) IoUs: an image with 3
// boxes padded to G = 128 must cost 3 x 8732 IoUs, not 128 x 8732 branches. So each image first
// compacts its valid boxes, then sweeps the anchors once per valid box (ground truth outer,
// anchors inner). The inner sweep is branch-free element-wise work over anchor arrays in
// structure-of-arrays form, 8 anchors per step (Floats lanes, see box_math.h).
//
// Exactness. The IoU is box_math.h's, in the same operation order, so values are bit-identical to
// the reference and the CUDA kernel. The tie rules are those of a sequential scan:
//   - each anchor's best ground truth: strict '>' while ground truths arrive in ascending index,
//     so the lowest index wins a tie;
//   - each ground truth's best anchor: per lane strict '>' in ascending anchor order, then the
//     lanes are combined by (highest IoU, then lowest anchor index), so the lowest index wins;
//   - claims in ascending ground-truth order, so the later ground truth wins a contested anchor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

// Anchors as one array per coordinate (plus the area), built once per call and shared by all
// images: the sweep loads 8 consecutive anchors' x1 with one instruction instead of gathering every
// fourth float. Padded to a whole number of lanes with empty boxes at (0, 0): their IoU with any
// box is exactly 0 (no intersection), and as they come last they never win a tie. Costs 5 x A
// floats (175 KB for SSD300's 8732 anchors).
struct AnchorArrays {
  int64_t count, padded;
  std::vector<float> x1, y1, x2, y2, area;

  AnchorArrays(const float* anchors, int64_t n)
      : count(n), padded((n + kLanes - 1) / kLanes * kLanes), x1(padded), y1(padded), x2(padded), y2(padded),
        area(padded) {
    for (int64_t a = 0; a < n; ++a) {
      const Box b = load_box(anchors + 4 * a);
      x1[a] = b.x1; y1[a] = b.y1; x2[a] = b.x2; y2[a] = b.y2;
      area[a] = box_area(b);
    }
  }
};

// One ground truth (compact index k) against every anchor, 8 anchors per step. Updates each
// anchor's best ground truth (best_iou, best_gt: padded arrays) and returns this ground truth's
// best anchor. About 20 vector operations per 8 anchors, no branch: 8732 anchors take 1,092 steps.
SSD_CPU_VECTOR_CLONES
int32_t sweep_anchors(const Box& g, int32_t k, const AnchorArrays& an, float* best_iou, int32_t* best_gt) {
  const Floats gx1 = Floats{} + g.x1, gy1 = Floats{} + g.y1, gx2 = Floats{} + g.x2, gy2 = Floats{} + g.y2;
  const Floats g_area = Floats{} + box_area(g);
  const Ints gt_index = Ints{} + k;
  // This ground truth's running best anchor, one per lane: lane l sees anchors l, l + 8, l + 16, ...
  Floats lane_iou = Floats{} - 1.0f;
  Ints lane_anchor = Ints{}, anchor = Ints{0, 1, 2, 3, 4, 5, 6, 7};
  for (int64_t a = 0; a < an.padded; a += kLanes, anchor += kLanes) {
    const Floats iou = iou_from_corners(gx1, gy1, gx2, gy2, g_area, load_floats(&an.x1[a]), load_floats(&an.y1[a]),
                                        load_floats(&an.x2[a]), load_floats(&an.y2[a]), load_floats(&an.area[a]));
    const Floats old_iou = load_floats(best_iou + a);
    const Ints anchor_improves = iou > old_iou;  // strict: an earlier ground truth keeps a tie
    store_floats(best_iou + a, anchor_improves ? iou : old_iou);
    store_ints(best_gt + a, anchor_improves ? gt_index : load_ints(best_gt + a));
    const Ints gt_improves = iou > lane_iou;  // strict: an earlier anchor of the lane keeps a tie
    lane_iou = gt_improves ? iou : lane_iou;
    lane_anchor = gt_improves ? anchor : lane_anchor;
  }
  // Combine the lanes: highest IoU, then lowest anchor index (the sequential scan's answer).
  int best = 0;
  for (int l = 1; l < kLanes; ++l)
    if (lane_iou[l] > lane_iou[best] || (lane_iou[l] == lane_iou[best] && lane_anchor[l] < lane_anchor[best]))
      best = l;
  return lane_anchor[best];
}

// Per-thread working memory, reused across the images of a task (no allocation per image).
struct MatchScratch {
  std::vector<int32_t> valid_gt;  // original slot of each valid ground truth, ascending
  std::vector<float> best_iou;    // [A] best IoU of each anchor so far (2 once claimed)
  std::vector<int32_t> best_gt;   // [A] compact index of that ground truth
};

// Matches one image. gt: [G, 4], valid: [G], anchors as arrays. Leaves in scratch, for each anchor,
// best_iou[a] (> iou_threshold means matched) and best_gt[a] (a compact index into valid_gt).
void match_image(const float* gt, const bool* valid, int64_t num_gt, const AnchorArrays& an, MatchScratch& s) {
  s.valid_gt.clear();
  for (int64_t g = 0; g < num_gt; ++g)
    if (valid[g]) s.valid_gt.push_back(static_cast<int32_t>(g));
  s.best_iou.assign(an.padded, -1.0f);  // below any IoU: the first ground truth always takes the anchor
  s.best_gt.assign(an.padded, 0);
  if (an.count == 0) return;  // nothing to match or claim
  std::vector<int32_t> gt_best_anchor(s.valid_gt.size());  // a few entries: the real boxes only
  for (size_t k = 0; k < s.valid_gt.size(); ++k)
    gt_best_anchor[k] = sweep_anchors(load_box(gt + 4 * s.valid_gt[k]), static_cast<int32_t>(k), an,
                                      s.best_iou.data(), s.best_gt.data());
  // Each ground truth claims its best anchor whatever the IoU; a later one wins a contested anchor.
  for (size_t k = 0; k < s.valid_gt.size(); ++k) {
    s.best_gt[gt_best_anchor[k]] = static_cast<int32_t>(k);
    s.best_iou[gt_best_anchor[k]] = 2.0f;
  }
}

// Images dealt to threads by work instead of in contiguous halves: an image costs (valid boxes + 1)
// anchor sweeps (the +1: writing its outputs), and COCO mixes images of 50 boxes with images of 2,
// so a contiguous split can leave one thread with most of the work. Largest image first, each to
// the least-loaded thread (the classic LPT rule): within one image's cost of the best split.
std::vector<std::vector<int64_t>> deal_images_by_work(const bool* valid, int64_t B, int64_t G, int64_t threads) {
  std::vector<std::pair<int64_t, int64_t>> cost_of_image(B);  // (cost, image)
  for (int64_t b = 0; b < B; ++b) cost_of_image[b] = {std::count(valid + b * G, valid + (b + 1) * G, true) + 1, b};
  std::stable_sort(cost_of_image.begin(), cost_of_image.end(), [](auto& x, auto& y) { return x.first > y.first; });
  std::vector<std::vector<int64_t>> images_of(threads);
  std::vector<int64_t> load(threads, 0);
  for (const auto& [cost, b] : cost_of_image) {
    const int64_t t = std::min_element(load.begin(), load.end()) - load.begin();
    images_of[t].push_back(b);
    load[t] += cost;
  }
  return images_of;
}

// Runs per_image(b, scratch) for every image, the images dealt to threads by work.
template <typename F>
void for_each_image_balanced(const bool* valid, int64_t B, int64_t G, F per_image) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  const auto images_of = deal_images_by_work(valid, B, G, threads);
  at::parallel_for(0, static_cast<int64_t>(images_of.size()), 1, [&](int64_t begin, int64_t end) {
    MatchScratch s;
    for (int64_t t = begin; t < end; ++t)
      for (const int64_t b : images_of[t]) per_image(b, s);
  });
}

void check_anchor_count_fits_int32(int64_t A) {
  TORCH_CHECK(A <= INT32_MAX, "ssdfast: match supports at most 2^31 - 1 anchors, got ", A);
}

at::Tensor match_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_mask, const at::Tensor& anchors,
                     double iou_threshold) {
  check_match_inputs(gt_boxes, gt_mask, anchors, iou_threshold);
  const at::Tensor gt = as_float(gt_boxes), an = as_float(anchors), mask = gt_mask.contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), A = an.size(0);
  check_anchor_count_fits_int32(A);
  const AnchorArrays arrays(an.data_ptr<float>(), A);
  const float threshold = static_cast<float>(iou_threshold);
  at::Tensor matched = at::empty({B, A}, gt.options().dtype(at::kLong));
  for_each_image_balanced(mask.data_ptr<bool>(), B, G, [&](int64_t b, MatchScratch& s) {
    match_image(gt.data_ptr<float>() + b * G * 4, mask.data_ptr<bool>() + b * G, G, arrays, s);
    int64_t* out = matched.data_ptr<int64_t>() + b * A;
    for (int64_t a = 0; a < A; ++a) out[a] = s.best_iou[a] > threshold ? s.valid_gt[s.best_gt[a]] : -1;
  });
  return matched;
}

// Writes one image's targets: zeros everywhere (one memset), then the offsets and label of each
// matched anchor only. Encoding costs two logf per positive anchor, a few hundred per image.
void write_targets(const MatchScratch& s, const float* gt, const int64_t* gt_labels, const float* anchors,
                   int64_t num_anchors, float threshold, float cv, float sv, float* offsets, int64_t* labels) {
  std::memset(offsets, 0, sizeof(float) * 4 * num_anchors);
  std::memset(labels, 0, sizeof(int64_t) * num_anchors);
  for (int64_t a = 0; a < num_anchors; ++a) {
    if (!(s.best_iou[a] > threshold)) continue;
    const int32_t g = s.valid_gt[s.best_gt[a]];
    encode_box(load_box(gt + 4 * g), load_box(anchors + 4 * a), cv, sv, offsets + 4 * a);
    labels[a] = gt_labels[g];
  }
}

std::tuple<at::Tensor, at::Tensor> match_encode_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                                                    const at::Tensor& anchors, double iou_threshold, double cv,
                                                    double sv) {
  check_match_encode_inputs(gt_boxes, gt_labels, anchors, iou_threshold, cv, sv);
  const at::Tensor gt = as_float(gt_boxes), an = as_float(anchors);
  const at::Tensor labels = gt_labels.to(at::kLong).contiguous();
  const at::Tensor valid = labels.gt(0).contiguous();
  const int64_t B = gt.size(0), G = gt.size(1), A = an.size(0);
  check_anchor_count_fits_int32(A);
  const AnchorArrays arrays(an.data_ptr<float>(), A);
  at::Tensor offsets = at::empty({B, A, 4}, gt.options());
  at::Tensor out_labels = at::empty({B, A}, labels.options());
  const float threshold = static_cast<float>(iou_threshold), fcv = static_cast<float>(cv),
              fsv = static_cast<float>(sv);
  for_each_image_balanced(valid.data_ptr<bool>(), B, G, [&](int64_t b, MatchScratch& s) {
    const float* g = gt.data_ptr<float>() + b * G * 4;
    match_image(g, valid.data_ptr<bool>() + b * G, G, arrays, s);
    write_targets(s, g, labels.data_ptr<int64_t>() + b * G, an.data_ptr<float>(), A, threshold, fcv, fsv,
                  offsets.data_ptr<float>() + b * A * 4, out_labels.data_ptr<int64_t>() + b * A);
  });
  return {offsets, out_labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) {
  m.impl("match", &match_cpu);
  m.impl("match_encode", &match_encode_cpu);
}

}  // namespace ssdfast
