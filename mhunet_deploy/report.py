"""The lesion report of `mhunet infer`: one JSON document (+ a CSV of its lesions) per input volume.

The per-lesion rows come from :func:`mhunet_deploy.postprocess.lesion_table` unchanged (id, voxels,
volume_ml, centroid_mm as world x, y, z, bbox); this module only frames them with provenance so a
reader can tell which model, backend and tool version produced the numbers.

JSON is strict (RFC 8259: no ``NaN``/``Infinity`` tokens, which many parsers reject). A non-finite
float is written as the string ``"inf"``, ``"-inf"`` or ``"nan"`` (e.g. HD95 when one mask is empty);
:func:`read_json` turns those strings back into floats. ``null`` is not used for them because it would
not tell "infinitely far" from "missing".
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .files import atomic_write

DISCLAIMER = "Research use only - not for clinical use"
#: Bumped when a key changes meaning or disappears, so downstream parsers can refuse what they don't know.
REPORT_VERSION = 1
#: The bbox is the inclusive voxel index range of :func:`mhunet_deploy.postprocess.lesion_table`.
CSV_COLUMNS = (
    "id",
    "voxels",
    "volume_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "bbox_min_i",
    "bbox_min_j",
    "bbox_min_k",
    "bbox_max_i",
    "bbox_max_j",
    "bbox_max_k",
)
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
#: The brain entry of a report made without a brain stage.
NO_BRAIN = {"source": None, "volume_ml": None, "reason": "no brain stage ran", "lesion_voxels_outside": None}


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, tuples and paths made plain, and non-finite floats as strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON text of ``obj`` under the non-finite rule of the module docstring."""
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


def _restore_nonfinite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _restore_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_nonfinite(v) for v in obj]
    if isinstance(obj, str):
        return _NONFINITE.get(obj, obj)
    return obj


@dataclass
class LesionReport:
    """Everything one `mhunet infer` run says about one input; :meth:`to_dict` is the JSON layout."""

    input_path: str | Path
    shape: Sequence[int]
    zooms: Sequence[float]
    lesions: list[dict[str, Any]]
    backend: str
    precision: str
    #: At least ``name`` and ``sha256`` (of the weights); extra keys (e.g. ``checkpoint``) are kept.
    model: Mapping[str, Any]
    #: The sidecar key of the engine that ran (TensorRT backends), else None.
    engine_key: Mapping[str, Any] | None = None
    #: The brain mask: source ("model", "user", or None), volume_ml, reason (why there is none),
    #: lesion_voxels_outside (above-threshold lesion voxels outside it, dropped); see brain.brain_entry.
    brain: Mapping[str, Any] = field(default_factory=lambda: dict(NO_BRAIN))
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    tool_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        missing = {"name", "sha256"} - set(self.model)
        if missing:
            raise ValueError(f"model info lacks {sorted(missing)}")

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    @property
    def total_volume_ml(self) -> float:
        return float(sum(row["volume_ml"] for row in self.lesions))

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready types (see :func:`jsonable`)."""
        return jsonable(
            {
                "report_version": REPORT_VERSION,
                "tool_version": self.tool_version,
                "created": self.created,
                "disclaimer": DISCLAIMER,
                "input": {"path": str(self.input_path), "shape": self.shape, "zooms": self.zooms},
                "model": dict(self.model),
                "backend": self.backend,
                "precision": self.precision,
                "engine_key": self.engine_key,
                "lesion_count": self.lesion_count,
                "total_volume_ml": self.total_volume_ml,
                "lesions": self.lesions,
                "brain": dict(self.brain),
                "timings": self.timings,
                "warnings": self.warnings,
                "outputs": self.outputs,
            }
        )


def build_report(
    *,
    input_path: str | Path,
    shape: Sequence[int],
    zooms: Sequence[float],
    lesions: list[dict[str, Any]],
    backend: str,
    precision: str,
    model: Mapping[str, Any],
    engine_key: Mapping[str, Any] | None = None,
    brain: Mapping[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    warnings: list[str] | None = None,
    outputs: dict[str, str] | None = None,
    version: str = __version__,
) -> dict[str, Any]:
    """The report dict in one call (what the pipeline needs); see :class:`LesionReport`."""
    return LesionReport(
        input_path=input_path,
        shape=shape,
        zooms=zooms,
        lesions=lesions,
        backend=backend,
        precision=precision,
        model=model,
        engine_key=engine_key,
        brain=dict(brain or NO_BRAIN),
        timings=dict(timings or {}),
        warnings=list(warnings or []),
        outputs=dict(outputs or {}),
        tool_version=version,
    ).to_dict()


def _as_dict(report: LesionReport | Mapping[str, Any]) -> Mapping[str, Any]:
    return report.to_dict() if isinstance(report, LesionReport) else report


def write_json(report: LesionReport | Mapping[str, Any], path: str | Path) -> None:
    """Write a report (or any dict, e.g. metrics) as strict JSON, atomically."""
    data = (dumps(_as_dict(report)) + "\n").encode("utf-8")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_json(path: str | Path) -> Any:
    """Read a file written by :func:`write_json`, turning ``"inf"``/``"-inf"``/``"nan"`` back into floats."""
    return _restore_nonfinite(json.loads(Path(path).read_text(encoding="utf-8")))


def csv_rows(report: LesionReport | Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per lesion: centroid split into world x, y, z (mm), bbox into voxel min/max i, j, k."""
    rows = []
    for lesion in _as_dict(report)["lesions"]:
        row = {key: lesion[key] for key in ("id", "voxels", "volume_ml")}
        row.update(
            zip(("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), lesion["centroid_mm"], strict=True)
        )
        for end in ("min", "max"):
            row.update(zip((f"bbox_{end}_{a}" for a in "ijk"), lesion["bbox"][end], strict=True))
        rows.append(row)
    return rows


def write_csv(report: LesionReport | Mapping[str, Any], path: str | Path) -> None:
    """Write the lesion table as CSV, atomically; the header is written even when there are no lesions."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(csv_rows(report))
    data = text.getvalue().encode("utf-8")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
