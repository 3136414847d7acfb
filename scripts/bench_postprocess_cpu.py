"""Post-processing on the CPU against an older copy of it, interleaved in one run: the lesion table and
the brain mask (largest component + holes) of patient26, from fixed synthetic probabilities.

    git show REV:mhunet_deploy/postprocess.py > /tmp/old_postprocess.py
    git show REV:mhunet_deploy/brain.py | sed 's/^from \\./from mhunet_deploy./' > /tmp/old_brain.py
    python scripts/bench_postprocess_cpu.py --old-postprocess /tmp/old_postprocess.py \
        --old-brain /tmp/old_brain.py

Both copies get the same labels and probabilities; the script checks that they agree (tables equal up to
1e-9 mm in the centroids, brain masks equal) and prints the median of --repeats runs of each.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from mhunet_deploy import brain, postprocess
from mhunet_deploy.io.nifti import load_volume
from mhunet_deploy.pipeline import sigmoid
from mhunet_deploy.preprocess import prepare


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"old_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=Path, default=Path("../shared/data/open_ms/patient26/FLAIR.nii.gz"))
    ap.add_argument("--old-postprocess", type=Path, required=True)
    ap.add_argument("--old-brain", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    volume = load_volume(args.volume)
    slices, geometry = prepare(volume)
    lesion = geometry.to_input_grid(sigmoid(3.0 * (slices - 2.0)))
    brain_prob = geometry.to_input_grid(sigmoid(3.0 * (slices + 0.5)))
    affine, zooms = volume.image.affine, volume.zooms
    labels = postprocess.segment(lesion, zooms, 0.4, 30.0)
    cases = {
        "lesion_table": lambda mod: mod.lesion_table(labels, affine, zooms),
        "brain_from_probability": lambda mod: mod.brain_from_probability(brain_prob, affine),
    }
    modules = {
        "lesion_table": (load_module(args.old_postprocess), postprocess),
        "brain_from_probability": (load_module(args.old_brain), brain),
    }
    for name, run in cases.items():
        times: dict[str, list[float]] = {"old": [], "new": []}
        results = {}
        for _ in range(args.repeats):
            for key, mod in zip(("old", "new"), modules[name], strict=True):
                t0 = time.perf_counter()
                results[key] = run(mod)
                times[key].append(time.perf_counter() - t0)
        if name == "lesion_table":
            assert len(results["old"]) == len(results["new"])
            for a, b in zip(results["old"], results["new"], strict=True):
                np.testing.assert_allclose(a.pop("centroid_mm"), b.pop("centroid_mm"), atol=1e-9)
                assert a == b, (a, b)
            detail = f"{len(results['new'])} lesions"
        else:
            assert (results["old"] == results["new"]).all()
            detail = f"{int(results['new'].sum())} brain voxels"
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{name} ({detail}, equal): old {old:.3f} s, new {new:.3f} s, old/new {old / new:.2f}")


if __name__ == "__main__":
    main()
