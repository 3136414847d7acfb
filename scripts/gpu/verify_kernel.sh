#!/usr/bin/env bash
# Run on the GPU machine from the repository root (the lead runs it with the device tool):
#   carry: third_party/TensorRT/include  (+ .whl holding mamba_ssm-*.tar.gz for the mamba-ssm comparison,
#   built beside this script by the caller into $MAMBA_SITE, touching $MAMBA_DONE: never by project code)
#   command: bash scripts/gpu/verify_kernel.sh        (QUICK=1: plugin harness + correctness only, no
#            speed table, no tuning sweep, no mamba-ssm build; ~1.5 min of which ~30 s CMake build)
# Builds the plugin library + harness against the TensorRT headers (no libnvinfer; without them the kernel
# library alone), runs the harness, then scripts/gpu/verify_kernel.py (correctness + speed) on the built
# libmhunet_scan.so. Everything lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/verify_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1 || true
t0=$(date +%s)
TRT_INC=$PWD/third_party/TensorRT/include
if [ -f "$TRT_INC/NvInferRuntime.h" ]; then
  { cmake -S plugins -B build/plugins -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DTENSORRT_INCLUDE_DIR="$TRT_INC" \
      && cmake --build build/plugins -j 16; } > "$OUT/build.log" 2>&1
  brc=$?
  echo "plugin build rc=$brc in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/build.log"
  if [ $brc -eq 0 ]; then
    ./build/plugins/mhunet_plugin_harness > "$OUT/harness.log" 2>&1; hrc=$?
    grep -c '^PASS enqueue' "$OUT/harness.log" | sed 's/^/harness enqueue checks passed: /'
    grep -E '^(FAIL|SKIP)' "$OUT/harness.log"
    tail -1 "$OUT/harness.log"
    [ $hrc -eq 0 ] || status=1
  else
    tail -20 "$OUT/build.log"; status=1
  fi
else
  echo "SKIP plugin build: $TRT_INC missing (carry third_party/TensorRT/include); kernel library only"
  { cmake -S plugins -B build/plugins -DMHUNET_KERNEL_ONLY=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      && cmake --build build/plugins -j 16; } > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; status=1; }
fi
# verify_kernel.py runs the kernel through the library the torch backend loads (ops/selective_scan/cuda.py, ctypes)
export MHUNET_SCAN_LIB=$PWD/build/plugins/libmhunet_scan.so
quick=()
[ "${QUICK:-0}" = "1" ] && quick=(--quick)
python3 scripts/gpu/verify_kernel.py --out "$OUT" "${quick[@]}" > "$OUT/verify.log" 2>&1; vrc=$?
[ $vrc -eq 0 ] || status=1
grep -E 'FAIL|Error|error' "$OUT/verify.log" | head -20
# the short table last
sed -n '/^# selective scan/,$p' "$OUT/verify.log"
tail -3 "$OUT/verify.log"
echo "verify_kernel.sh: status=$status (plugin+harness and verify_kernel.py) total $(( $(date +%s) - t0 ))s"
exit $status
