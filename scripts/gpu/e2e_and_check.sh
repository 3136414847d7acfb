#!/usr/bin/env bash
# Kernel check + one volume end to end, in one device lease (~3-4 min on the H200). From the repo root:
#   device run: bash scripts/gpu/e2e_and_check.sh
#   carry: [".whl", "shared", "third_party/TensorRT/include"]
#     .whl holds the nibabel wheel; shared/data is a git-ignored copy of ../shared/data (patient26);
#     third_party/TensorRT/include (headers only) lets the plugin + harness build (skipped without it).
# 1. QUICK=1 scripts/gpu/verify_kernel.sh: plugin build + harness, kernel correctness (no speed/tuning);
#    CMake builds build/plugins/libmhunet_scan.so, the kernel library the torch backend loads (~30 s).
# 2. scripts/gpu/e2e_torch.py at batch 8 and 32: patient26 FLAIR through TorchBackend fp32 reference scan vs
#    fp16 (and fp32) with our kernel (that library, through MHUNET_SCAN_LIB).
# 3. scripts/gpu/fp16_parity.py: logits of fp32/fp16 x chunked/cuda scan on 64 slices.
# Everything lands in $OUT; the key tables are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/e2e_check_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
t0=$(date +%s)
if ! python3 -c "import nibabel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nibabel-*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
# the kernel library step 1 builds, for the torch backend of steps 2 and 3
export MHUNET_SCAN_LIB=$PWD/build/plugins/libmhunet_scan.so
status=0
echo "=== 1. QUICK verify_kernel.sh ($(( $(date +%s) - t0 ))s)"
QUICK=1 OUT="$OUT" VERIFY_BUDGET_S=200 bash scripts/gpu/verify_kernel.sh || status=1
echo "=== 2. e2e_torch.py ($(( $(date +%s) - t0 ))s)"
INPUT=${INPUT:-shared/data/open_ms/patient26/FLAIR.nii.gz}
for bs in 8 32; do
  python3 scripts/gpu/e2e_torch.py "$INPUT" --out "$OUT/batch$bs" --batch-size $bs --repeats "${REPEATS:-3}" \
    > "$OUT/e2e_batch$bs.log" 2>&1 || status=1
  grep -E 'WARNING|Error|error|Traceback' "$OUT/e2e_batch$bs.log" | head -20
done
echo "=== 3. fp16_parity.py ($(( $(date +%s) - t0 ))s)"
python3 scripts/gpu/fp16_parity.py "$INPUT" > "$OUT/fp16_parity.log" 2>&1 || status=1
echo "=== done in $(( $(date +%s) - t0 ))s, status=$status"
# the key tables last
cat "$OUT/fp16_parity.log"
for bs in 8 32; do
  sed -n '/^# one volume/,$p' "$OUT/e2e_batch$bs.log"
  [ -s "$OUT/batch$bs/e2e_torch.md" ] || tail -30 "$OUT/e2e_batch$bs.log"
done
exit $status
