"""Issue #13 runtime figures in one process: pre/post-processing parity of the GPU (cupy) path with the
CPU (numpy/scipy) path, warm end-to-end stage times, and a folder of volumes through the batch runner.

    python scripts/gpu/bench_runtime.py --data shared/data --out $OUT [--device cuda] [--precision fp16]
        [--batch-size 32] [--repeats 5] [--folder 4] [--volume FLAIR.nii.gz]

1. parity (needs cupy and a GPU; skipped otherwise, with the reason): on patient26, on the same scan
   given an oblique, anisotropic 1.5 x 1.5 x 3 mm geometry (reorientation, resampling, crop) and on
   clinical case01 when present: the model slices, and, from the same logits, the probability map, the
   mask, the labels and the lesion table of both paths. The labels and table are also compared on the
   same probability map, so connected components are held to exact agreement.
2. warm: the torch backend (the checkpoint's post-processing, as `mhunet infer`), one untimed warm-up,
   then --repeats runs of infer_volume; per-stage medians with pre/post on the backend's device, and the
   same backend with pre/post forced onto the CPU (the old path), side by side, plus mask Dice between them.
3. folder: --folder copies of the volume through pipeline.read_ahead + run_batch, as `mhunet infer
   folder/` runs them: wall time against folder x the warm total.

Writes runtime.json and runtime.md into --out; exits 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STAGES = ("load_s", "preprocess_s", "model_s", "postprocess_s", "write_s", "total_s")
#: Pre-processed slices are z-scores (a few units): float32 statistics and resampling agree to ~1e-6.
SLICE_ATOL = 1e-4
PROB_ATOL = 1e-5


def oblique_variant(volume):
    """The same voxels on an oblique, permuted, anisotropic grid (1.5 x 1.5 x 3 mm, rotated ~17 degrees):
    reorientation flips and transposes, resampling at a non-unit step, and a crop of the model grid."""
    import nibabel as nib

    from mhunet_deploy.io.nifti import volume_from_image

    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.eye(3)[:, [1, 0, 2]] @ np.diag([-1, 1, 1])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 1.5, 3.0])
    img = nib.Nifti1Image(volume.data, affine)
    img.set_qform(affine, code=1)
    return volume_from_image(img)


def parity_case(name: str, volume, threshold: float, min_mm3: float) -> dict:
    """Both paths on one volume; every difference, and whether each is inside its tolerance."""
    import cupy

    from mhunet_deploy.arrays import to_host
    from mhunet_deploy.brain import brain_from_probability
    from mhunet_deploy.pipeline import sigmoid
    from mhunet_deploy.postprocess import lesion_table, segment
    from mhunet_deploy.preprocess import prepare

    slices_cpu, geometry = prepare(volume, device="cpu")
    slices_gpu, geometry_gpu = prepare(volume, device="cuda")
    logits = 3.0 * (slices_cpu - 2.0)  # bright regions become "lesions": many components of all sizes
    prob_cpu = geometry.to_input_grid(sigmoid(logits))
    prob_gpu = geometry_gpu.to_input_grid(sigmoid(cupy.asarray(logits)))
    zooms, affine = volume.zooms, volume.image.affine
    labels_cpu = segment(prob_cpu, zooms, threshold, min_mm3)
    labels_gpu = segment(prob_gpu, zooms, threshold, min_mm3)
    same_prob_labels = segment(cupy.asarray(prob_cpu), zooms, threshold, min_mm3)
    table_cpu = lesion_table(labels_cpu, affine, zooms)
    table_same = lesion_table(same_prob_labels, affine, zooms)
    brain_prob = geometry.to_input_grid(sigmoid(3.0 * (slices_cpu + 0.5)))  # the head's tissue as "brain"
    brain_cpu = brain_from_probability(brain_prob, affine)
    brain_same = to_host(brain_from_probability(cupy.asarray(brain_prob), affine))
    near = np.abs(prob_cpu - threshold) <= PROB_ATOL
    mask_diff = int(((labels_cpu > 0) != (to_host(labels_gpu) > 0)).sum())
    pairs = list(zip(table_cpu, table_same, strict=False))

    def without_centroid(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "centroid_mm"}

    centroid_diff = max(
        (float(np.abs(np.subtract(a["centroid_mm"], b["centroid_mm"])).max()) for a, b in pairs), default=0.0
    )
    rows_equal = len(table_cpu) == len(table_same) and all(
        without_centroid(a) == without_centroid(b) for a, b in pairs
    )
    result = {
        "case": name,
        "shape": list(volume.data.shape),
        "geometry_equal": _geometry_equal(geometry, geometry_gpu),
        "slices_max_abs": float(np.abs(to_host(slices_gpu) - slices_cpu).max()),
        "prob_max_abs": float(np.abs(to_host(prob_gpu) - prob_cpu).max()),
        "mask_voxels": int((labels_cpu > 0).sum()),
        "mask_diff_voxels": mask_diff,
        "near_threshold_voxels": int(near.sum()),
        "lesions_cpu": len(table_cpu),
        "lesions_gpu": int(to_host(labels_gpu).max()),
        "same_prob_labels_equal": bool((to_host(same_prob_labels) == labels_cpu).all()),
        "same_prob_table_equal": rows_equal,
        "same_prob_centroid_max_abs_mm": centroid_diff,
        "same_prob_brain_equal": bool((brain_same == brain_cpu).all()),
        "brain_voxels": int(brain_cpu.sum()),
    }
    result["passed"] = bool(
        result["geometry_equal"]
        and result["slices_max_abs"] <= SLICE_ATOL
        and result["prob_max_abs"] <= PROB_ATOL
        and mask_diff <= result["near_threshold_voxels"]
        and result["same_prob_labels_equal"]
        and rows_equal
        and centroid_diff <= 1e-6
        and result["same_prob_brain_equal"]
    )
    return result


def _geometry_equal(a, b) -> bool:
    """Geometry is planned on the host from the header: both paths must plan the same one."""
    return all(
        np.array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f))) for f in a.__dataclass_fields__
    )


def parity(data: Path, volume_path: Path, threshold: float, min_mm3: float) -> list[dict] | str:
    from mhunet_deploy.arrays import _gpu_arrays_problem
    from mhunet_deploy.io.nifti import load_volume

    problem = _gpu_arrays_problem()
    if problem:
        return f"skipped: {problem}"
    base = load_volume(volume_path)
    cases = [("patient26", base), ("patient26 oblique 1.5x1.5x3 mm", oblique_variant(base))]
    case01 = data / "clinical_flair" / "case01_FLAIR.nii.gz"
    if case01.is_file():
        cases.append(("clinical case01", load_volume(case01)))
    return [parity_case(name, vol, threshold, min_mm3) for name, vol in cases]


def median_stages(reports: list[dict]) -> dict[str, float]:
    return {k: statistics.median(r["timings"][k] for r in reports) for k in STAGES}


def warm_and_folder(args, options, volume_path: Path) -> dict:
    """Warm stage times with pre/post on the backend's device and on the CPU, then the folder run."""
    import nibabel as nib

    from mhunet_deploy.backends.torch_backend import TorchBackend
    from mhunet_deploy.metrics import dice
    from mhunet_deploy.pipeline import infer_volume, read_ahead, run_batch

    t0 = time.perf_counter()
    backend = TorchBackend(args.checkpoint, device=args.device, precision=args.precision)
    setup_s = time.perf_counter() - t0
    options.batch_size = args.batch_size
    out: dict = {
        "backend": backend.name,
        "precision": backend.precision,
        "scan_impl": backend.scan_impl,
        "array_device": backend.array_device,
        "backend_setup_s": setup_s,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    masks, brains = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, device in (("device", backend.array_device), ("host", "cpu")):
            backend.array_device = device
            runs = []
            for i in range(args.repeats + 1):  # run 0: warm-up (first-call costs of this path)
                runs.append(infer_volume(volume_path, Path(tmp) / f"{label}{i}", backend, options))
            out[f"first_{label}"] = runs[0]["timings"]
            out[f"warm_{label}"] = median_stages(runs[1:])
            out[f"warm_{label}_all"] = [r["timings"] for r in runs[1:]]
            out["lesions_" + label] = runs[-1]["lesion_count"]
            masks[label] = np.asarray(nib.load(runs[-1]["outputs"]["mask"]).dataobj) > 0
            if "brain" in runs[-1]["outputs"]:
                brains[label] = np.asarray(nib.load(runs[-1]["outputs"]["brain"]).dataobj) > 0
            print(
                f"{label} pre/post on {device}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in out[f"warm_{label}"].items())
            )
        out["mask_dice_device_vs_host"] = dice(masks["device"], masks["host"])
        out["mask_diff_voxels_device_vs_host"] = int((masks["device"] != masks["host"]).sum())
        out["brain_dice_device_vs_host"] = dice(brains["device"], brains["host"]) if brains else None
        backend.array_device = out["array_device"]
        out["steps"] = profile_steps(backend, options, volume_path, args.repeats)
        folder = Path(tmp) / "folder"
        folder.mkdir()
        copies = []
        for i in range(args.folder):
            copies.append(folder / f"scan{i}.nii.gz")
            copies[-1].symlink_to(volume_path.resolve())
        t1 = time.perf_counter()
        with read_ahead(copies, options) as inputs:
            reports = list(run_batch(inputs, Path(tmp) / "folder_out", backend, options, raise_errors=True))
        wall = time.perf_counter() - t1
    out["folder"] = {
        "volumes": args.folder,
        "wall_s": wall,
        "per_volume_s": wall / args.folder,
        "warm_total_s": out["warm_device"]["total_s"],
        "ratio_to_n_warm": wall / (args.folder * out["warm_device"]["total_s"]),
        "timings": [r["timings"] for r in reports],
    }
    return out


def profile_steps(backend, options, volume_path: Path, repeats: int) -> dict[str, float]:
    """Median seconds of each step inside the preprocess and postprocess stages, each timed to the end of
    its GPU work, on the backend's array device: where the <= 15 % of pre + post goes."""
    from contextlib import contextmanager

    from mhunet_deploy.arrays import array_modules, synchronize, to_host
    from mhunet_deploy.brain import brain_from_probability
    from mhunet_deploy.pipeline import predict_volume, sigmoid, timed_load
    from mhunet_deploy.postprocess import lesion_table, min_lesion_for, segment
    from mhunet_deploy.preprocess import DEFAULT_GRID, DEFAULT_SPACING_MM, Geometry, IntensityStats

    volume, _ = timed_load(volume_path, options)
    xp, _ = array_modules(backend.array_device)
    affine, zooms = volume.image.affine, volume.zooms
    min_mm3 = min_lesion_for(zooms, options.min_lesion_mm3, options.min_lesion_mm3_thick)
    k = list(backend.outputs).index("brain") if "brain" in backend.outputs else None
    anchor = xp.zeros(1)  # a device array when the steps run on the GPU: synchronize() then waits
    times: dict[str, list[float]] = {}

    @contextmanager
    def timed(name: str):
        t = time.perf_counter()
        yield
        synchronize(anchor)
        times.setdefault(name, []).append(time.perf_counter() - t)

    for _ in range(repeats + 1):  # the first round is a warm-up
        with timed("pre: volume to device"):
            data = xp.asarray(volume.data)
        with timed("pre: intensity statistics"):
            stats = IntensityStats.from_volume(data)
        with timed("pre: plan geometry"):
            geometry = Geometry.plan(volume, DEFAULT_GRID, DEFAULT_SPACING_MM, stats.foreground_threshold)
        with timed("pre: to model grid"):
            grid = geometry.to_model_grid(data)
        with timed("pre: normalise"):
            slices = stats.apply(grid)
        logits = predict_volume(backend, slices, options.batch_size)
        synchronize(logits)
        with timed("post: sigmoid"):
            probs = sigmoid(logits)
        with timed("post: lesion to input grid"):
            prob = geometry.to_input_grid(probs[:, :1])
        brain = None
        if k is not None:
            with timed("post: brain to input grid"):
                brain_prob = geometry.to_input_grid(probs[:, k : k + 1])
            with timed("post: brain mask"):
                brain = brain_from_probability(brain_prob, affine)
        with timed("post: lesions (threshold, label, size)"):
            labels = segment(prob, zooms, options.threshold, min_mm3, within=brain)
        with timed("post: lesion table"):
            lesion_table(labels, affine, zooms)
        with timed("post: masks to host"):
            to_host(labels > 0)
            if brain is not None:
                to_host(brain)
    return {name: statistics.median(v[1:]) for name, v in times.items()}


def markdown(summary: dict) -> str:
    lines = [f"# issue #13 runtime: {summary['device_name']} ({summary['volume']})", ""]
    par = summary["parity"]
    lines.append("## GPU vs CPU pre/post-processing parity")
    lines.append("")
    if isinstance(par, str):
        lines.append(par)
    else:
        lines += [
            "| case | shape | slices max abs | prob max abs | mask voxels | differing | near threshold "
            "| lesions CPU/GPU | same-prob labels, table, brain | passed |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        ]
        for r in par:
            lines.append(
                f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['slices_max_abs']:.2e} | "
                f"{r['prob_max_abs']:.2e} | {r['mask_voxels']} | {r['mask_diff_voxels']} | "
                f"{r['near_threshold_voxels']} | {r['lesions_cpu']}/{r['lesions_gpu']} | "
                f"{r['same_prob_labels_equal']}, {r['same_prob_table_equal']}, {r['same_prob_brain_equal']} "
                f"| {r['passed']} |"
            )
    w = summary["warm"]
    lines += [
        "",
        f"## warm end to end: {w['backend']} {w['precision']}, scan {w['scan_impl']!r}, "
        f"batch {w['batch_size']}, median of {w['repeats']} after a warm-up "
        f"(backend setup {w['backend_setup_s']:.2f} s)",
        "",
        "| stage | pre/post on "
        + w["array_device"]
        + " | pre/post on cpu | first run ("
        + w["array_device"]
        + ") |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k in STAGES:
        lines.append(
            f"| {k} | {w['warm_device'][k]:.3f} | {w['warm_host'][k]:.3f} | {w['first_device'][k]:.3f} |"
        )
    d, f = w["warm_device"], w["folder"]
    share = (d["preprocess_s"] + d["postprocess_s"]) / d["total_s"]
    lines += [
        "",
        f"pre+post share of the warm total: {share:.1%}; mask Dice device vs host pre/post "
        f"{w['mask_dice_device_vs_host']:.6f} ({w['mask_diff_voxels_device_vs_host']} voxels differ); "
        f"brain mask Dice {w['brain_dice_device_vs_host']}; "
        f"lesions {w['lesions_device']} / {w['lesions_host']}",
        "",
        f"folder of {f['volumes']}: {f['wall_s']:.2f} s wall, {f['per_volume_s']:.3f} s per volume "
        f"= {f['ratio_to_n_warm']:.2f} x (N x warm total)",
        "",
        f"steps inside preprocess and postprocess on {w['array_device']} (median of {w['repeats']}, each "
        "timed to the end of its GPU work):",
        "",
        "| step | ms |",
        "| --- | ---: |",
        *(f"| {name} | {1e3 * t:.2f} |" for name, t in w["steps"].items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("shared/data"))
    ap.add_argument("--volume", type=Path, help="default: DATA/open_ms/patient26/FLAIR.nii.gz")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, help="default: the packaged weights")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folder", type=int, default=4)
    args = ap.parse_args()
    volume_path = args.volume or args.data / "open_ms" / "patient26" / "FLAIR.nii.gz"
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from mhunet_deploy.checkpoint import default_checkpoint
    from mhunet_deploy.pipeline import infer_options

    options, _ = infer_options(args.checkpoint or default_checkpoint(), None, None)
    t0 = time.perf_counter()
    par = parity(args.data, volume_path, options.threshold, options.min_lesion_mm3)
    print(f"parity ({time.perf_counter() - t0:.1f} s):", json.dumps(par, indent=1))
    summary = {
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
        "torch": torch.__version__,
        "volume": str(volume_path),
        "parity": par,
        "warm": warm_and_folder(args, options, volume_path),
    }
    (args.out / "runtime.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (args.out / "runtime.md").write_text(text)
    print(text)
    return 0 if isinstance(par, str) or all(r["passed"] for r in par) else 1


if __name__ == "__main__":
    sys.exit(main())
