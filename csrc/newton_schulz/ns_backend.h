// Which CUDA Newton–Schulz kernels run bf16 work: a process-wide setting, initialised from the
// environment variable MUONEXT_NS_BACKEND and changeable from Python (muonext.ops.ns_backend).
//   auto  the validated default: the sm_80 tensor-core kernels on every GPU (the sm_90a path becomes the
//         default once it has been run against the reference on an H100/H200: see bench/RESULTS.md);
//   sm80  the mma.sync kernels (any GPU of compute capability ≥ 8.0);
//   sm90  the CUTLASS wgmma/TMA grouped kernels (compute capability 9.0 and a build with sm_90a).
// fp32 always runs the exact fp32 kernels and fp64 cuBLAS, whatever the setting.
#pragma once

#include <string>

namespace muonext {

enum class NsBackend { kAuto, kSm80, kSm90 };

NsBackend ns_backend();
void set_ns_backend(const std::string& name);  // raises ValueError naming the accepted values
std::string ns_backend_name();

}  // namespace muonext
