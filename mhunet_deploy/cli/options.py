"""The options several `mhunet` commands share, each declared once (typer ``Annotated`` aliases).

A command takes one as ``checkpoint: Checkpoint = None``; its default stays in the command's signature,
where typer reads it. Options of one command only are declared with that command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Model and runtime: infer, serve, export, verify, bench, doctor.
Checkpoint = Annotated[
    Path | None, typer.Option(help="Model .safetensors (default: packaged light weights).")
]
ExportDir = Annotated[
    Path, typer.Option(help="Where `mhunet export` wrote the graphs (onnxruntime, tensorrt).")
]
EngineDir = Annotated[Path, typer.Option(help="Engine cache folder (tensorrt backends).")]
BackendName = Annotated[str, typer.Option(help="auto, torch, onnxruntime or tensorrt.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda (torch backend).")]
Precision = Annotated[str, typer.Option(help="fp32 or fp16.")]
#: The scan `verify` and `bench` run on.
ScanVolume = Annotated[Path | None, typer.Option(help="A brain FLAIR NIfTI to run on (required).")]

# Output volume: every command that prints progress or logs.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Errors only: no progress, notes or tables.")]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Log each step on stderr: geometry, backend choice, engine cache, timings."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# Training data: pack, train.
DataSources = Annotated[
    list[Path] | None,
    typer.Option(
        "--data",
        help="Training data, repeatable: a pack (.npz from mhunet pack), a manifest (.json, see "
        "manifests/README.md) or an nnU-Net folder (imagesTr/, labelsTr/).",
    ),
]
DataRoot = Annotated[
    Path | None, typer.Option(help="Folder that a manifest's relative paths start from (default: its root).")
]
SynthSource = Annotated[
    Path, typer.Option(help="Folder with mni152/ and open_ms/ (synthetic heads, lesion masks to paste).")
]
Synthetic = Annotated[int, typer.Option(min=0, help="Synthetic heads to generate and mix in.")]
Workers = Annotated[int, typer.Option(min=1, help="Processes for data preparation.")]
