#!/usr/bin/env bash
# Train the packaged `light` weights on one GPU inside one device lease, then run them on the real
# scans (patient26 with its truth; the two clinical scans for QC). From the repo root:
#   device run: bash scripts/gpu/train_light.sh     carry: [".whl", "shared"]
# where .whl holds the nibabel wheel and shared/data is a git-ignored copy of ../shared/data.
# Knobs (environment): MINUTES, VOLUMES, SLICES, BATCH, DATA, DEVICE, TRAIN_ARGS (extra flags).
set -euo pipefail
OUT=${OUT:-out/gpu-train}
DATA=${DATA:-shared/data}
MINUTES=${MINUTES:-6}
VOLUMES=${VOLUMES:-160}
SLICES=${SLICES:-60}
BATCH=${BATCH:-32}
DEVICE=${DEVICE:-auto}
mkdir -p "$OUT"
if ! python3 -c "import nibabel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nibabel-*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || echo "no GPU") > "$OUT/gpu.txt"
mhunet() { python3 -m mhunet_deploy.cli "$@"; }
run=$(mktemp -d)
mhunet train --out "$run/ckpt" --synth-source "$DATA" --volumes "$VOLUMES" --workers "$(nproc)" \
  --slices-per-volume "$SLICES" --batch-size "$BATCH" --steps-per-epoch 200 --epochs 1000 \
  --max-minutes "$MINUTES" --device "$DEVICE" ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
cp "$run/ckpt/best.safetensors" "$run/ckpt/best.json" "$OUT/"
mhunet infer "$DATA/open_ms/patient26/FLAIR.nii.gz" "$DATA/clinical_flair" --device "$DEVICE" \
  --checkpoint "$run/ckpt/best.safetensors" -o "$run/pred" --qc --json > "$run/infer.json"
mhunet evaluate "$run/pred/FLAIR_mask.nii.gz" "$DATA/open_ms/patient26/lesions.nii.gz" --json \
  | tee "$OUT/patient26_metrics.json"
cp "$run"/pred/*_qc.png "$OUT/"
