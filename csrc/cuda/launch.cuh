// Launch helpers shared by the CUDA kernel files.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

namespace ssdfast {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items (capped: the loop covers the rest).
inline unsigned int grid_for(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)));
}

}  // namespace ssdfast
