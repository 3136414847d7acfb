#!/usr/bin/env bash
# Two kernel builds side by side in one GPU call (~3-6 minutes on the H200), from the repository root:
#   device run: OLD=.devdata/old OUT=$OUT bash scripts/gpu/ab_kernels.sh
#   carry: .devdata/old = `git archive <base commit> mhunet_deploy plugins scripts/gpu` unpacked, plus this
#          tree's scripts/gpu/{time_defaults,verify_kernel}.py copied into it (the base may predate the
#          timer and the helpers it imports; the old library is still loaded through the old package)
# 1. builds both kernel libraries (CMake, kernel only; 0 spills is checked by tests/test_plugin_build.py);
# 2. this tree's library: verify_kernel.py --quick (fp64 correctness of every configuration) and
#    tests/test_cuda_scan.py on the GPU;
# 3. time_defaults.py on both, old then new (each in its own process, its own sources), eagerly (one call
#    between two events, the wrapper's host work included) and then replayed from CUDA graphs (--graph: the
#    kernels alone); EXTRA="c1 c2 ..." (comma-separated configurations of this tree) are timed beside the
#    new defaults; MAMBA_WAIT=<s> times mamba-ssm in the new rounds (MAMBA_SITE / MAMBA_DONE as for
#    verify_kernel.py: a build the caller makes beside the repository, never this script).
# Everything under $OUT, packed into $OUT/ab.tgz.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/ab_out}
OLD=${OLD:?set OLD to the base tree}
mkdir -p "$OUT/ab"
cd "$(dirname "$0")/../.."
pack() { tar -czf "$OUT/ab.tgz" -C "$OUT" ab; }
build() { { cmake -S "$1/plugins" -B "$2" -DMHUNET_KERNEL_ONLY=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
            && cmake --build "$2" -j 8; } > "$OUT/ab/build_$3.log" 2>&1; }
build "$OLD" "$PWD/build/ab_old" old & build . "$PWD/build/ab_new" new; wait
NEW_LIB=$PWD/build/ab_new/libmhunet_scan.so OLD_LIB=$PWD/build/ab_old/libmhunet_scan.so
ls -la "$NEW_LIB" "$OLD_LIB" || { tail -5 "$OUT"/ab/build_*.log; pack; exit 1; }
status=0
MHUNET_SCAN_LIB=$NEW_LIB python3 scripts/gpu/verify_kernel.py --out "$OUT/ab/verify" --quick > "$OUT/ab/verify.log" 2>&1 || status=1
tail -3 "$OUT/ab/verify.log"
MHUNET_SCAN_LIB=$NEW_LIB PYTHONPATH=$PWD python3 -m pytest -q -p no:cacheprovider tests/test_cuda_scan.py \
  > "$OUT/ab/pytest_cuda_scan.log" 2>&1 || status=1
tail -1 "$OUT/ab/pytest_cuda_scan.log"
pack
extra=()
for c in ${EXTRA:-}; do extra+=(--config "$c"); done
mamba=()
[ -n "${MAMBA_WAIT:-}" ] && mamba=(--mamba "$MAMBA_WAIT")
for mode in eager graph; do
  flag=()
  [ "$mode" = graph ] && flag=(--graph)
  (cd "$OLD" && MHUNET_SCAN_LIB=$OLD_LIB python3 scripts/gpu/time_defaults.py --tag "old_$mode" --out "$OUT/ab" \
    "${flag[@]}") > "$OUT/ab/time_old_$mode.log" 2>&1 || status=1
  MHUNET_SCAN_LIB=$NEW_LIB python3 scripts/gpu/time_defaults.py --tag "new_$mode" --out "$OUT/ab" "${flag[@]}" \
    "${extra[@]}" "${mamba[@]}" > "$OUT/ab/time_new_$mode.log" 2>&1 || status=1
  pack
done
grep -h forward "$OUT"/ab/time_*.log
echo "ab_kernels.sh: status=$status"
exit $status
