// Class-aware greedy NMS on the CPU.
//
// Candidates are visited once in decreasing score order; each is compared only with the boxes
// already kept *of its own class*, and the scan stops as soon as max_output boxes are kept.
// That gives exactly "per-class NMS, then the best max_output by score", at a fraction of the
// cost of an all-pairs suppression matrix.
//
// Where the time goes, and what this file does about it:
//   - ordering: candidates are sorted as packed 64-bit keys (score, then index), and only as far as
//     the scan gets: the best-200 scan usually stops after a few hundred of ~10,000 candidates;
//   - comparisons: each class's kept boxes live in arrays (structure of arrays), so a candidate
//     meets 8 kept boxes per step (Floats lanes, see box_math.h) and stops at the first block
//     that suppresses it;
//   - classes: small non-negative class ids index a table directly; others go through a hash map.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "../box_math.h"
#include "../checks.h"

namespace ssdfast {
namespace {

// A sort key that orders candidates by decreasing score, then increasing index (the stable order):
// the score's bits made to compare as unsigned integers, inverted, above the 32-bit index. One
// integer comparison instead of two indirect float loads. NaN scores never get a key.
uint64_t order_key(float score, int64_t index) {
  if (score == 0.0f) score = 0.0f;  // -0 and +0 are equal scores: same key bits
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(~ascending) << 32) | static_cast<uint32_t>(index);
}
int64_t key_index(uint64_t key) { return static_cast<int64_t>(key & 0xffffffffu); }

// Candidates in visiting order, sorted lazily: next() hands out the keys in order and sorts a
// larger prefix (nth_element + sort, linear + k log k) only when the scan reaches the sorted end.
class VisitOrder {
 public:
  explicit VisitOrder(std::vector<uint64_t>& keys) : keys_(keys) {}
  bool done() const { return pos_ == keys_.size(); }
  int64_t next() {
    if (pos_ == sorted_end_) sort_more();
    return key_index(keys_[pos_++]);
  }

 private:
  void sort_more() {
    const size_t end = std::min(keys_.size(), std::max<size_t>(256, 4 * sorted_end_));
    if (end < keys_.size()) std::nth_element(keys_.begin() + sorted_end_, keys_.begin() + end, keys_.end());
    std::sort(keys_.begin() + sorted_end_, keys_.begin() + end);
    sorted_end_ = end;
  }
  std::vector<uint64_t>& keys_;
  size_t pos_ = 0, sorted_end_ = 0;
};

// The kept boxes of one class as arrays, padded with empty boxes to whole blocks of 8 (an empty box
// at (0, 0) has IoU exactly 0 with anything, so it never suppresses: thresholds are >= 0).
struct KeptBoxes {
  std::vector<float> x1, y1, x2, y2, area;
  size_t count = 0;

  void clear() { x1.clear(); y1.clear(); x2.clear(); y2.clear(); area.clear(); count = 0; }
  void add(const Box& b) {
    if (count == x1.size())
      for (std::vector<float>* v : {&x1, &y1, &x2, &y2, &area}) v->resize(count + kLanes, 0.0f);
    x1[count] = b.x1; y1[count] = b.y1; x2[count] = b.x2; y2[count] = b.y2;
    area[count] = box_area(b);
    ++count;
  }
};

// True if any kept box overlaps `box` by more than the threshold: 8 IoUs per step, stopping at the
// first block with a hit. Same operands in the same order as box_iou(kept, box): bit-identical.
SSD_CPU_VECTOR_CLONES
bool suppressed_by(const KeptBoxes& kept, const Box& box, float iou_threshold) {
  const Floats bx1 = Floats{} + box.x1, by1 = Floats{} + box.y1, bx2 = Floats{} + box.x2, by2 = Floats{} + box.y2;
  const Floats b_area = Floats{} + box_area(box), threshold = Floats{} + iou_threshold;
  for (size_t k = 0; k < kept.count; k += kLanes) {
    const Floats iou = iou_from_corners(load_floats(&kept.x1[k]), load_floats(&kept.y1[k]), load_floats(&kept.x2[k]),
                                        load_floats(&kept.y2[k]), load_floats(&kept.area[k]), bx1, by1, bx2, by2, b_area);
    const Ints hit = iou > threshold;
    int32_t any = 0;
    for (int l = 0; l < kLanes; ++l) any |= hit[l];
    if (any) return true;
  }
  return false;
}

// Kept boxes per class. Class ids in [0, kDirectClasses) index a table (COCO's 0..90 do); any other
// id goes through a hash map. Reused across the images of a thread: clear() keeps the memory.
class KeptByClass {
 public:
  static constexpr int64_t kDirectClasses = 1024;
  KeptBoxes& of(int64_t c) {
    if (c >= 0 && c < kDirectClasses) {
      if (direct_.size() <= static_cast<size_t>(c)) direct_.resize(c + 1);
      return direct_[c];
    }
    return other_[c];
  }
  void clear() {
    for (KeptBoxes& k : direct_) k.clear();
    other_.clear();
  }

 private:
  std::vector<KeptBoxes> direct_;
  std::unordered_map<int64_t, KeptBoxes> other_;
};

// Per-thread working memory.
struct NmsScratch {
  std::vector<uint64_t> keys;
  KeptByClass kept;
};

// One image: boxes [N, 4], scores [N], classes [N] -> keep[max_output] (-1 padded); returns the count.
int64_t nms_image(const float* boxes, const float* scores, const int64_t* classes, int64_t n, float iou_threshold,
                  bool filter_scores, float score_threshold, int64_t max_output, int64_t* keep, NmsScratch& s) {
  // A NaN score is never kept (and has no place in the order); filtered runs keep only scores
  // above the threshold.
  s.keys.clear();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(scores[i]) && (!filter_scores || scores[i] > score_threshold))
      s.keys.push_back(order_key(scores[i], i));
  s.kept.clear();
  std::fill(keep, keep + max_output, -1);
  int64_t count = 0;
  VisitOrder order(s.keys);
  while (count < max_output && !order.done()) {
    const int64_t i = order.next();
    const Box box = load_box(boxes + 4 * i);
    KeptBoxes& same_class = s.kept.of(classes[i]);  // a candidate meets only its own class
    if (!suppressed_by(same_class, box, iou_threshold)) {
      keep[count++] = i;
      same_class.add(box);
    }
  }
  return count;
}

void check_index_fits_32_bits(int64_t n) {
  TORCH_CHECK(n <= UINT32_MAX, "ssdfast: NMS supports at most 2^32 candidates per image, got ", n);
}

std::tuple<at::Tensor, at::Tensor> batched_nms_padded_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                          const at::Tensor& classes, double iou_threshold,
                                                          double score_threshold, int64_t max_output) {
  check_nms_inputs(boxes, scores, classes, iou_threshold, max_output);
  const at::Tensor b = as_float(boxes), s = as_float(scores), c = classes.to(at::kLong).contiguous();
  const int64_t B = b.size(0), N = b.size(1);
  at::Tensor keep = at::empty({B, max_output}, c.options());
  at::Tensor counts = at::empty({B}, c.options());
  check_index_fits_32_bits(N);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    NmsScratch scratch;
    for (int64_t i = begin; i < end; ++i)
      counts.data_ptr<int64_t>()[i] =
          nms_image(b.data_ptr<float>() + i * N * 4, s.data_ptr<float>() + i * N, c.data_ptr<int64_t>() + i * N, N,
                    static_cast<float>(iou_threshold), true, static_cast<float>(score_threshold), max_output,
                    keep.data_ptr<int64_t>() + i * max_output, scratch);
  });
  return {keep, counts};
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_single_nms_inputs(boxes, scores, iou_threshold);
  const at::Tensor b = as_float(boxes), s = as_float(scores);
  const int64_t n = b.size(0);
  check_index_fits_32_bits(n);
  const std::vector<int64_t> one_class(n, 0);
  NmsScratch scratch;
  at::Tensor keep = at::empty({n}, b.options().dtype(at::kLong));
  const int64_t count = nms_image(b.data_ptr<float>(), s.data_ptr<float>(), one_class.data(), n,
                                  static_cast<float>(iou_threshold), false, 0.0f, n, keep.data_ptr<int64_t>(), scratch);
  return keep.narrow(0, 0, count).clone();
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdfast, CPU, m) {
  m.impl("batched_nms_padded", &batched_nms_padded_cpu);
  m.impl("nms", &nms_cpu);
}

}  // namespace ssdfast
