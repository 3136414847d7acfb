"""`mhunet infer` for one volume: io -> preprocess -> backend -> postprocess -> report, in that order.

No torch here: the backend object is the only thing that knows which runtime runs the model, so the
same code serves torch, onnxruntime and TensorRT (and `mhunet serve` later). The voxel work runs where
the backend takes its arrays (``Backend.array_device``): on a GPU backend with cupy installed the volume
moves to the GPU once, and only the mask, the lesion table (and the probabilities if asked) come back.
A batch (:func:`run_batch`) reads the next input while the current one is processed (:func:`read_ahead`)
and goes on past a bad input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import __version__
from .arrays import modules_of, synchronize, to_host
from .backends.base import Backend
from .brain import brain_entry, brain_from_probability, load_brain_mask
from .checkpoint import read_meta
from .errors import MhunetError, OutputError
from .io import read_input
from .io.formats import output_stem
from .io.nifti import Volume
from .io.outputs import prepare_output_folder, save_like
from .postprocess import DEFAULT_MIN_LESION_MM3, DEFAULT_THRESHOLD, lesion_table, min_lesion_for, segment
from .preprocess import Geometry, prepare
from .report import build_report, write_csv, write_json

log = logging.getLogger(__name__)

#: Logit given to slices with no signal at all: they are never sent to the backend.
EMPTY_SLICE_LOGIT = -30.0


@dataclass
class InferOptions:
    """What the user chose on the command line; defaults are the documented ones."""

    threshold: float = DEFAULT_THRESHOLD
    min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3
    #: For thick-slice scans (``postprocess.min_lesion_for``); None: ``min_lesion_mm3`` for every scan.
    min_lesion_mm3_thick: float | None = None
    batch_size: int = 8
    probabilities: bool = False
    qc: bool = False
    #: The input's name in the report and QC page when its path is not for users' eyes (a server's job
    #: folder); None shows the path as given.
    display_name: str | None = None
    volume_index: int | None = None
    series_uid: str | None = None
    #: A DICOM series input also gets a DICOM SEG of the mask on its own slices, and with it a DICOM
    #: SR (TID 1500) of the lesion measurements.
    dicom_seg: bool = True
    dicom_sr: bool = True
    #: The user's brain mask (--brain-mask), used instead of the model's brain output.
    brain_mask: Path | None = None
    #: --no-brain-mask: no brain stage, lesions are not restricted (ignored when brain_mask is given).
    no_brain_mask: bool = False
    model_info: dict[str, Any] = field(default_factory=dict)


def infer_options(
    ckpt: Path, threshold: float | None, min_lesion_mm3: float | None, **choices: Any
) -> tuple[InferOptions, dict[str, Any]]:
    """The options `infer` and `serve` run the pipeline with: the checkpoint's packaged post-processing
    unless overridden, and its name and hash for the report. Also returns the checkpoint's metadata."""
    meta = read_meta(ckpt)
    post = meta.get("postprocess", {})
    options = InferOptions(
        threshold=threshold if threshold is not None else post.get("threshold", DEFAULT_THRESHOLD),
        min_lesion_mm3=min_lesion_mm3
        if min_lesion_mm3 is not None
        else post.get("min_lesion_mm3", DEFAULT_MIN_LESION_MM3),
        # --min-lesion-mm3 applies to every scan; else the packaged thick-slice size, if any
        min_lesion_mm3_thick=None if min_lesion_mm3 is not None else post.get("min_lesion_mm3_thick"),
        model_info={
            "name": meta["config"]["name"],
            "sha256": meta["sha256"],
            "checkpoint": str(ckpt),
            "outputs": list(meta["config"].get("outputs", ["lesion"])),  # older checkpoints: lesion only
        },
        **choices,
    )
    return options, meta


def output_paths(input_path: Path, out_dir: Path, options: InferOptions) -> dict[str, Path]:
    """Where each output of one input goes, named from its stem (``io.formats.output_stem``)."""
    name = output_stem(input_path.name)
    paths = {
        "mask": out_dir / f"{name}_mask.nii.gz",
        "report": out_dir / f"{name}_report.json",
        "csv": out_dir / f"{name}_lesions.csv",
    }
    if options.dicom_seg and input_path.is_dir():  # a folder input is a DICOM series
        paths["seg"] = out_dir / f"{name}_seg.dcm"
        if options.dicom_sr:
            paths["sr"] = out_dir / f"{name}_sr.dcm"
    if options.brain_mask or not options.no_brain_mask:  # dropped if the model has no brain output
        paths["brain"] = out_dir / f"{name}_brain.nii.gz"
    if options.probabilities:
        paths["probabilities"] = out_dir / f"{name}_prob.nii.gz"
    if options.qc:
        paths["qc"] = out_dir / f"{name}_qc.png"
    return paths


def plan_outputs(inputs: Sequence[Path], out_dir: Path, options: InferOptions) -> dict[Path, dict[str, Path]]:
    """Output paths of every input of a batch, refused up front if two inputs would write the same
    file or an output would replace an input or the --brain-mask file (outputs carry suffixes, so only
    a batch or a mask named like an output can do that)."""
    plan = {Path(f): output_paths(Path(f), Path(out_dir), options) for f in inputs}
    owner: dict[Path, Path] = {}
    for f, paths in plan.items():
        mask = paths["mask"].resolve()
        if mask in owner:
            raise OutputError(
                f"{owner[mask]} and {f} would write the same outputs ({paths['mask'].name}); "
                "run them with different -o folders"
            )
        owner[mask] = f
    inputs_read = [*plan, options.brain_mask] if options.brain_mask else list(plan)
    sources = {Path(f).resolve(): Path(f) for f in inputs_read}
    for paths in plan.values():
        for out in paths.values():
            if out.resolve() in sources:
                raise OutputError(
                    f"{out} would overwrite the input {sources[out.resolve()]}; choose another -o"
                )
    return plan


def predict_volume(
    backend: Backend,
    slices: Any,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> Any:
    """Logits (S, len(backend.outputs), H, W) of slices (S, 1, H, W), run in batches; constant slices
    (no signal) are skipped and get EMPTY_SLICE_LOGIT in every channel (no lesion, no brain).

    Logits come back where the slices are (numpy or cupy), whichever the backend computes on."""
    xp, _ = modules_of(slices)
    shape = (len(slices), len(backend.outputs), *slices.shape[2:])
    logits = xp.full(shape, EMPTY_SLICE_LOGIT, dtype=np.float32)
    flat = slices.reshape(len(slices), -1)
    busy = xp.flatnonzero(flat.max(axis=1) - flat.min(axis=1) > 1e-6)
    for i in range(0, len(busy), batch_size):
        idx = busy[i : i + batch_size]
        logits[idx] = backend.predict(xp.ascontiguousarray(slices[idx], dtype=np.float32))
        if on_batch:
            on_batch(len(idx))
    if on_batch and len(busy) < len(slices):
        on_batch(len(slices) - len(busy))
    return logits


def sigmoid(x: Any) -> Any:
    xp, _ = modules_of(x)
    return (0.5 * (1.0 + xp.tanh(0.5 * x))).astype(np.float32)


@dataclass
class Segmentation:
    """What post-processing makes of one volume's logits, on the input's voxel grid."""

    #: The model's lesion probability (before the brain mask: what the network said everywhere); on
    #: the logits' device, like ``labels``.
    prob: Any
    #: Lesions 1..K (``postprocess.segment``), inside the brain mask when there is one.
    labels: Any
    lesions: list[dict[str, Any]]
    #: Boolean brain mask on the host, or None (no brain stage: 1-output model, or --no-brain-mask).
    brain: np.ndarray | None
    #: The report's ``brain`` entry (``brain.brain_entry``).
    brain_info: dict[str, Any]
    warnings: list[str]


def segment_logits(
    logits: Any,
    outputs: Sequence[str],
    geometry: Geometry,
    volume: Volume,
    threshold: float,
    min_lesion_mm3: float,
    user_brain: np.ndarray | None = None,
    brain_off: bool = False,
) -> Segmentation:
    """Logits (S, len(outputs), H, W) -> lesions and brain mask on the input grid.

    The brain mask is the user's (``user_brain``), else none with ``brain_off``, else the model's brain
    output when it has one; lesion voxels outside it are cut before lesions are formed. Computed where
    the logits are (numpy or cupy).
    """
    xp, _ = modules_of(logits)
    if user_brain is not None:
        user_brain = xp.asarray(user_brain)
    probs = sigmoid(logits)
    prob = geometry.to_input_grid(probs[:, :1])
    affine, zooms = volume.image.affine, volume.zooms
    brain, source, reason, warnings = None, None, None, []
    if user_brain is not None:
        brain, source = user_brain, "user"
    elif brain_off:
        reason = "turned off (--no-brain-mask)"
    elif "brain" in outputs:
        k = list(outputs).index("brain")
        brain, source = brain_from_probability(geometry.to_input_grid(probs[:, k : k + 1]), affine), "model"
        if not brain.any():
            warnings.append(
                "the model found no brain (no voxel of its brain output >= 0.5), so no lesion is kept; "
                "check that this is a head scan (mhunet infer: --brain-mask FILE or --no-brain-mask)"
            )
    else:
        reason = "the model has no brain output; lesions are not restricted to the brain"
    labels = segment(prob, zooms, threshold, min_lesion_mm3, within=brain)
    outside = None if brain is None else int(xp.count_nonzero((prob >= threshold) & ~brain))
    brain = None if brain is None else to_host(brain)
    return Segmentation(
        prob=prob,
        labels=labels,
        lesions=lesion_table(labels, affine, zooms),
        brain=brain,
        brain_info=brain_entry(brain, zooms, source, reason, outside),
        warnings=warnings,
    )


def load_input(path: Path, options: InferOptions) -> Volume:
    """:func:`io.read_input` with the user's choices: a series that a DICOM SEG could not reference is
    refused before the model runs, unless no SEG is asked."""
    return read_input(path, options.volume_index, options.series_uid, seg_sources=options.dicom_seg)


def timed_load(path: Path, options: InferOptions) -> tuple[Volume, float]:
    """:func:`load_input` and the seconds it took."""
    t0 = time.perf_counter()
    volume = load_input(path, options)
    return volume, time.perf_counter() - t0


@contextmanager
def read_ahead(paths: Sequence[Path], options: InferOptions) -> Iterator[Iterator[tuple[Path, Future]]]:
    """Each input with the future of its :func:`timed_load`: a reader thread loads the next input
    while the caller processes the current one, so a batch costs its inputs' compute, not also their
    reads. The first read starts on entry, so it overlaps whatever the caller does first (loading the
    backend); a load error is raised by that input's ``future.result()``."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mhunet-read") as reader:
        pending = [reader.submit(timed_load, Path(p), options) for p in paths[:1]]

        def inputs() -> Iterator[tuple[Path, Future]]:
            for i, path in enumerate(paths):
                if i + 1 < len(paths):
                    pending.append(reader.submit(timed_load, Path(paths[i + 1]), options))
                yield Path(path), pending.pop(0)

        try:
            yield inputs()
        finally:
            reader.shutdown(cancel_futures=True)  # on an early exit, no read starts any more


#: ``(on_start, on_batch)`` callbacks of one input's :func:`infer_volume`: its slice count, then slices done.
ProgressHooks = tuple[Callable[[int], None] | None, Callable[[int], None] | None]


@dataclass
class Failure:
    """An input of a batch that was refused: the batch went on without it."""

    input: Path
    error: MhunetError

    def to_dict(self) -> dict[str, Any]:
        """The ``failures`` entry of `mhunet infer --json`."""
        return {"input": str(self.input), "error": str(self.error), "exit_code": self.error.exit_code}


@contextmanager
def _untracked(_: Path) -> Iterator[ProgressHooks]:
    yield None, None


def run_batch(
    inputs: Iterable[tuple[Path, Future]],
    out_dir: Path,
    backend: Backend,
    options: InferOptions,
    raise_errors: bool = False,
    track: Callable[[Path], AbstractContextManager[ProgressHooks]] = _untracked,
) -> Iterator[dict[str, Any] | Failure]:
    """`mhunet infer`'s batch policy: each input of ``inputs`` (:func:`read_ahead`) segmented in turn,
    yielding its report, or its :class:`Failure` when it is refused (a MhunetError, e.g. a bad file)
    so that one bad input does not cost the others their results. ``raise_errors`` (a batch of one):
    the error is raised instead, and is the command's. ``track(path)`` gives the input's progress
    callbacks for the time it runs; a failure is yielded while it is still open."""
    for path, loading in inputs:
        with track(path) as (on_start, on_batch):
            try:
                report = infer_volume(path, out_dir, backend, options, on_start, on_batch, loading.result())
            except MhunetError as e:
                if raise_errors:
                    raise
                yield Failure(path, e)
                continue
        yield report


def infer_volume(
    input_path: Path,
    out_dir: Path,
    backend: Backend,
    options: InferOptions,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    loaded: tuple[Volume, float] | None = None,
) -> dict[str, Any]:
    """Segment one volume and write its outputs; returns the report. All or no files are written.

    ``loaded``: the input already read, and the seconds that took (:func:`read_ahead`).
    Timings: load, preprocess, model, postprocess, write (every output but the report itself, which
    carries them) and their sum, ``total_s``; GPU stages are timed to the end of their GPU work."""
    input_path = Path(input_path)
    volume, load_s = loaded or timed_load(input_path, options)
    log.info("%s: %s", input_path.name, describe_geometry(volume))
    user_brain = load_brain_mask(options.brain_mask, volume) if options.brain_mask else None
    # Output names always differ from the input's (suffixed stems); save_like refuses the input anyway.
    paths = output_paths(input_path, Path(out_dir), options)
    t1 = time.perf_counter()
    slices, geometry = prepare(volume, device=backend.array_device)
    synchronize(slices)
    t2 = time.perf_counter()
    log.info("%s: %d axial slices on a %d x %d model grid", input_path.name, len(slices), *slices.shape[2:])
    if on_start:
        on_start(len(slices))
    logits = predict_volume(backend, slices, options.batch_size, on_batch)
    synchronize(logits)
    t3 = time.perf_counter()
    result = segment_logits(
        logits,
        backend.outputs,
        geometry,
        volume,
        options.threshold,
        min_lesion_for(volume.zooms, options.min_lesion_mm3, options.min_lesion_mm3_thick),
        user_brain,
        options.no_brain_mask,
    )
    brain, mask = result.brain, to_host(result.labels > 0)
    prob = to_host(result.prob) if options.probabilities else None
    if brain is None:
        paths.pop("brain", None)
    t4 = time.perf_counter()
    timings = {
        "load_s": load_s,
        "preprocess_s": t2 - t1,
        "model_s": t3 - t2,
        "postprocess_s": t4 - t3,
    }
    report = build_report(
        input_path=Path(options.display_name) if options.display_name else input_path,
        shape=volume.data.shape,
        zooms=volume.zooms,
        lesions=result.lesions,
        brain=result.brain_info,
        backend=backend.name,
        precision=backend.precision,
        model=options.model_info,
        engine_key=backend.engine_key,
        timings=timings,
        warnings=[*volume.warnings, *result.warnings],
        version=__version__,
        outputs={k: str(v) for k, v in paths.items()},
    )

    def finish_report() -> None:
        """The report goes last, with the write time of the outputs before it."""
        timings["write_s"] = time.perf_counter() - t4
        timings["total_s"] = sum(timings.values())
        report["timings"] = dict(timings)
        write_json(report, paths["report"])

    writers: dict[str, Callable[[], object]] = {
        "mask": lambda: save_like(volume.image, mask.astype(np.uint8), paths["mask"], np.uint8),
        "csv": lambda: write_csv(report, paths["csv"]),
    }
    if "brain" in paths:
        writers["brain"] = lambda: save_like(volume.image, brain.astype(np.uint8), paths["brain"], np.uint8)
    if "probabilities" in paths:
        writers["probabilities"] = lambda: save_like(volume.image, prob, paths["probabilities"], np.float32)
    if "seg" in paths:
        from .io.dicom_out import BRAIN, BRAIN_LABEL, LESION, LESION_LABEL, build_seg, build_sr, write_dicom

        segments = {LESION_LABEL: (LESION, mask)}
        if result.brain_info["source"] == "model":  # a --brain-mask is the user's, not mhunet's
            segments[BRAIN_LABEL] = (BRAIN, brain)
        seg = build_seg(volume, segments, options.model_info)
        writers["seg"] = lambda: write_dicom(seg, paths["seg"])
        if "sr" in paths:
            sr = build_sr(volume, seg, report, options.model_info)
            writers["sr"] = lambda: write_dicom(sr, paths["sr"])
    if "qc" in paths:
        from .qc import qc_montage

        writers["qc"] = lambda: qc_montage(volume.image, mask, report, paths["qc"], brain)
    writers["report"] = finish_report
    write_all(writers, paths)
    log.info(
        "%s: %s; wrote %s",
        input_path.name,
        ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in timings.items()),
        ", ".join(p.name for p in paths.values()),
    )
    return report


def describe_geometry(volume: Volume) -> str:
    """One line on the input's grid, for --verbose: shape, voxel size, orientation, obliquity, codes."""
    affine = volume.image.affine
    header = volume.image.header
    oblique = float(np.degrees(nib.affines.obliquity(affine).max()))
    # The stored scaling lives on the data proxy: nibabel resets it in a loaded image's header.
    slope, inter = getattr(volume.image.dataobj, "slope", 1.0), getattr(volume.image.dataobj, "inter", 0.0)
    return (
        f"shape {'x'.join(map(str, volume.data.shape))}, voxel "
        f"{'x'.join(f'{z:.3g}' for z in volume.zooms)} mm, {''.join(nib.aff2axcodes(affine))}"
        f"{f' oblique {oblique:.1f} deg' if oblique > 0.01 else ''}, "
        f"{'right' if np.linalg.det(affine[:3, :3]) > 0 else 'left'}-handed, "
        f"qform/sform codes {int(header['qform_code'])}/{int(header['sform_code'])}, "
        f"{header.get_data_dtype()}{f' scaled x{slope:g} {inter:+g}' if (slope, inter) != (1, 0) else ''}"
    )


def write_all(writers: dict[str, Callable[[], object]], paths: dict[str, Path]) -> None:
    """Write every output or none: on any failure the outputs of this run are removed again."""
    prepare_output_folder(Path(next(iter(paths.values()))).parent)
    done: list[Path] = []
    try:
        for key, write in writers.items():
            write()
            done.append(paths[key])
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise
