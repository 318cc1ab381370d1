// Torch-free host side of the multi-tensor CUDA kernels: how a list of tensors is cut into launches
// (at most kMaxTensors descriptors per launch, passed by value as the kernel argument, so a launch
// needs no H2D copy and is safe under CUDA graph capture) and chunks (one thread block each), and
// where the 16-byte vector path of each tensor starts. Unit-tested on the host in tests/cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "common/hd.h"

namespace muonext {
namespace mt {

constexpr int kMaxTensors = 64;    // descriptors per launch (kernel argument stays under 4 KiB)
constexpr int kMaxOperands = 3;    // pointers per tensor (momentum: buf, grad, out)
constexpr int64_t kChunk = 16384;  // elements per thread block; a multiple of kVec
constexpr int kVec = 8;            // elements per vector step (16 B of bf16, 32 B of fp32, 64 B of fp64)

// Storage type codes shared by host and device.
enum DType : uint8_t { kF32 = 0, kF64 = 1, kBF16 = 2 };

inline int dtype_size(uint8_t d) { return d == kF64 ? 8 : (d == kBF16 ? 2 : 4); }

// One tensor (or element range) of a launch. ptr[i] points at element 0 of operand i's range.
struct TensorDesc {
  void* ptr[kMaxOperands];
  int64_t n;                  // elements in the range
  double s0, s1;              // per-tensor scalars (muon_apply_: decay, alpha)
  int32_t chunk_begin;        // first block of this tensor in the launch
  uint8_t dtype[kMaxOperands];
  int8_t peel;                // scalar elements before the first vector step, or -1: no vector path
};

struct LaunchTable {
  TensorDesc t[kMaxTensors];
  int32_t num_tensors;
  int32_t num_chunks;         // = grid size
  double g0;                  // launch-wide scalar (muon_momentum_: μ)
  int32_t flag;               // launch-wide flag (muon_momentum_: nesterov)
};
static_assert(sizeof(LaunchTable) <= 4096, "kernel argument must stay within 4 KiB");

// Smallest p in [0, kVec) such that every operand's element p is 16-byte aligned, else -1. Since a
// vector step covers kVec elements (a multiple of 16 bytes for every dtype) and chunks start at
// multiples of kVec, every later vector step of every chunk is then aligned as well.
inline int common_peel(const uintptr_t* addr, const uint8_t* dtype, int operands) {
  for (int p = 0; p < kVec; ++p) {
    bool aligned = true;
    for (int i = 0; i < operands; ++i) aligned = aligned && (addr[i] + static_cast<uintptr_t>(p) * dtype_size(dtype[i])) % 16 == 0;
    if (aligned) return p;
  }
  return -1;
}

MX_HD int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Launch plan: which tensors go into which launch, and each one's first block. Empty tensors are
// skipped; a launch is closed when it holds kMaxTensors tensors or its grid would pass max_chunks.
struct PlannedLaunch {
  std::vector<int> tensors;
  std::vector<int32_t> chunk_begin;
  int32_t num_chunks = 0;
};

inline std::vector<PlannedLaunch> plan_launches(const std::vector<int64_t>& numels, int max_tensors = kMaxTensors,
                                                int64_t max_chunks = int64_t{1} << 30) {
  std::vector<PlannedLaunch> out;
  PlannedLaunch cur;
  for (int i = 0; i < static_cast<int>(numels.size()); ++i) {
    const int64_t c = chunks_of(numels[i]);
    if (c == 0) continue;
    if (!cur.tensors.empty() && (static_cast<int>(cur.tensors.size()) == max_tensors || cur.num_chunks + c > max_chunks)) {
      out.push_back(cur);
      cur = PlannedLaunch{};
    }
    cur.tensors.push_back(i);
    cur.chunk_begin.push_back(cur.num_chunks);
    cur.num_chunks += static_cast<int32_t>(c);
  }
  if (!cur.tensors.empty()) out.push_back(cur);
  return out;
}

// The element ranges a block covers: [begin, head) scalar, [head, vend) in kVec steps, [vend, end) scalar.
struct ChunkSplit {
  int64_t begin, head, vend, end;
};

MX_HD ChunkSplit split_chunk(int64_t n, int peel, int64_t chunk_in_tensor) {
  ChunkSplit s;
  s.begin = chunk_in_tensor * kChunk;
  s.end = n < s.begin + kChunk ? n : s.begin + kChunk;
  if (peel < 0) {
    s.head = s.vend = s.end;
    return s;
  }
  s.head = s.begin + peel < s.end ? s.begin + peel : s.end;
  s.vend = s.head + (s.end - s.head) / kVec * kVec;
  return s;
}

}  // namespace mt
}  // namespace muonext
