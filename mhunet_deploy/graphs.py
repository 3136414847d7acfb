"""Exported graph names, their JSON manifests, and finding the right graph for a checkpoint.

Torch-free and onnx-free: the onnxruntime and TensorRT backends use this to refuse a graph that was
exported from other weights, or whose file changed after export, or a plugin graph of another
SelectiveScan contract version, before they spend time loading it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import read_meta
from .errors import BackendError
from .files import atomic_write, read_tagged_json, sha256_file
from .ops.selective_scan import contract

FORMAT = "mhunet-onnx/1"
KINDS = ("plugin", "portable")
PRECISIONS = ("fp32", "fp16")
#: Where `mhunet export` writes and the backends look, relative to the working directory.
DEFAULT_EXPORT_DIR = Path("export")
INPUT_NAME = "slices"
OUTPUT_NAME = "logits"


def output_channels(manifest: dict[str, Any]) -> tuple[str, ...]:
    """Names of the logits' channels, in order ("lesion" first, then e.g. "brain").

    Manifests written before the field existed come from lesion-only exports (one channel).
    """
    names = tuple(manifest.get("io", {}).get("output_channels", ("lesion",)))
    shape = manifest["outputs"][0]["shape"]
    if shape[1] != len(names):
        raise BackendError(
            f"{manifest['graph']}: manifest names {len(names)} output channel(s) but the graph has "
            f"{shape[1]}; re-run `mhunet export`"
        )
    return names


def graph_filename(model_name: str, kind: str, precision: str) -> str:
    """``<model-name>_<kind>_<precision>.onnx``: one file per graph, the manifest beside it."""
    if kind not in KINDS or precision not in PRECISIONS:
        raise ValueError(f"unknown graph kind/precision {kind}/{precision}")
    return f"{model_name}_{kind}_{precision}.onnx"


def manifest_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def write_manifest(onnx_path: Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically, after the graph itself, so a manifest never names a missing file."""
    path = manifest_path(onnx_path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return path


def read_manifest(onnx_path: Path) -> dict[str, Any]:
    """Read and check a graph's manifest; the graph must not have changed since it was written."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendError(f"{onnx_path}: no exported graph; run `mhunet export` first")
    manifest = read_tagged_json(
        manifest_path(onnx_path), FORMAT, "graph manifest", "re-run `mhunet export`", BackendError
    )
    if sha256_file(onnx_path) != manifest.get("onnx_sha256"):
        raise BackendError(f"{onnx_path}: file changed since export (sha256 differs); re-run `mhunet export`")
    return manifest


def find_graph(
    checkpoint: Path,
    kind: str,
    precision: str,
    export_dir: Path = DEFAULT_EXPORT_DIR,
    onnx_path: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The exported graph of ``checkpoint`` (or ``onnx_path``), checked to belong to these weights.

    Hashes the weights file rather than trusting its sidecar, so weights swapped in place are caught.
    """
    meta = read_meta(checkpoint)
    name = meta["config"]["name"]
    path = Path(onnx_path) if onnx_path else Path(export_dir) / graph_filename(name, kind, precision)
    if not path.is_file():
        raise BackendError(
            f"{path}: no {kind} {precision} graph for model {name!r}; "
            f"run `mhunet export --checkpoint {checkpoint}` first"
        )
    manifest = read_manifest(path)
    if (manifest["kind"], manifest["precision"]) != (kind, precision):
        raise BackendError(
            f"{path}: is a {manifest['kind']} {manifest['precision']} graph; "
            f"this backend needs {kind} {precision}"
        )
    if manifest["checkpoint"]["sha256"] != sha256_file(checkpoint):
        raise BackendError(
            f"{path}: exported from other weights than {checkpoint}; "
            f"run `mhunet export --checkpoint {checkpoint}` again"
        )
    version = manifest.get("contract", {}).get("version")
    if kind == "plugin" and version != contract.DOMAIN_VERSION:
        raise BackendError(
            f"{path}: its SelectiveScan nodes follow contract version {version}, this package's plugin "
            f"version {contract.DOMAIN_VERSION}; run `mhunet export --checkpoint {checkpoint}` again"
        )
    return path, manifest
