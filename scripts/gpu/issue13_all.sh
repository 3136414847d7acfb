#!/usr/bin/env bash
# Issue #13 in one GPU call, from the repository root (about 8 minutes on the H200):
#   device run: OUT=$OUT DATA=.devdata/shared/data bash scripts/gpu/issue13_all.sh
#   carry: .whl (nibabel wheel), .devdata (copies of patient26 and case01), third_party/TensorRT/include
# 1. kernel: scripts/gpu/verify_kernel.sh (plugin + harness, fp64 correctness of every configuration, the
#    sweep, mamba-ssm side by side when MAMBA_SITE/MAMBA_DONE point at a build made beside this script);
# 2. runtime: scripts/gpu/bench_runtime.sh (parity of GPU pre/post-processing, warm and cold stages, the
#    floor of a torch process, a folder, mhunet bench);
# 3. parity: `mhunet verify` on patient26 (the torch CUDA FP16 path with our kernel against the FP32 reference).
# Results under $OUT/{kernel,runtime,verify}, packed into $OUT/issue13.tgz (the device returns 8 files).
set -uo pipefail
OUT=${OUT:-/tmp/issue13}
DATA=${DATA:-shared/data}
mkdir -p "$OUT/kernel" "$OUT/runtime" "$OUT/verify"
cd "$(dirname "$0")/../.."
if ! python3 -c "import nibabel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nibabel-*.whl
  export PYTHONPATH=/tmp/site
fi
status=0
pack() { tar -czf "$OUT/issue13.tgz" -C "$OUT" kernel runtime verify $(cd "$OUT" && ls ./*.log 2>/dev/null); }
OUT=$OUT/kernel VERIFY_BUDGET_S=${VERIFY_BUDGET_S:-300} bash scripts/gpu/verify_kernel.sh > "$OUT/kernel.log" 2>&1 \
  || status=1
pack  # after each step: a call cut short still returns what is done
OUT=$OUT/runtime DATA=$DATA bash scripts/gpu/bench_runtime.sh > "$OUT/runtime.log" 2>&1 || status=1
pack
# bench_runtime.sh built build/libmhunet_scan.so (kernel only): the library the torch backend loads
COLUMNS=220 MHUNET_SCAN_LIB=$PWD/build/libmhunet_scan.so PYTHONPATH=$PWD:${PYTHONPATH:-} \
  python3 -m mhunet_deploy.cli verify --volume "$DATA/open_ms/patient26/FLAIR.nii.gz" \
  > "$OUT/verify/verify.txt" 2>&1 || status=1
pack
echo "issue13_all.sh: status=$status"
exit $status
