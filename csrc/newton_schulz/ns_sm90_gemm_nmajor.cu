// The sm_90a grouped GEMM with N-major B (Update P·X); one CUTLASS kernel per file so
// that ninja compiles them in parallel.
#include "newton_schulz/ns_sm90_launch.h"

#ifdef MUONEXT_SM90_GEMM
#define MUONEXT_SM90_B_KMAJOR 0
#include "newton_schulz/ns_sm90_gemm.cuh"
#endif
