"""What the brain-mask stage adds to `mhunet infer`'s post-processing, on real scan grids (no model).

The stage's cost depends on the grid, not on the weights, so the logits are made up: lesion = a few
bright voxels, brain = the scan's foreground on the model grid (one large blob with holes, like a real
brain output). ``pipeline.segment_logits`` runs with the brain channel and with ``brain_off``,
alternated, and the best of ``--repeats`` of each is printed (seconds and their ratio).

    python3 -m scripts.bench_brain_stage [--repeats 3] FLAIR.nii.gz ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mhunet_deploy.io.nifti import load_volume
from mhunet_deploy.pipeline import segment_logits
from mhunet_deploy.preprocess import prepare

OUTPUTS = ("lesion", "brain")


def made_up_logits(slices: np.ndarray) -> np.ndarray:
    """(S, 2, H, W): lesion logit +8 on the brightest 0.1 % of voxels, brain logit +8 on the foreground."""
    x = slices[:, 0]
    logits = np.full((len(x), 2, *x.shape[1:]), -8.0, np.float32)
    logits[:, 0][x > np.percentile(x, 99.9)] = 8.0
    logits[:, 1][x > np.percentile(x, 50)] = 8.0
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volumes", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| volume | shape | post-processing, no brain stage (s) | with brain stage (s) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for path in args.volumes:
        volume = load_volume(path)
        slices, geometry = prepare(volume)
        logits = made_up_logits(slices)
        best = {False: np.inf, True: np.inf}
        for _ in range(args.repeats):
            for brain in (False, True):
                t0 = time.perf_counter()
                segment_logits(logits, OUTPUTS, geometry, volume, 0.5, 3.0, brain_off=not brain)
                best[brain] = min(best[brain], time.perf_counter() - t0)
        shape = "x".join(map(str, volume.data.shape))
        off, on = best[False], best[True]
        print(f"| {path.name} | {shape} | {off:.2f} | {on:.2f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
