"""Stage 2, export: checkpoint -> four ONNX graphs (plugin/portable x fp32/fp16) with JSON manifests.

Split by what each module needs, because the runtime side reads manifests on machines without torch:
``manifest`` (json only: names, hashes, lookup), ``fp16`` and ``inline`` (onnx graph passes),
``torch_export`` (tracing the model and the scan), ``exporter`` (the whole `mhunet export`).
This ``__init__`` imports nothing so that ``exporting.manifest`` stays torch-free.
"""
