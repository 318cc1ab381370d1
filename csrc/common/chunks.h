// Splits a list of tensors (given by element counts) into work items of at most `chunk` elements,
// so one parallel loop covers many tensors of very different sizes. Torch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace muonext {

struct Chunk {
  int64_t tensor;  // index into the tensor list
  int64_t begin;   // first element (inclusive)
  int64_t end;     // last element (exclusive)
};

inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& numels, int64_t chunk) {
  std::vector<Chunk> out;
  if (chunk < 1) chunk = 1;
  for (int64_t t = 0; t < static_cast<int64_t>(numels.size()); ++t) {
    for (int64_t b = 0; b < numels[t]; b += chunk) out.push_back({t, b, std::min(numels[t], b + chunk)});
  }
  return out;
}

}  // namespace muonext
