#!/usr/bin/env bash
# Train the packaged `light` weights on one GPU inside one device lease, then run them on the real
# scans (patient26 with its truth; the two clinical scans for QC). From the repo root:
#   device run: bash scripts/gpu/train_light.sh     carry: [".whl", "shared"]
# where .whl holds the nibabel wheel and shared/data is a git-ignored copy of ../shared/data.
# Knobs (environment): MINUTES, VOLUMES, SLICES, BATCH, DATA, DEVICE, TRAIN_ARGS (extra flags),
# PP_VOLUMES (synthetic validation volumes for the post-processing choice; 0 keeps the threshold that
# training chose and the default minimum lesion size).
set -euo pipefail
OUT=${OUT:-out/gpu-train}
DATA=${DATA:-shared/data}
MINUTES=${MINUTES:-6}
VOLUMES=${VOLUMES:-160}
SLICES=${SLICES:-60}
BATCH=${BATCH:-32}
DEVICE=${DEVICE:-auto}
PP_VOLUMES=${PP_VOLUMES:-8}
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
# threshold x minimum lesion size on synthetic validation volumes (written into best.json); ~1 min on a GPU
if [ "$PP_VOLUMES" -gt 0 ]; then
  python3 scripts/choose_postprocess.py --checkpoint "$OUT/best.safetensors" --volumes "$PP_VOLUMES" \
    --data "$DATA" --device "$DEVICE" --cache "$run/pp" --json "$OUT/postprocess_sweep.json" --write \
    2>&1 | tail -4 | tee "$OUT/postprocess.log"
fi
mhunet infer "$DATA/open_ms/patient26/FLAIR.nii.gz" "$DATA/clinical_flair" --device "$DEVICE" \
  --checkpoint "$OUT/best.safetensors" -o "$run/pred" --qc --json > "$run/infer.json"
mhunet evaluate "$run/pred/FLAIR_mask.nii.gz" "$DATA/open_ms/patient26/lesions.nii.gz" --json \
  | tee "$OUT/patient26_metrics.json"
cp "$run"/pred/*_qc.png "$OUT/"
