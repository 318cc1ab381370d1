// Argument checks for the op glue code: every message names the argument and ends with the
// source location, e.g. "newton_schulz: X must be 2-D or 3-D, got shape [4] [newton_schulz/ns_cpu.cpp:31]".
// Shape/value problems raise ValueError in Python, dtype problems TypeError.
#pragma once

#include <c10/util/Exception.h>

namespace muonext {

// "…/csrc/newton_schulz/ns_cpu.cpp" -> "newton_schulz/ns_cpu.cpp"
constexpr const char* source_name(const char* path) {
  const char* tail = path;
  for (const char* p = path; *p; ++p) {
    if (p[0] == 'c' && p[1] == 's' && p[2] == 'r' && p[3] == 'c' && p[4] == '/') tail = p + 5;
  }
  return tail;
}

}  // namespace muonext

#define MX_LOCATION " [", ::muonext::source_name(__FILE__), ":", __LINE__, "]"
#define MX_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__, MX_LOCATION)
#define MX_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, __VA_ARGS__, MX_LOCATION)
#define MX_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__, MX_LOCATION)
