# Sourced by the training scripts of scripts/gpu/: the GPU machine made ready to train, in one go.
# Expects OUT, RUNS, SYNTH (synthetic heads to generate here), MAMBA (1: build mamba-ssm's fused kernels
# from the carried sdist); carries .whl (nibabel wheel, mamba-ssm sdist) and .devdata (packs, templates).
# Leaves: PYTHONPATH with /tmp/site, a `mhunet` function, t0 (start time), /tmp/synth.npz and data=(the
# --data/--synth-source flags of every training run).
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site:${PYTHONPATH:-}
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; date -u) > "$RUNS/machine.txt" 2>&1 || true
python3 -c "import nibabel" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nibabel-*.whl
mhunet() { python3 -m mhunet_deploy.cli "$@"; }
t0=$(date +%s)
# mamba-ssm's fused forward/backward kernels (training runs ~10x faster than on the PyTorch scan),
# built from the carried sdist while the synthetic heads are generated.
[ "$MAMBA" = 1 ] && (
  mkdir -p /tmp/mamba-src && tar xzf .whl/mamba_ssm-*.tar.gz -C /tmp/mamba-src
  cd /tmp/mamba-src/mamba_ssm-*/ && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 \
    python3 -m pip install -q --no-build-isolation --no-deps --no-index --target /tmp/site . > "$RUNS/mamba_build.log" 2>&1
) &
build=$!
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mhunet pack /tmp/synth.npz --synthetic "$SYNTH" --synth-source .devdata/shared/data --workers 12 --quiet
t1=$(date +%s)
wait $build || { echo "mamba-ssm not built"; tail -30 "$RUNS/mamba_build.log" 2>/dev/null || true; }
python3 -c "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn" 2>/dev/null \
  && echo "mamba-ssm ok" || echo "no mamba-ssm: the PyTorch scan trains (about 10x slower)"
t2=$(date +%s)
echo "synthetic pack $((t1 - t0)) s, mamba-ssm build $((t2 - t0)) s (overlapped)" | tee "$RUNS/prep.txt"
data=(--data .devdata/real.npz --data /tmp/synth.npz --synth-source .devdata/shared/data)
