#!/usr/bin/env bash
# GPU check of the CUDA kernels on a machine with nothing installed but torch, nvcc and the wheels
# carried in .whl/ (`make device-wheels`: pytest and its dependencies, ninja, expecttest, nvidia-cutlass:
# the sm_90a Newton–Schulz kernels are CUTLASS; or set CUTLASS_HOME to a checkout). Builds for sm_90a only
# (H100/H200), runs the CUDA tests (both bf16 NS backends, sm80 and sm90), compute-sanitizer on small
# cases of each backend and the kernel benchmark, within 8 minutes; prints a table, logs go to $OUT.
#   bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/device-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
T0=$(date +%s)
declare -a ROWS=()

step() {  # step NAME TIMEOUT_S LOG CMD...: runs CMD with a timeout, records status and seconds
  local name=$1 limit=$2 log=$3
  shift 3
  local t=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] && status="TIMEOUT(${limit}s)" || { [ $rc -ne 0 ] && status="FAIL(rc=$rc)"; }
  ROWS+=("$(printf '%-28s %-14s %6ss  %s' "$name" "$status" "$(( $(date +%s) - t ))" "$OUT/$log")")
  echo "== $name: $status" >&2
  return $rc
}

if compgen -G ".whl/*.whl" > /dev/null; then
  step "pip install .whl/*.whl" 120 pip.log "$PY" -m pip install --no-index --no-deps -q .whl/*.whl
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1

# the CUDA math-library headers torch's headers include, from the nvidia-* wheels when the toolkit lacks them
NV_INC=$("$PY" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "include"))' 2> /dev/null)
[ -n "$NV_INC" ] && [ -d "$NV_INC" ] && export CPATH="$NV_INC${CPATH:+:$CPATH}"
export MUONEXT_CUDA=1 MUONEXT_CUDA_ARCHS=90a MUONEXT_PTXAS_VERBOSE=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if step "build (sm_90a)" 300 build.log "$PY" setup.py build_ext --inplace; then
  step "ptxas spills + registration" 60 check.log "$PY" tests/cuda_build_check.py "$OUT/build.log"
  if "$PY" -c "import pytest" 2> /dev/null; then
    step "pytest -m cuda" 200 pytest.log "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
  else
    ROWS+=("$(printf '%-28s %-14s' "pytest -m cuda" "SKIPPED (no pytest: carry its wheels in .whl/)")")
  fi
  if command -v compute-sanitizer > /dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    step "compute-sanitizer memcheck" 120 sanitizer.log "$SAN" --tool memcheck --error-exitcode 1 "$PY" -c "
import torch, muonext.ops as ops
from muonext.optim.coefficients import ns_schedule
c = ops.flatten_coefficients(ns_schedule('keller', 2))
backends = ['sm80', 'sm90'] if torch.cuda.get_device_capability() == (9, 0) else ['sm80']
for backend in backends:
    with ops.ns_backend(backend):
        for shape in [(2, 97, 131), (131, 97), (1, 40), (3, 130, 130), (2, 264, 136)]:
            for dt in (torch.bfloat16, torch.float32):
                ops.newton_schulz(torch.randn(shape, device='cuda').to(dt), c)
        ops.newton_schulz_grouped([torch.randn(s, device='cuda').bfloat16() for s in [(3, 40, 64), (200, 136)]], c)
x = [torch.randn(1001, device='cuda')[1:], torch.randn(37, device='cuda').bfloat16()]
flat = ops.pack(x, torch.bfloat16); ops.unpack_(flat, x)
ops.muon_momentum_(x, x, [t.clone() for t in x], 0.9, True); ops.muon_apply_(x, x, [0.1] * 2, [0.1] * 2, [1.0] * 2)
torch.cuda.synchronize(); print('sanitizer run done')"
  else
    ROWS+=("$(printf '%-28s %-14s' "compute-sanitizer" "SKIPPED (not found)")")
  fi
  step "bench/ns_kernels.py" 150 bench.txt "$PY" bench/ns_kernels.py
fi

echo
echo "device check on $(head -n 1 "$OUT/gpu.txt") — $(( $(date +%s) - T0 ))s in all"
printf '%s\n' "${ROWS[@]}" | tee "$OUT/summary.txt"
[ -f "$OUT/bench.txt" ] && { echo; cat "$OUT/bench.txt"; }
grep -E "passed|failed|error" "$OUT/pytest.log" 2> /dev/null | tail -n 3
grep -E "ERROR SUMMARY|sanitizer run done" "$OUT/sanitizer.log" 2> /dev/null | tail -n 2
! grep -qE "FAIL|TIMEOUT" "$OUT/summary.txt"
