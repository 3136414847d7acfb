#!/usr/bin/env bash
# The packaged model's recipe, in one device call: real scans + synthetic heads, subject-level
# cross-validation of both configurations and their all-data fits, all at once on one GPU (each run is
# small, so they share it), then the winner by a rule fixed in advance (scripts/gpu/cv_summary.py).
#
# Prepare here (CPU), once:
#   mhunet pack .devdata/real.npz --data manifests/real_ms.json        # 16 real scans + thick copies + masks to paste
#   mkdir -p .devdata/shared/data/open_ms && cp -r ../shared/data/mni152 .devdata/shared/data/ \
#     && cp -r ../shared/data/open_ms/lesion_masks_mni .devdata/shared/data/open_ms/   # templates for synthetic heads
#   .whl/: the nibabel wheel and the mamba-ssm sdist (see README "Training")
# Run (device tool): bash scripts/gpu/train_real.sh    carry: [".whl", ".devdata"]
# Knobs (environment): MINUTES (per run), VARIANTS ("name:model:extra flags;..." - one cross-validation
# each; ablations add e.g. "nopaste:light:--no-augment paste"), FOLDS ("0 1 2 3" and "all" = the all-data
# fit), SYNTH (synthetic heads generated here), BATCH, TRAIN_ARGS (flags for every run), PROBE_STEPS (0:
# no solo timing of data vs compute).
set -euo pipefail
OUT=${OUT:-out/gpu-train}
MINUTES=${MINUTES:-4.0}
VARIANTS=${VARIANTS:-"light:light:;paper:paper:"}
FOLDS=${FOLDS:-"0 1 2 3 all"}
SYNTH=${SYNTH:-48}
BATCH=${BATCH:-32}
PROBE_STEPS=${PROBE_STEPS:-50}
DEVICE=${DEVICE:-cuda}
MAMBA=${MAMBA:-1}
RUNS=${RUNS:-/tmp/runs}
# shellcheck source=scripts/gpu/train_prep.sh
source "$(dirname "$0")/train_prep.sh"
pids=()
lr_of() { if [ "$1" = paper ]; then echo 1e-3; else echo 2e-3; fi; }
IFS=';' read -ra variants <<< "$VARIANTS"
models=$(for v in "${variants[@]}"; do echo "${v#*:}" | cut -d: -f1; done | sort -u)
# Is the data path the limit? Each configuration alone for a few steps, data and compute timed apart.
[ "$PROBE_STEPS" -gt 0 ] && for m in $models; do
  mhunet train --model "$m" "${data[@]}" --out "$RUNS/probe-$m" --epochs 1 --steps-per-epoch "$PROBE_STEPS" \
    --batch-size "$BATCH" --lr "$(lr_of "$m")" --device "$DEVICE" ${TRAIN_ARGS:-} --quiet > "$RUNS/probe-$m.log" 2>&1 || true
done
for v in "${variants[@]}"; do
  IFS=: read -r name m extra <<< "$v"
  for f in $FOLDS; do
    hold=(); [ "$f" != all ] && hold=(--holdout-fold "$f")
    # shellcheck disable=SC2086  # extra flags split on purpose
    mhunet train --model "$m" "${data[@]}" --out "$RUNS/$name-$f" "${hold[@]}" --max-minutes "$MINUTES" \
      --epochs 1000 --steps-per-epoch 100 --batch-size "$BATCH" --lr "$(lr_of "$m")" --device "$DEVICE" \
      --seed 0 $extra ${TRAIN_ARGS:-} --quiet > "$RUNS/$name-$f.log" 2>&1 &
    pids+=($!)
  done
done
(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 30 > "$RUNS/gpu_util.csv" 2>&1 || true) &
monitor=$!
for p in "${pids[@]}"; do wait "$p" || echo "a run failed (pid $p): see its log"; done
kill "$monitor" 2>/dev/null || true
python3 - "$RUNS" <<'PY' | tee "$RUNS/probe.txt"
import json, sys
from pathlib import Path
for p in sorted(Path(sys.argv[1]).glob("probe-*/final.json")):
    m = json.loads(p.read_text())
    print(p.parent.name, "steps", m["steps"], "s/step", round(m["train_seconds"] / m["steps"], 4), "timing", m["step_timing"])
PY
rm -rf "$RUNS"/probe-*/*.safetensors
python3 scripts/gpu/cv_summary.py "$RUNS" "$OUT"
tar cf "$OUT/logs.tar" -C "$RUNS" $(cd "$RUNS" && ls *.log *.txt *.csv 2>/dev/null) $(cd "$RUNS" && ls */final.json 2>/dev/null)
echo "total $(( $(date +%s) - t0 )) s"
