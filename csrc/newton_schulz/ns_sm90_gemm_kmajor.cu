// The sm_90a grouped GEMM with K-major B (Gram X·Xᵀ and Poly A·A); one CUTLASS kernel per file so
// that ninja compiles them in parallel.
#include "newton_schulz/ns_sm90_launch.h"

#ifdef MUONEXT_SM90_GEMM
#define MUONEXT_SM90_B_KMAJOR 1
#include "newton_schulz/ns_sm90_gemm.cuh"
#endif
