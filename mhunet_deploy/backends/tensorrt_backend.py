"""The TensorRT backend: a cached strongly typed engine, run with cuda-python for GPU I/O (no torch).

``engine.build.ensure_engine`` builds or reuses the engine (and refuses foreign ones); this module only
deserialises it and moves slices through it in chunks of at most the profile's max batch. cupy slices
(the GPU pre-processing of ``mhunet_deploy.arrays``) are bound to the engine where they lie; numpy
slices go through device buffers of this backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import array_device, is_device_array, modules_of
from ..engine import DEFAULT_ENGINE_DIR, FLAVORS, BatchProfile, import_library
from ..engine.build import ensure_engine
from ..errors import BackendError
from ..graphs import DEFAULT_EXPORT_DIR, INPUT_NAME, OUTPUT_NAME, find_graph, output_channels
from .base import Backend


def _check(result: tuple) -> object:
    """Unwrap a cuda-python ``(err, value...)`` tuple, raising on any CUDA error."""
    from cuda.bindings import runtime as cudart

    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA error {cudart.cudaGetErrorName(err)[1].decode()}")
    return values[0] if len(values) == 1 else None


class TensorRTBackend(Backend):
    """Runs the engine of a checkpoint's fp16 (or fp32) graph on CUDA device 0."""

    def __init__(
        self,
        checkpoint: Path,
        precision: str = "fp16",
        flavor: str = "tensorrt",
        export_dir: Path = DEFAULT_EXPORT_DIR,
        engine_dir: Path = DEFAULT_ENGINE_DIR,
    ) -> None:
        path, self.sidecar = ensure_engine(flavor, checkpoint, precision, export_dir, engine_dir)
        self.engine_key = self.sidecar["key"]
        _, manifest = find_graph(checkpoint, FLAVORS[flavor].graph_kind, precision, export_dir)
        self.outputs = output_channels(manifest)
        trt = import_library(FLAVORS[flavor])  # importable: ensure_engine needed it
        from cuda.bindings import runtime as cudart  # importable: ensure_engine queried the GPU with it

        self._cudart = cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"{path}: {flavor} could not deserialise the engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.max_batch = BatchProfile(**self.sidecar["key"]["profile"]).max
        self.batch_size = self.max_batch
        io = (INPUT_NAME, OUTPUT_NAME)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in io}
        #: Per-slice shapes (C, H, W) of input and output, from the engine: the output has one
        #: channel per model output, so its buffers are sized from it, not from the input.
        self.shapes = {n: tuple(int(d) for d in self.engine.get_tensor_shape(n))[1:] for n in io}
        if self.shapes[OUTPUT_NAME][0] != len(self.outputs):
            raise BackendError(
                f"{path}: engine has {self.shapes[OUTPUT_NAME][0]} output channel(s), its graph's manifest "
                f"names {len(self.outputs)}; delete the engine to rebuild it"
            )
        self.stream = _check(cudart.cudaStreamCreate())
        self.buffers: dict[str, int] = {}
        self.precision = precision
        self.name = flavor
        self.array_device = array_device("cuda")

    def _reserve(self) -> None:
        """Device buffers for ``max_batch`` slices in and their logits out (host arrays), allocated once."""
        if self.buffers:
            return
        for name, dtype in self.dtypes.items():
            size = self.max_batch * int(np.prod(self.shapes[name])) * dtype.itemsize
            self.buffers[name] = _check(self._cudart.cudaMalloc(size))

    def predict(self, slices: Any) -> Any:
        """numpy in, numpy out (copies through this backend's buffers); cupy in, cupy out (bound in place).

        Runs on this backend's stream: a blocking stream, so it waits for cupy's work on the legacy
        default stream that made the slices, and it is synchronised before the logits are returned."""
        kinds = self._cudart.cudaMemcpyKind
        copy = self._cudart.cudaMemcpyAsync
        if slices.shape[1:] != self.shapes[INPUT_NAME]:
            raise ValueError(f"slices {slices.shape[1:]}, the engine takes {self.shapes[INPUT_NAME]}")
        on_device = is_device_array(slices)
        xp, _ = modules_of(slices)
        if not on_device:
            self._reserve()
        out = xp.empty((len(slices), *self.shapes[OUTPUT_NAME]), dtype=self.dtypes[OUTPUT_NAME])
        for i in range(0, len(slices), self.max_batch):
            x = xp.ascontiguousarray(slices[i : i + self.max_batch], dtype=self.dtypes[INPUT_NAME])
            y = out[i : i + len(x)]
            self.context.set_input_shape(INPUT_NAME, x.shape)
            if on_device:
                addresses = {INPUT_NAME: x.data.ptr, OUTPUT_NAME: y.data.ptr}
            else:
                addresses = self.buffers
                _check(
                    copy(
                        addresses[INPUT_NAME],
                        x.ctypes.data,
                        x.nbytes,
                        kinds.cudaMemcpyHostToDevice,
                        self.stream,
                    )
                )
            for name, address in addresses.items():
                self.context.set_tensor_address(name, address)
            if not self.context.execute_async_v3(self.stream):
                raise BackendError(f"{self.name}: engine execution failed")
            if not on_device:
                _check(
                    copy(
                        y.ctypes.data,
                        addresses[OUTPUT_NAME],
                        y.nbytes,
                        kinds.cudaMemcpyDeviceToHost,
                        self.stream,
                    )
                )
            _check(self._cudart.cudaStreamSynchronize(self.stream))  # also keeps x alive until done
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the device buffers and destroy the stream, then drop context, engine and runtime (in that
        order: TensorRT objects go before what they were made from)."""
        for ptr in self.buffers.values():
            _check(self._cudart.cudaFree(ptr))
        self.buffers = {}
        if self.stream is not None:
            _check(self._cudart.cudaStreamDestroy(self.stream))
            self.stream = None
        self.context = self.engine = self.runtime = None
