// MX_HD marks small functions shared by host code (and the host-side C++ tests) and device code.
#pragma once

#if defined(__CUDACC__)
#define MX_HD __host__ __device__ __forceinline__
#else
#define MX_HD inline
#endif
