// A minimal test harness for the torch-free kernel code: TEST(name) registers a function, CHECK*
// record failures with file:line, main() runs all and returns non-zero on any failure.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace mxtest {

struct Case {
  std::string name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

}  // namespace mxtest

#define TEST(name)                                               \
  static void name();                                            \
  static ::mxtest::Register register_##name(#name, name);        \
  static void name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::printf("  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);               \
      ++::mxtest::failures();                                                        \
    }                                                                                \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                         \
  do {                                                                                                \
    const double va = (a), vb = (b);                                                                  \
    if (!(std::fabs(va - vb) <= (tol))) {                                                             \
      std::printf("  FAILED %s:%d: %s = %.17g vs %s = %.17g (tol %g)\n", __FILE__, __LINE__, #a, va, #b, \
                  vb, static_cast<double>(tol));                                                      \
      ++::mxtest::failures();                                                                         \
    }                                                                                                 \
  } while (0)

#define MXTEST_MAIN                                                                        \
  int main() {                                                                             \
    for (const auto& c : ::mxtest::registry()) {                                           \
      const int before = ::mxtest::failures();                                             \
      c.fn();                                                                              \
      std::printf("%s %s\n", ::mxtest::failures() == before ? "ok  " : "FAIL", c.name.c_str()); \
    }                                                                                      \
    std::printf("%d failure(s)\n", ::mxtest::failures());                                  \
    return ::mxtest::failures() == 0 ? 0 : 1;                                              \
  }
