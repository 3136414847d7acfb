"""The `mhunet` command line (Typer). Every user error ends in one line on stderr and a documented
non-zero exit code (see README "Exit codes"); only bugs show a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import BackendError, InputError, MhunetError
from .options import (
    AsJson,
    BackendName,
    Checkpoint,
    DataRoot,
    DataSources,
    Device,
    EngineDir,
    ExportDir,
    Precision,
    Quiet,
    ScanVolume,
    Synthetic,
    SynthSource,
    Verbose,
    Workers,
)

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from ..pipeline import ProgressHooks

app = typer.Typer(
    help="Mamba-HUNet MS-lesion segmentation on FLAIR MRI: train, export, verify, infer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

EXIT_PARTIAL = 6


class _ConsoleHandler(logging.Handler):
    """Log records as plain lines on the stderr console, whatever sys.stderr is when they come."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(self.format(record), markup=False, highlight=False, soft_wrap=True)


def _logging(verbose: bool, quiet: bool = False) -> None:
    """--verbose turns on the package's INFO log on stderr; the log then replaces the progress bar."""
    if verbose and quiet:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    logger = logging.getLogger("mhunet_deploy")
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _progress(quiet: bool) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    )


def _table(*args: Any, **kwargs: Any) -> Table:
    """A rich Table, imported on first use (``mhunet infer -q`` and ``--json`` never need one)."""
    from rich.table import Table

    return Table(*args, **kwargs)


def _print_version(value: bool) -> None:
    """Eager, so `mhunet --version` answers before Click asks for a command."""
    if value:
        out.print(f"mhunet-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Options of `mhunet` itself, before any command."""


def _announce_choice(name: str, why: str) -> None:
    err.print(f"auto: [bold]{name}[/] ({escape(why)})")


@app.command()
def infer(
    inputs: Annotated[
        list[Path], typer.Argument(help="FLAIR NIfTI files, folders of them, or DICOM series folders.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for masks and reports.")] = Path(
        "mhunet-output"
    ),
    backend: BackendName = "auto",
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    export_dir: ExportDir = Path("export"),
    onnx: Annotated[Path | None, typer.Option(help="Run this portable .onnx (onnxruntime backend).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Lesion probability threshold.")] = None,
    min_lesion_mm3: Annotated[
        float | None,
        typer.Option(
            help="Drop lesions smaller than this (mm3), on every scan (default: the model's packaged "
            "sizes, one for thin and one for thick-slice scans)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Slices per backend call (default: GPU 32, CPU 8).")
    ] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write the probability map.")] = False,
    qc: Annotated[bool, typer.Option(help="Also write a QC montage PNG.")] = False,
    volume_index: Annotated[int | None, typer.Option(help="Volume of a 4D series to use.")] = None,
    series: Annotated[
        str | None, typer.Option(help="SeriesInstanceUID to use when a DICOM folder holds several.")
    ] = None,
    dicom_seg: Annotated[
        bool, typer.Option(help="Also write a DICOM SEG on the source slices (DICOM series inputs).")
    ] = True,
    brain_mask: Annotated[
        Path | None,
        typer.Option(
            help="Brain mask NIfTI on the scan's grid (voxels > 0 = brain), used instead of the model's; "
            "lesions outside it are dropped. One input only."
        ),
    ] = None,
    no_brain_mask: Annotated[
        bool,
        typer.Option("--no-brain-mask", help="No brain stage: lesions are not restricted to the brain."),
    ] = False,
    dicom_sr: Annotated[
        bool, typer.Option(help="With the DICOM SEG, a DICOM SR (TID 1500) of the lesion measurements.")
    ] = True,
    engine_dir: EngineDir = Path("engines"),
    quiet: Quiet = False,
    verbose: Verbose = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Segment MS lesions: NIfTI or a DICOM series in; mask, lesion report (JSON+CSV), DICOM SEG (DICOM
    input: SEG and SR), optional probabilities and QC out."""
    from ..backends import load_backend
    from ..checkpoint import default_checkpoint
    from ..io import expand_inputs
    from ..io.outputs import output_folder
    from ..pipeline import Failure, infer_options, plan_outputs, read_ahead, run_batch

    _logging(verbose, quiet)
    if brain_mask and no_brain_mask:
        raise typer.BadParameter("--brain-mask and --no-brain-mask exclude each other")
    files = expand_inputs(inputs)
    if brain_mask and len(files) > 1:
        raise typer.BadParameter(f"--brain-mask is one scan's mask, but {len(files)} inputs were given")
    ckpt = checkpoint or default_checkpoint()
    options, meta = infer_options(
        ckpt,
        threshold,
        min_lesion_mm3,
        probabilities=probabilities,
        qc=qc,
        volume_index=volume_index,
        series_uid=series,
        dicom_seg=dicom_seg,
        brain_mask=brain_mask,
        no_brain_mask=no_brain_mask,
        dicom_sr=dicom_sr,
    )
    # Output problems are found before the model runs, not after minutes of inference.
    plan_outputs(files, output, options)
    # A folder this run creates is removed again if nothing is written into it (all inputs bad).
    # The first input is read while the backend loads, each next one while the current one runs.
    with (
        output_folder(output),
        read_ahead(files, options) as inputs,
        load_backend(
            backend,
            ckpt,
            device=device,
            precision=precision,
            export_dir=export_dir,
            onnx_path=onnx,
            on_choice=None if quiet else _announce_choice,
            engine_dir=engine_dir,
        ) as engine,
    ):
        options.batch_size = batch_size or engine.batch_size
        if not quiet:
            err.print(f"backend: [bold]{engine.name}[/] ({engine.precision}), model {meta['config']['name']}")
        results, failures = [], []
        with _progress(quiet or verbose or as_json) as bar:

            @contextmanager
            def track(path: Path) -> Iterator[ProgressHooks]:
                task = bar.add_task(path.name, total=None)
                try:
                    yield lambda n: bar.update(task, total=n), lambda k: bar.advance(task, k)
                finally:
                    bar.remove_task(task)

            for outcome in run_batch(inputs, output, engine, options, len(files) == 1, track):
                if isinstance(outcome, Failure):
                    failures.append(outcome.to_dict())
                    err.print(
                        f"[red]error:[/] {escape(outcome.input.name)}: {escape(str(outcome.error))}",
                        highlight=False,
                        soft_wrap=True,
                    )
                    continue
                results.append(outcome)
                if not quiet:
                    for warning in outcome["warnings"]:
                        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"results": results, "failures": failures}, default=str))
    elif not quiet:
        table = _table("input", "lesions", "volume mL", "brain mL", "seconds", "mask")
        for r in results:
            brain_ml = r["brain"]["volume_ml"]
            table.add_row(
                Path(r["input"]["path"]).name,
                str(r["lesion_count"]),
                f"{r['total_volume_ml']:.2f}",
                "-" if brain_ml is None else f"{brain_ml:.0f} ({r['brain']['source']})",
                f"{r['timings']['total_s']:.1f}",
                r["outputs"]["mask"],
            )
        out.print(table)
    if failures:
        err.print(f"[red]{len(failures)} of {len(files)} inputs failed[/]")
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond loopback an API key is required.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    backend: BackendName = "auto",
    device: Device = "auto",
    precision: Precision = "fp32",
    checkpoint: Checkpoint = None,
    export_dir: ExportDir = Path("export"),
    engine_dir: EngineDir = Path("engines"),
    api_key: Annotated[
        str | None,
        typer.Option(envvar="MHUNET_API_KEY", help="Require this key in the X-API-Key header of /v1 calls."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host without an API key (anyone who reaches it).")
    ] = False,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload accepted, in MB.")] = 512.0,
    store: Annotated[
        Path | None, typer.Option(help="Folder for job files (default: a temporary folder, removed on exit).")
    ] = None,
    max_jobs: Annotated[
        int, typer.Option(min=1, help="Jobs kept (finished ones evicted oldest first).")
    ] = 100,
    max_store_mb: Annotated[float, typer.Option(min=1, help="Bytes kept in the store, in MB.")] = 10_000.0,
    expire_s: Annotated[
        float, typer.Option(min=1, help="Seconds a finished job's results are kept.")
    ] = 3600.0,
    verbose: Verbose = False,
) -> None:
    """Serve the segmentation as an HTTP API and a web page (same pipeline and report as `infer`)."""
    try:
        from ..serve.app import create_app
        from ..serve.server import bind, is_loopback, run, url_of
        from ..serve.store import JobStore
    except ImportError as e:
        raise InputError(f'mhunet serve needs {e.name}; pip install "mhunet-deploy[serve]"') from e
    from ..backends import load_backend
    from ..checkpoint import default_checkpoint
    from ..pipeline import infer_options
    from ..report import DISCLAIMER

    _logging(verbose)
    if not api_key and not is_loopback(host) and not insecure:
        raise InputError(
            f"--host {host} can be reached from other machines; set an API key (--api-key or "
            "MHUNET_API_KEY), or pass --insecure to serve without one"
        )
    ckpt = checkpoint or default_checkpoint()
    options, meta = infer_options(ckpt, None, None, probabilities=True, qc=True)
    sock = bind(host, port)  # before the model loads: a port in use fails at once
    with load_backend(
        backend,
        ckpt,
        device=device,
        precision=precision,
        export_dir=export_dir,
        on_choice=_announce_choice,
        engine_dir=engine_dir,
    ) as engine:
        options.batch_size = engine.batch_size
        jobs = JobStore(store, max_jobs, int(max_store_mb * 1e6), expire_s)
        web = create_app(
            engine, options, jobs, api_key=api_key or None, max_upload_bytes=int(max_upload_mb * 1e6)
        )
        auth = "API key required (X-API-Key)" if api_key else "no API key"
        if insecure and not api_key and not is_loopback(host):
            err.print(
                f"[yellow]warning:[/] --insecure: anyone who reaches {escape(host)} can use this server"
            )
        err.print(
            f"mhunet serve: {url_of(sock)} - backend [bold]{engine.name}[/] ({engine.precision}), model "
            f"{meta['config']['name']} sha256 {meta['sha256'][:12]}, {auth}; {DISCLAIMER}",
            highlight=False,
            soft_wrap=True,
        )
        run(web, sock, log_level="info" if verbose else "warning")  # the worker stops before this returns


@app.command()
def info(
    model: Annotated[str, typer.Option(help="Named config: light or paper.")] = "light",
    checkpoint: Annotated[Path | None, typer.Option(help="Describe this checkpoint instead.")] = None,
) -> None:
    """Print parameter count, FLOPs at 1x1x256x256 (counted on the graph) and the config."""
    from ..model.mamba_hunet import CONFIGS, build_model, count_flops, count_parameters

    if checkpoint:
        from ..checkpoint import load_checkpoint

        net, meta = load_checkpoint(checkpoint)
    elif model in CONFIGS:
        net, meta = build_model(model), {}
    else:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(CONFIGS)}")
    flops = count_flops(net)
    table = _table(title=f"Mamba-HUNet '{net.config.name}'", show_header=False)
    table.add_row("parameters", f"{count_parameters(net):,}")
    table.add_row("GFLOPs (dense: conv/linear)", f"{flops['dense'] / 1e9:.3f}")
    table.add_row("GFLOPs (selective scan)", f"{flops['scan'] / 1e9:.3f}")
    table.add_row("GFLOPs (total)", f"{flops['total'] / 1e9:.3f}")
    for k, v in net.config.to_dict().items():
        table.add_row(k, str(v))
    if meta:
        table.add_row("sha256", meta["sha256"])
    out.print(table)


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted mask or probability map (NIfTI).")],
    truth: Annotated[Path, typer.Argument(help="Reference lesion mask (NIfTI).")],
    threshold: Annotated[float, typer.Option(help="Binarise pred above this.")] = 0.5,
    lesion_iou: Annotated[float, typer.Option(help="IoU at which a lesion counts as detected.")] = 0.25,
    brain_truth: Annotated[
        Path | None, typer.Option(help="Reference brain mask (NIfTI, > 0): adds brain-mask Dice.")
    ] = None,
    brain: Annotated[
        Path | None,
        typer.Option(help="Predicted brain mask (default: the <name>_brain.nii.gz beside PRED)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """DSC, IoU, sensitivity, specificity, HD95 (mm), lesion-wise F1 (IoU rule and overlap rule) and
    volumes of PRED vs TRUTH; with --brain-truth, brain-mask Dice."""
    from ..metrics import evaluate as run_eval
    from ..report import dumps

    if brain and not brain_truth:
        raise typer.BadParameter("--brain needs --brain-truth (the reference brain mask)")
    result = run_eval(pred, truth, threshold, lesion_iou, brain_truth, brain)
    if as_json:
        print(dumps(result))
        return
    table = _table("metric", "value")
    for k, v in result.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)


def _gather(
    data: list[Path] | None,
    data_root: Path | None,
    synthetic: int,
    synth_source: Path,
    seed: int,
    workers: int,
    quiet: bool,
) -> tuple[Any, dict[str, Any]]:
    """One pack from --data sources and --synthetic heads, with the Lesjak masks for pasting."""
    from ..data import Pack, load_data, pack_synthetic, paint_masks

    if not data and not synthetic:
        raise InputError(
            "no training data; give --data (a pack, manifest or nnU-Net folder) and/or --synthetic N"
        )
    packs, recipe = [], {"sources": [str(d) for d in data or []], "synthetic": synthetic, "seed": seed}
    with _progress(quiet) as bar:
        if data:
            task = bar.add_task("packing scans", total=None)
            packs.append(load_data(data, data_root, on_volume=lambda: bar.advance(task)))
            bar.remove_task(task)
        if synthetic:
            task = bar.add_task("synthetic heads", total=synthetic)
            parts = pack_synthetic(
                synth_source, synthetic, seed, workers, on_volume=lambda: bar.advance(task)
            )
            packs.append(Pack.from_parts(parts))
            bar.remove_task(task)
    pack = Pack.concat(packs)
    if pack.paint is None and (synth_source / "open_ms/lesion_masks_mni").is_dir():
        pack.paint = paint_masks(synth_source)
    return pack, recipe


@app.command()
def pack(
    out: Annotated[Path, typer.Argument(help="The .npz to write.")],
    data: DataSources = None,
    data_root: DataRoot = None,
    synthetic: Synthetic = 0,
    synth_source: SynthSource = Path("../shared/data"),
    seed: Annotated[int, typer.Option()] = 0,
    workers: Workers = 2,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Pack scans (and synthetic heads) into one compact training file: build it here, carry it to a GPU."""
    _logging(verbose, quiet)
    if out.suffix != ".npz":
        raise InputError(f"{out}: a pack is written as .npz; name it e.g. {out.with_suffix('.npz').name}")
    pack, _ = _gather(data, data_root, synthetic, synth_source, seed, workers, quiet)
    pack.save(out)
    if not quiet:
        kinds = {str(k): int((pack.table["kind"] == k).sum()) for k in sorted(set(pack.table["kind"]))}
        size = out.stat().st_size / 1e6
        err.print(f"wrote {out}: {len(pack)} slices of {pack.volumes} volumes {kinds}, {size:.1f} MB")


@app.command()
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for checkpoints.")] = Path("runs/light"),
    model: Annotated[str, typer.Option(help="light or paper.")] = "light",
    data: DataSources = None,
    data_root: DataRoot = None,
    synthetic: Synthetic = 0,
    synth_source: SynthSource = Path("../shared/data"),
    holdout_fold: Annotated[
        int | None, typer.Option(help="Cross-validation: leave this fold out and predict it at the end.")
    ] = None,
    synthetic_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of each batch from synthetic heads.")
    ] = 0.25,
    no_augment: Annotated[
        list[str] | None, typer.Option("--no-augment", help="Switch an augmentation off (repeatable).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="Per process (GPU).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak LR for one process's batch.")] = 2e-3,
    lr_scaling: Annotated[
        str, typer.Option(help="Peak LR with N processes: sqrt (x sqrt N), linear (x N) or none.")
    ] = "sqrt",
    gpus: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes, one GPU each (DDP: re-runs this command under torchrun); "
            "CPU ones with --device cpu.",
        ),
    ] = 1,
    crop: Annotated[int, typer.Option(help="Training patch size in pixels (256: whole slices).")] = 128,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workers: Workers = 2,
    embed_dim: Annotated[int | None, typer.Option(help="Override the config's C (smoke tests).")] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget; the LR schedule spans it.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from --out/last.safetensors.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train Mamba-HUNet (lesion + brain outputs); writes OUT/final.safetensors (+ .json), OUT/last.* for
    --resume, and with --holdout-fold OUT/holdout.npz (out-of-fold probabilities). Under torchrun (or
    with --gpus N) every process trains one shard of the global batch and rank 0 writes."""
    from dataclasses import replace

    from .. import distributed as dist
    from ..augment import AugmentConfig
    from ..model.mamba_hunet import CONFIGS
    from ..train import TrainConfig
    from ..train import train as run_train

    if not dist.is_main():
        quiet, verbose = True, False  # rank 0 speaks for the run
    _logging(verbose, quiet)
    if model not in CONFIGS:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(CONFIGS)}")
    if lr_scaling not in dist.LR_SCALING:
        raise InputError(f"unknown --lr-scaling {lr_scaling!r}; choose one of {', '.join(dist.LR_SCALING)}")
    if dist.launched() and gpus not in (1, dist.world_size()):
        raise InputError(
            f"--gpus {gpus} inside a torchrun of {dist.world_size()} processes; give one of them"
        )
    try:
        augment = AugmentConfig(
            crop=crop, synthetic_fraction=synthetic_fraction, disabled=tuple(no_augment or ())
        )
    except ValueError as e:
        raise InputError(f"{e}; check --no-augment") from e
    if gpus > 1 and not dist.launched():
        for src in data or []:
            if not src.exists():  # the commonest mistake, caught before N processes start
                raise InputError(f"{src}: no such file or folder; check --data")
        raise typer.Exit(dist.relaunch(gpus, device, sys.argv[1:]))
    mcfg = CONFIGS[model] if embed_dim is None else replace(CONFIGS[model], embed_dim=embed_dim)
    cfg = TrainConfig(
        model=model,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        lr_scaling=lr_scaling,
        holdout_fold=holdout_fold,
        seed=seed,
        device=device,
        max_minutes=max_minutes,
        augment=augment,
    )
    pack, recipe = _gather(data, data_root, synthetic, synth_source, seed, workers, quiet)
    with _progress(quiet) as bar:
        task = bar.add_task("train", total=epochs * steps_per_epoch)
        final = run_train(
            cfg,
            pack,
            out_dir,
            recipe,
            model_config=mcfg,
            resume=resume,
            progress=lambda s, n, m: bar.update(task, completed=s, description=f"train loss {m['loss']:.3f}"),
            on_epoch=None
            if quiet
            else lambda m: err.print(
                f"epoch {m['epoch']:3d}  loss {m['train_loss']:.4f}  steps {m['steps']}  {m['seconds']:.0f} s"
            ),
        )
    dist.teardown()
    if not quiet:
        meta = json.loads(final.with_suffix(".json").read_text())
        scores = meta.get("holdout_scores")
        err.print(f"final checkpoint: {final} ({meta['steps']} steps)")
        for row in scores or []:
            err.print(
                "  held out "
                + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
            )


@app.command("export")
def export_cmd(
    checkpoint: Checkpoint = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the ONNX graphs.")] = Path("export"),
    engine: Annotated[
        bool, typer.Option("--engine", help="Also build the TensorRT engine (needs TensorRT and a GPU).")
    ] = False,
    engine_dir: EngineDir = Path("engines"),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write plugin and portable ONNX graphs, FP32 and FP16, each with a JSON manifest beside it."""
    from ..exporting.exporter import export_graphs

    _logging(verbose, quiet)
    paths = export_graphs(checkpoint, out_dir, on_graph=None if quiet else lambda p: err.print(f"wrote {p}"))
    if engine:
        from ..checkpoint import default_checkpoint
        from ..engine.build import ensure_engine

        path, _ = ensure_engine("tensorrt", checkpoint or default_checkpoint(), "fp16", out_dir, engine_dir)
        paths.append(path)
    if not quiet:
        table = _table("graph", "nodes", "MB")
        for p in paths:
            nodes = json.loads(p.with_suffix(".json").read_text()).get("node_count", "")
            table.add_row(str(p), str(nodes), f"{p.stat().st_size / 1e6:.2f}")
        out.print(table)


def _required_volume(volume: Path | None) -> Path:
    """`verify` and `bench` run on a scan the user names: a made-up volume would make the task half of
    the parity check (mask Dice, lesion count) say nothing, and no scan ships with the package."""
    if volume is None:
        raise InputError("no volume to run on; pass --volume FLAIR.nii.gz (a brain FLAIR scan)")
    return volume


@app.command()
def verify(
    checkpoint: Checkpoint = None,
    volume: ScanVolume = None,
    slices: Annotated[
        int | None, typer.Option(min=1, help="Compare only this many central slices (default: all).")
    ] = None,
    export_dir: ExportDir = Path("export"),
    verbose: Verbose = False,
) -> None:
    """Hold every available backend and precision to the FP32 PyTorch reference (logits and task)."""
    from ..checkpoint import default_checkpoint
    from ..errors import ParityError
    from ..verify import verify as run_verify

    _logging(verbose)
    volume = _required_volume(volume)
    rows = run_verify(checkpoint or default_checkpoint(), volume, slices, export_dir)
    channels = list(rows[0].max_abs)  # the reference row: every output channel of the model
    brain = rows[0].brain_dice is not None
    per_channel = f" ({' / '.join(channels)})" if len(channels) > 1 else ""
    columns = ["backend", "precision", "slices", f"max |Δ|{per_channel}", f"median |Δ|{per_channel}", "Dice"]
    columns += ["brain Dice (mL)"] * brain + ["lesions", "mL", "result"]
    table = _table(*columns)
    for r in rows:
        if r.passed is None and r.note.startswith("skipped"):
            table.add_row(r.backend, r.precision, *[""] * (len(columns) - 3), escape(r.note))
            continue
        result = escape(r.note) or (
            "[green]pass[/]" if r.passed else f"[red]FAIL[/] {escape('; '.join(r.failures))}"
        )
        table.add_row(
            r.backend,
            r.precision,
            str(r.slices),
            " / ".join(f"{r.max_abs[c]:.2e}" for c in channels),
            " / ".join(f"{r.median_abs[c]:.2e}" for c in channels),
            f"{r.dice:.4f}",
            *([f"{r.brain_dice:.4f} ({r.brain_ml:.0f})"] if brain else []),
            f"{r.lesions} ({r.ref_lesions})",
            f"{r.volume_ml:.2f} ({r.ref_volume_ml:.2f})",
            result,
        )
    out.print(table)
    failed = [f"{r.backend} {r.precision}" for r in rows if r.passed is False]
    if failed:
        raise ParityError(f"parity tolerance missed by: {', '.join(failed)}")


@app.command()
def bench(
    checkpoint: Checkpoint = None,
    volume: ScanVolume = None,
    slices: Annotated[int | None, typer.Option(min=1, help="Time only this many central slices.")] = None,
    device: Annotated[
        list[str] | None, typer.Option(help="Only backends on this device (cpu, cuda); repeatable.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Slices per forward pass (default: GPU 32, CPU 8).")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs after the first; the best is shown.")] = 3,
    export_dir: ExportDir = Path("export"),
    verbose: Verbose = False,
) -> None:
    """Seconds per stage (load, preprocess, model, postprocess, write) of a whole volume, first run and
    warm, for every backend and precision available here, side by side."""
    from ..bench import bench as run_bench
    from ..bench import candidates, markdown_table
    from ..checkpoint import default_checkpoint

    _logging(verbose)
    volume = _required_volume(volume)
    ckpt = checkpoint or default_checkpoint()
    pairs = candidates(ckpt, export_dir, tuple(device or ("cpu", "cuda")))
    if not pairs:
        raise BackendError("nothing to time: no backend available for the requested device(s)")
    timings = run_bench(ckpt, volume, pairs, slices, batch_size, export_dir, repeats)
    print(markdown_table(timings))


@app.command("build-kernels")
def build_kernels(
    arch: Annotated[
        str | None, typer.Option(help="Compute capability to build for, e.g. 90 (default: this GPU's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Library file to write (default: the cache the torch backend reads).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Compile the CUDA scan kernel library with nvcc (about a minute) for the torch backend to load."""
    import time

    try:
        from ..ops.selective_scan import cuda as cuda_scan
    except ImportError as e:
        raise BackendError(f"mhunet build-kernels needs {e.name}; pip install 'mhunet-deploy[torch]'") from e
    if arch is None:
        import torch

        if not torch.cuda.is_available():
            raise BackendError(
                "no CUDA GPU visible to PyTorch to build for; pass --arch (e.g. 90 for H100/H200)"
            )
        arch = cuda_scan.gpu_arch()
    if not arch.isdigit():
        raise InputError(f"--arch {arch!r} is not a compute capability; give digits such as 90 or 87")
    t0 = time.perf_counter()
    if not quiet:
        err.print(f"building the scan kernel library for sm_{arch} with nvcc ...")
    try:
        path = cuda_scan.build_library(arch, out)
    except cuda_scan.KernelLibraryError as e:
        raise BackendError(f"kernel library not built: {e}") from e
    if not quiet:
        lines = [f"wrote {path} ({time.perf_counter() - t0:.0f} s)"]
        if out is not None:
            lines.append(f"the torch backend uses it with {cuda_scan.SCAN_LIBRARY_ENV}={path}")
        for line in lines:
            err.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def doctor(
    export_dir: ExportDir = Path("export"),
    engine_dir: EngineDir = Path("engines"),
    as_json: AsJson = False,
) -> None:
    """What this machine offers: CPU/GPU, torch, onnxruntime, TensorRT(-RTX), plugin, graphs, engines."""
    from ..doctor import run_checks, to_json

    checks = run_checks(export_dir, engine_dir)
    if as_json:
        print(to_json(checks))
    else:
        table = _table("check", "", "detail", "fix")
        marks = {"ok": "[green]ok[/]", "warn": "[yellow]--[/]", "fail": "[red]FAIL[/]"}
        for c in checks:
            table.add_row(c.name, marks[c.status], escape(c.detail), escape(c.fix))
        out.print(table)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: user errors become one line and an exit code."""
    try:
        rc = app(standalone_mode=False)
    except MhunetError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # Usage errors arrive here in non-standalone mode, as click's ClickException or (typer >= 0.2x)
        # as the same class of typer's vendored copy of click: match either by name.
        if any(c.__name__ == "ClickException" for c in type(e).__mro__):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
