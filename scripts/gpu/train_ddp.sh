#!/usr/bin/env bash
# DDP scaling of `mhunet train`: steps per second at N = 1 and N = 2 GPUs (more with GPUS="1 2 4"), one
# process per GPU (`mhunet train --gpus N`, NCCL), same recipe as scripts/gpu/train_real.sh (real pack +
# synthetic heads, per-GPU batch BATCH, so N = 2 trains on twice the samples per step). Writes
# $OUT/ddp_scaling.md (the table for BENCHMARKS.md) and $OUT/ddp_scaling.json.
#
# Needs a machine with max(GPUS) GPUs (nvidia-h200-x2 for the default), prepared as for train_real.sh.
# Run (device tool): bash scripts/gpu/train_ddp.sh    carry: [".whl", ".devdata"]
# Knobs (environment): GPUS, MODELS ("light paper"), STEPS (per run; the synchronised data/compute timing
# covers steps 20-70, train.TIMED_STEPS), BATCH (per GPU), SYNTH, MAMBA, TRAIN_ARGS (flags for every run).
set -euo pipefail
OUT=${OUT:-out/gpu-ddp}
GPUS=${GPUS:-"1 2"}
MODELS=${MODELS:-"light paper"}
STEPS=${STEPS:-120}
BATCH=${BATCH:-32}
SYNTH=${SYNTH:-16}
DEVICE=${DEVICE:-cuda}
MAMBA=${MAMBA:-1}
RUNS=${RUNS:-/tmp/runs-ddp}
# NVLink multicast stays off (the machine's rule: using it can put the host's shared GPUs out of service);
# every rank that torchrun starts inherits these.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# shellcheck source=scripts/gpu/train_prep.sh
source "$(dirname "$0")/train_prep.sh"
[ "$DEVICE" = cuda ] && nvidia-smi topo -m > "$RUNS/topo.txt" 2>&1 || true
lr_of() { if [ "$1" = paper ]; then echo 1e-3; else echo 2e-3; fi; }
for m in $MODELS; do
  for n in $GPUS; do
    # One epoch, no checkpoint until its end: the timing is of the steps. The LR follows the default
    # --lr-scaling (sqrt N): the figure is of the recipe as a user would run it.
    # shellcheck disable=SC2086  # TRAIN_ARGS split on purpose
    mhunet train --gpus "$n" --model "$m" "${data[@]}" --out "$RUNS/$m-$n" --epochs 1 \
      --steps-per-epoch "$STEPS" --batch-size "$BATCH" --lr "$(lr_of "$m")" --device "$DEVICE" --seed 0 \
      ${TRAIN_ARGS:-} --quiet > "$RUNS/$m-$n.log" 2>&1 || { echo "$m on $n GPUs failed:"; tail -20 "$RUNS/$m-$n.log"; }
  done
done
python3 - "$RUNS" "$OUT" <<'PY'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for p in sorted(runs.glob("*/final.json")):
    m = json.loads(p.read_text())
    d, t = m["distributed"], m["step_timing"]
    # The synchronised mean of steps 20-70 (warm-up excluded); the whole run's mean when it was shorter.
    step_s = t["data_s"] + t["step_s"] if t else m["train_seconds"] / m["steps"]
    rows.append({
        "model": m["train"]["model"], "gpus": d["world_size"], "backend": d["backend"],
        "global_batch": d["global_batch"], "peak_lr": d["peak_lr"], "steps": m["steps"],
        "step_s": step_s, "data_s": t["data_s"] if t else None, "steps_per_s": 1 / step_s,
        "samples_per_s": d["global_batch"] / step_s, "run_s": m["train_seconds"],
        "loss": m["history"][-1]["train_loss"], "weight_spread": d["weight_spread"],
    })
for r in rows:  # scaling efficiency: samples/s over N x the 1-GPU samples/s of the same model
    one = [o for o in rows if o["model"] == r["model"] and o["gpus"] == 1]
    r["efficiency"] = r["samples_per_s"] / (r["gpus"] * one[0]["samples_per_s"]) if one else None
(out / "ddp_scaling.json").write_text(json.dumps(rows, indent=2) + "\n")
head = "| model | GPUs | global batch | peak LR | ms/step (data) | steps/s | samples/s | efficiency | loss | weight spread |"
lines = [head, "|" + " --- |" * 10]
for r in rows:
    eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-"
    data = f" ({1e3 * r['data_s']:.1f})" if r["data_s"] is not None else ""
    lines.append(
        f"| {r['model']} | {r['gpus']} | {r['global_batch']} | {r['peak_lr']:.2e} | {1e3 * r['step_s']:.1f}{data} "
        f"| {r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | {eff} | {r['loss']:.4f} | {r['weight_spread']:.1e} |"
    )
machine = (runs / "machine.txt").read_text().strip() if (runs / "machine.txt").exists() else "?"
text = "\n".join(lines) + f"\n\nmachine: {machine}\n"
(out / "ddp_scaling.md").write_text(text)
print(text)
PY
tar cf "$OUT/logs.tar" -C "$RUNS" $(cd "$RUNS" && ls *.log *.txt 2>/dev/null) $(cd "$RUNS" && ls */final.json 2>/dev/null)
echo "total $(( $(date +%s) - t0 )) s"
