"""onnxruntime CPU vs PyTorch CPU, seconds per volume, side by side; plus the four graphs' sizes.

    python scripts/bench_cpu.py [--checkpoint CKPT] [--volume FLAIR.nii.gz] [--slices N]

Uses the packaged light weights when present, else a random-init light model (said in the output:
timings do not depend on the weights). Exports into a temporary folder unless --export-dir is given.
With --slices, seconds per volume are extrapolated from the per-slice time over the volume's slices.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mhunet_deploy.bench import bench, graph_table, markdown_table
from mhunet_deploy.checkpoint import default_checkpoint, save_checkpoint
from mhunet_deploy.exporting.exporter import export_graphs

#: Run from the repository, with ../shared beside it.
PATIENT26 = Path(__file__).resolve().parents[2] / "shared/data/open_ms/patient26/FLAIR.nii.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--volume", type=Path, default=PATIENT26)
    ap.add_argument("--slices", type=int, help="time this many central slices only")
    ap.add_argument("--export-dir", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mhunet-bench-"))
    ckpt = args.checkpoint or default_checkpoint()
    if not ckpt.is_file():
        from mhunet_deploy.model.mamba_hunet import build_model

        ckpt = save_checkpoint(build_model("light"), work / "light-random.safetensors", {})
        print(f"packaged weights not found: random-init light model ({ckpt})\n")
    export_dir = args.export_dir or work / "export"
    if not args.export_dir:
        export_graphs(ckpt, export_dir)
    pairs = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "fp16")]
    timings = bench(ckpt, args.volume, pairs, args.slices, export_dir=export_dir)
    print(f"volume {args.volume}: {timings[0].volume_slices} slices with signal; batch 8; CPU\n")
    print(markdown_table(timings))
    print()
    print(graph_table(export_dir))


if __name__ == "__main__":
    main()
