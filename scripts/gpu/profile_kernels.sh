#!/usr/bin/env bash
# Issue #13 goal 4: where the selective-scan kernel's time goes, in one GPU call (~4 minutes on the H200).
#   device run: OUT=$OUT bash scripts/gpu/profile_kernels.sh      (no carry needed)
# 1. builds the kernel library (CMake, kernel only), runs tests/test_cuda_scan.py on the GPU;
# 2. Nsight Compute (--set full, clocks left alone) on scripts/gpu/scan_once.py at the worst shape
#    (light stage 1, fp16, B = 8) and at full occupancy (B = 32), for the chunked default and the fastest
#    sequential configuration (phase 1, combine, phase 2 of one call): the details page (throughput,
#    pipe utilisation, warp stall reasons, occupancy), the raw metrics and the per-instruction SASS
#    source page with its stall samples;
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
PYTHONPATH=$PWD python3 -m pytest -q -p no:cacheprovider tests/test_cuda_scan.py > "$OUT/p/pytest_cuda_scan.log" 2>&1
tail -3 "$OUT/p/pytest_cuda_scan.log"
pack
# name  batch  config (items,cpw,spi,wpc,bcb,seg; empty = the default)  launches  skip  count
profile() {
  local name=$1 batch=$2 config=$3 skip=$4 count=$5
  ncu --set full --clock-control none --import-source no -k regex:selective_scan --launch-skip "$skip" \
      --launch-count "$count" -f -o "$OUT/p/$name" \
      python3 scripts/gpu/scan_once.py --batch "$batch" --dim 256 --len 4096 --dtype float16 \
      ${config:+--config $config} --launches 3 > "$OUT/p/$name.ncu.log" 2>&1
  ncu --import "$OUT/p/$name.ncu-rep" --page details --print-units base > "$OUT/p/$name.details.txt" 2>&1
  ncu --import "$OUT/p/$name.ncu-rep" --page raw --csv > "$OUT/p/$name.raw.csv" 2>&1
  ncu --import "$OUT/p/$name.ncu-rep" --page source --print-source sass --csv > "$OUT/p/$name.sass.csv" 2>&1
  rm -f "$OUT/p/$name.ncu-rep"
  grep -E 'Duration|Issued Warp Per Scheduler|Achieved Active Warps|No Eligible' "$OUT/p/$name.details.txt" | head -12
  pack
}
profile chunked_b8 8 "" 2 1
profile chunked_b32 32 "" 2 1
profile seq_b8 8 "8,1,1,1,4,128" 6 3
profile seq_b32 32 "8,1,1,1,4,128" 6 3
echo "profile_kernels.sh done"
