// The process-wide Newton–Schulz backend setting (ns_backend.h); compiled in CPU and CUDA builds alike.
#include "newton_schulz/ns_backend.h"

#include <atomic>
#include <cstdlib>

#include "common/check.h"

namespace muonext {
namespace {

NsBackend parse(const std::string& name, const char* source) {
  if (name == "auto" || name.empty()) return NsBackend::kAuto;
  if (name == "sm80") return NsBackend::kSm80;
  if (name == "sm90") return NsBackend::kSm90;
  MX_CHECK_VALUE(false, source, " must be auto, sm80 or sm90, got '", name, "'");
  return NsBackend::kAuto;
}

std::atomic<int>& setting() {
  static std::atomic<int> value{[] {
    const char* env = std::getenv("MUONEXT_NS_BACKEND");
    return static_cast<int>(parse(env ? env : "", "MUONEXT_NS_BACKEND"));
  }()};
  return value;
}

}  // namespace

NsBackend ns_backend() { return static_cast<NsBackend>(setting().load()); }

void set_ns_backend(const std::string& name) { setting().store(static_cast<int>(parse(name, "ns_backend"))); }

std::string ns_backend_name() {
  switch (ns_backend()) {
    case NsBackend::kSm80:
      return "sm80";
    case NsBackend::kSm90:
      return "sm90";
    default:
      return "auto";
  }
}

}  // namespace muonext
