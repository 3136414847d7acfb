"""What every backend offers the pipeline: normalised slices in, one logit channel per model output out.

A backend is loaded (ready to run) when constructed and holds its runtime's resources until
``close()``: use it as ``with load_backend(...) as backend:`` so device memory, streams and sessions are
freed when the caller is done, not whenever the garbage collector gets to it (Polygraphy's runners
pair activate/deactivate the same way). Backends inherit ``__enter__``/``__exit__`` from this class.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

B = TypeVar("B", bound="Backend")


class Backend(Protocol):
    """A loaded model on one runtime. ``name`` is what reports and ``mhunet verify`` print."""

    name: str
    precision: str
    #: Names of the logit channels ``predict`` returns, in order: "lesion" first, then "brain" for a
    #: model with a brain-extraction output (ModelConfig.outputs; the export manifest's output_channels).
    outputs: tuple[str, ...]
    #: Slices per ``predict`` call that suits the runtime: a GPU wants large batches (32 slices, BENCHMARKS.md
    #: section 5), a CPU gains nothing past ~8.
    batch_size: int
    #: The sidecar key of the engine that runs (TensorRT, TensorRT-RTX; see engine/cache.py), copied into
    #: each report so a result can be traced to its engine; None for backends without an engine.
    engine_key: dict[str, Any] | None
    #: Where ``predict`` takes arrays without a copy: "cpu" (numpy) or "cuda" (cupy, when the model runs
    #: on a GPU and cupy works there: ``mhunet_deploy.arrays.array_device``). The pipeline runs the pre-
    #: and post-processing there too.
    array_device: str

    def predict(self, slices: Any) -> Any:
        """Map float32 slices (S, 1, 256, 256) to float32 logits (S, len(outputs), 256, 256), returned
        where the slices are (numpy in, numpy out; cupy in, cupy out)."""
        ...

    def close(self) -> None:
        """Free what the runtime holds (the model, sessions, device buffers, streams); calling it again
        does nothing. A closed backend predicts no more."""
        ...

    def __enter__(self: B) -> B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
