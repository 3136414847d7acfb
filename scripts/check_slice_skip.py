"""Would skipping nearly empty slices change any output? The real scans, each fraction, counted.

    python scripts/check_slice_skip.py [--fractions 0.001 0.005 0.01 0.02] [FLAIR.nii.gz ...]

`mhunet infer` sends every slice with signal to the model (``pipeline.predict_volume`` skips only
constant ones). A slice whose foreground (voxels above the volume's background floor after
preprocessing) is below a fraction of the slice could get the empty logits instead, saving its model
time, if that changes no output. For every real FLAIR under ../shared/data (or the files given), this
runs the packaged model on every slice with signal, post-processes as `mhunet infer` does, then again
with the slices below each fraction set to the empty logits, and counts the lesion-mask and brain-mask
voxels that differ and the lesions found. A fraction is safe only where every count is 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mhunet_deploy.backends.torch_backend import TorchBackend
from mhunet_deploy.checkpoint import default_checkpoint
from mhunet_deploy.io.nifti import load_volume
from mhunet_deploy.pipeline import EMPTY_SLICE_LOGIT, infer_options, predict_volume, segment_logits
from mhunet_deploy.postprocess import min_lesion_for
from mhunet_deploy.preprocess import prepare

DATA = Path(__file__).resolve().parents[2] / "shared/data"


def real_scans() -> list[Path]:
    return sorted(
        [*DATA.glob("open_ms/patient*/FLAIR.nii.gz"), *DATA.glob("real_ms/*/*/FLAIR.nii.gz")]
        + sorted(DATA.glob("clinical_flair/*.nii.gz"))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="*", type=Path)
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.001, 0.005, 0.01, 0.02])
    args = ap.parse_args()
    options, _ = infer_options(default_checkpoint(), None, None)
    backend = TorchBackend(device="cpu")
    print(
        "| scan | slices with signal | fraction | skipped | lesion voxels differing | brain voxels "
        "differing | lesions (all slices / skipping) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for path in args.scans or real_scans():
        volume = load_volume(path)
        slices, geometry = prepare(volume)
        flat = slices.reshape(len(slices), -1)
        busy = flat.max(axis=1) - flat.min(axis=1) > 1e-6
        fraction = (flat > slices.min() + 1e-6).mean(axis=1)
        logits = predict_volume(backend, slices, 8)
        min_mm3 = min_lesion_for(volume.zooms, options.min_lesion_mm3, options.min_lesion_mm3_thick)

        def outputs(lg: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
            seg = segment_logits(lg, backend.outputs, geometry, volume, options.threshold, min_mm3)  # noqa: B023
            return seg.labels > 0, seg.brain, len(seg.lesions)

        mask, brain, lesions = outputs(logits)
        name = path.relative_to(DATA) if path.is_relative_to(DATA) else path
        for f in args.fractions:
            skip = busy & (fraction < f)
            cut = logits.copy()
            cut[skip] = EMPTY_SLICE_LOGIT
            mask2, brain2, lesions2 = outputs(cut)
            brain_diff = "-" if brain is None else int((brain != brain2).sum())
            print(
                f"| {name} | {int(busy.sum())} | {f:g} | {int(skip.sum())} | {int((mask != mask2).sum())} "
                f"| {brain_diff} | {lesions} / {lesions2} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
