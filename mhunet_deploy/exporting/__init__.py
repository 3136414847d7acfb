"""Stage 2, export: checkpoint -> four ONNX graphs (plugin/portable x fp32/fp16) with JSON manifests.

Torch and onnx side only: ``fp16`` and ``inline`` (onnx graph passes), ``torch_export`` (tracing the
model and the scan), ``exporter`` (the whole `mhunet export`). The graphs' names and manifests, which
the runtime reads on machines without torch, live in ``mhunet_deploy.graphs``.
"""
