#!/usr/bin/env bash
# Issue #13 goal 4: where the selective-scan kernel's time goes, in one GPU call (~4-5 minutes on the H200).
#   device run: OUT=$OUT bash scripts/gpu/profile_kernels.sh      (no carry needed; MAMBA_SITE /
#   MAMBA_DONE: mamba-ssm built beside the repository by the caller, as for verify_kernel.py, profiles it too)
# 1. builds the kernel library (CMake, kernel only);
# 2. Nsight Compute (--set full, clocks left alone) on scripts/gpu/scan_once.py at light stage 1 (D = 256,
#    L = 4096) and stage 3 (D = 1024, L = 256), fp16, B = 8 (the shapes furthest behind mamba-ssm), for
#    our default configuration and for mamba-ssm's kernel on the same inputs: the details page
#    (throughput, pipe utilisation, warp stall reasons, occupancy), the raw metrics and the
#    per-instruction SASS source page with its stall samples;
# Everything under $OUT, packed into $OUT/profile.tgz (the device returns at most 8 files).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/profile_out}
mkdir -p "$OUT/p"
cd "$(dirname "$0")/../.."
pack() { tar -czf "$OUT/profile.tgz" -C "$OUT" p; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/p/gpu.txt" 2>&1
ncu --version >> "$OUT/p/gpu.txt" 2>&1
{ cmake -S plugins -B build/plugins -DMHUNET_KERNEL_ONLY=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    && cmake --build build/plugins -j 16; } > "$OUT/p/build.log" 2>&1 || { tail -20 "$OUT/p/build.log"; exit 1; }
export MHUNET_SCAN_LIB=$PWD/build/plugins/libmhunet_scan.so
pack
# name  batch  dim  len  extra scan_once.py arguments (--config ..., --mamba)
profile() {
  local name=$1 batch=$2 dim=$3 len=$4; shift 4
  ncu --set full --clock-control none --import-source no -k regex:selective_scan --launch-skip 2 \
      --launch-count 1 -f -o "$OUT/p/$name" \
      python3 scripts/gpu/scan_once.py --batch "$batch" --dim "$dim" --len "$len" --dtype float16 \
      --launches 3 "$@" > "$OUT/p/$name.ncu.log" 2>&1
  ncu --import "$OUT/p/$name.ncu-rep" --page details --print-units base > "$OUT/p/$name.details.txt" 2>&1
  ncu --import "$OUT/p/$name.ncu-rep" --page raw --csv > "$OUT/p/$name.raw.csv" 2>&1
  ncu --import "$OUT/p/$name.ncu-rep" --page source --print-source sass --csv > "$OUT/p/$name.sass.csv" 2>&1
  rm -f "$OUT/p/$name.ncu-rep"
  grep -E 'Duration|Issued Warp Per Scheduler|Achieved Active Warps|No Eligible' "$OUT/p/$name.details.txt" | head -12
  pack
}
profile ours_l4096 8 256 4096
profile ours_l256 8 1024 256
profile mamba_l4096 8 256 4096 --mamba
profile mamba_l256 8 1024 256 --mamba
echo "profile_kernels.sh done"
