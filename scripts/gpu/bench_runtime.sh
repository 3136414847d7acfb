#!/usr/bin/env bash
# Issue #13 runtime figures on one GPU in one call (about 2-3 minutes on the H200). From the repo root:
#   device run: bash scripts/gpu/bench_runtime.sh      carry: [".whl", "shared"]
# .whl holds the nibabel wheel (as for train_light.sh), shared/data a git-ignored copy of ../shared/data.
# 1. CMake builds build/libmhunet_scan.so, kernel only (no TensorRT headers): the library the torch
#    backend loads from build/ (the working directory), as after a user's own CMake build.
# 2. The cold CLI: `mhunet infer VOLUME --device cuda` (defaults: fp32, batch 32) in a first process (cupy
#    compiles its kernels into an empty cache, as on a fresh machine) and a second one; then fp16; with
#    `python -X importtime` for `infer --help` and for a real run; scripts/gpu/cold_floor.py: what a new
#    process pays for torch, the CUDA context, cuDNN/cuBLAS and cupy before any of our work.
# 3. scripts/gpu/bench_runtime.py: GPU-vs-CPU parity of pre/post-processing, warm per-stage times (pre/post
#    on the GPU and, side by side, on the CPU), a folder of FOLDER volumes through the batch runner.
# 4. `mhunet infer FOLDER/` of FOLDER copies, cold process: wall time against the single-volume process.
# 5. `mhunet bench --device cuda`: every stage, first run and warm, fp32 and fp16.
# Everything lands in $OUT; summary.md is the table to read. Knobs (environment): OUT, DATA, VOLUME,
# DEVICE (cuda; cpu runs the same steps on the CPU path, without the build), PRECISION, BATCH, REPEATS,
# FOLDER, ARCH.
set -euo pipefail
OUT=${OUT:-out/gpu-runtime}
DATA=${DATA:-shared/data}
VOLUME=${VOLUME:-$DATA/open_ms/patient26/FLAIR.nii.gz}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-fp16}
BATCH=${BATCH:-32}
REPEATS=${REPEATS:-5}
FOLDER=${FOLDER:-4}
ARCH=${ARCH:-90}
mkdir -p "$OUT"
if ! python3 -c "import nibabel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nibabel-*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
export CUPY_CACHE_DIR=$work/cupy-cache  # empty: the first process compiles cupy's kernels
(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || echo "no GPU") > "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__)" >> "$OUT/gpu.txt"
python3 -c "import cupy; print('cupy', cupy.__version__)" >> "$OUT/gpu.txt" 2>&1 || echo "cupy: not importable" >> "$OUT/gpu.txt"
mhunet() { python3 -m mhunet_deploy.cli "$@"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
steps=$OUT/steps.tsv
: > "$steps"
status=0

echo "=== 1. kernel library (CMake, kernel only, sm_$ARCH)"
if [ "$DEVICE" = cuda ]; then
  t=$(now)
  { cmake -S plugins -B build -DMHUNET_KERNEL_ONLY=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
      && cmake --build build -j "$(nproc)"; } > "$OUT/cmake.log" 2>&1 \
    || { echo "kernel library build failed: the torch backend runs the PyTorch scan"; tail -30 "$OUT/cmake.log"; status=1; }
  printf 'cmake kernel library build\t%s\n' "$(since "$t")" >> "$steps"
  ls -l build/libmhunet_scan.so || true
fi

echo "=== 2. cold CLI"
python3 -X importtime -m mhunet_deploy.cli infer --help > /dev/null 2> "$OUT/importtime_help.txt"
cold() {  # cold NAME ARGS...: one `mhunet infer` process, timed from outside
  local name=$1 t
  shift
  t=$(now)
  mhunet infer "$VOLUME" -o "$work/$name" --device "$DEVICE" --json -v "$@" > "$OUT/$name.json" \
    2> "$OUT/$name.log" || { echo "$name failed:"; tail -5 "$OUT/$name.log"; status=1; }
  printf '%s\t%s\n' "$name" "$(since "$t")" >> "$steps"
}
cold cold_first
cold cold_second
if [ "$DEVICE" = cuda ]; then cold cold_fp16 --precision "$PRECISION" --batch-size "$BATCH"; fi
python3 -X importtime -m mhunet_deploy.cli infer "$VOLUME" -o "$work/importtime" --device "$DEVICE" -q \
  2> "$OUT/importtime_infer.txt" || status=1
grep -h -E "note|warning|PyTorch scan|CPU:" "$OUT"/cold_*.log | sort -u | head -5 || true
if [ "$DEVICE" = cuda ]; then python3 scripts/gpu/cold_floor.py > "$OUT/cold_floor.md" || status=1; cat "$OUT/cold_floor.md"; fi

echo "=== 3. parity, warm stages, folder through the batch runner"
device_args=(--device "$DEVICE" --precision "$PRECISION" --batch-size "$BATCH")
[ "$DEVICE" = cuda ] || device_args=(--device cpu --precision fp32 --batch-size 8)
python3 scripts/gpu/bench_runtime.py --data "$DATA" --volume "$VOLUME" --out "$OUT" "${device_args[@]}" \
  --repeats "$REPEATS" --folder "$FOLDER" > "$OUT/bench_runtime.log" 2>&1 || status=$?
tail -40 "$OUT/bench_runtime.log"

echo "=== 4. cold CLI on a folder of $FOLDER"
mkdir -p "$work/folder"
for i in $(seq 1 "$FOLDER"); do ln -s "$(realpath "$VOLUME")" "$work/folder/scan$i.nii.gz"; done
t=$(now)
folder_args=(--precision "$PRECISION" --batch-size "$BATCH")
[ "$DEVICE" = cuda ] || folder_args=()
mhunet infer "$work/folder" -o "$work/folder_out" --device "$DEVICE" "${folder_args[@]}" --json \
  > "$OUT/cold_folder.json" 2> "$OUT/cold_folder.log" || status=1
printf 'cold_folder\t%s\n' "$(since "$t")" >> "$steps"

echo "=== 5. mhunet bench"
mhunet bench --device "$DEVICE" --volume "$VOLUME" --repeats 3 > "$OUT/bench.md" 2> "$OUT/bench.log" || status=1
cat "$OUT/bench.md"

python3 - "$OUT" "$FOLDER" <<'EOF' | tee "$OUT/summary.md"
import json, sys
from pathlib import Path

out, n = Path(sys.argv[1]), int(sys.argv[2])
steps = dict(line.split("\t") for line in (out / "steps.tsv").read_text().splitlines())
print("| step | wall s | report total s | load | preprocess | model | postprocess | write | startup (wall - total) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, wall in steps.items():
    path = out / f"{name}.json"
    if not path.is_file():
        print(f"| {name} | {wall} | | | | | | | |")
        continue
    results = json.loads(path.read_text())["results"]
    t = [r["timings"] for r in results]
    total = sum(x["total_s"] for x in t)
    stages = " | ".join(f"{sum(x[k] for x in t):.3f}" for k in ("load_s", "preprocess_s", "model_s", "postprocess_s", "write_s"))
    print(f"| {name} ({len(t)} volume{'s' if len(t) > 1 else ''}) | {wall} | {total:.3f} | {stages} | {float(wall) - total:.2f} |")
single = steps.get("cold_fp16", steps.get("cold_second"))  # the folder runs with the fp16 settings on a GPU
if "cold_folder" in steps and single:
    extra = (float(steps["cold_folder"]) - float(single)) / max(n - 1, 1)
    print(f"\nfolder of {n} in one process: {extra:.3f} s per volume beyond the first (wall difference / {n - 1})")
print()
floor = out / "cold_floor.md"
print("cold floor of a torch process (scripts/gpu/cold_floor.py):\n\n" + floor.read_text() if floor.is_file() else "")
print((out / "runtime.md").read_text() if (out / "runtime.md").is_file() else "runtime.md missing: see bench_runtime.log")
EOF
rm -rf "$work"
exit $status
