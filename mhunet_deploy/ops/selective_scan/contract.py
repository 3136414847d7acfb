"""The SelectiveScan op contract: the one definition every other part imports.

The ONNX exporter, the ONNX reference-evaluator op, the Polygraphy plugin reference, the C++ TensorRT
plugin (through the generated header ``mhunet_deploy/kernels/selective_scan_contract.h``) and the
tests all read these constants, so a drift between them fails a test instead of a deployment.
No torch here: the runtime side imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass

OP_TYPE = "SelectiveScan"
DOMAIN = "mhunet"
#: The plugin's name and namespace are the node's op type and domain; the node also names the plugin
#: version and namespace in ``PARSER_ATTRIBUTES``, which TensorRT's ONNX parser reads.
PLUGIN_NAME = OP_TYPE
#: Bumped with every change of the op's inputs, outputs or types, so that a graph or engine made for
#: another version fails to find its plugin instead of running against it. Version 2: y is float32
#: whatever the data type (version 1: y had u's type).
PLUGIN_VERSION = "2"
PLUGIN_NAMESPACE = DOMAIN
#: Version of the ``mhunet`` opset that ONNX graphs declare (bumped with ``PLUGIN_VERSION``).
DOMAIN_VERSION = 2


@dataclass(frozen=True)
class Port:
    """One input or output of the op: name, symbolic shape, whether it is always fp32, and whether a
    node may leave it out (an empty input name in ONNX)."""

    name: str
    shape: tuple[str, ...]
    fp32_only: bool
    optional: bool = False


#: Input order is part of the contract (ONNX node inputs, plugin input indices).
INPUTS: tuple[Port, ...] = (
    Port("u", ("B", "D", "L"), False),
    Port("delta", ("B", "D", "L"), False),
    Port("A", ("D", "N"), True),
    Port("B", ("B", "G", "N", "L"), False),
    Port("C", ("B", "G", "N", "L"), False),
    Port("D", ("D",), True),
    Port("delta_bias", ("D",), True, optional=True),
)
#: y is always fp32: with the trained weights it reaches ~3.5e5, past fp16's 65504 (ARCHITECTURE.md,
#: Precision), so FP16 graphs feed the op fp16 data and get fp32 y back.
OUTPUTS: tuple[Port, ...] = (Port("y", ("B", "D", "L"), True),)

#: Attributes and their defaults; all are ints (ONNX INT, TensorRT PluginField kINT32).
ATTRIBUTES: dict[str, int] = {"delta_softplus": 1}

#: String attributes every node carries for TensorRT's ONNX parser, which looks the plugin up by
#: (op_type, plugin_version, plugin_namespace), with version "1" and namespace "" when a node has none
#: (then the node domain, in later parsers); they are not plugin fields. So a graph of another version
#: (one without them is version 1) finds no plugin instead of running against this one.
PARSER_ATTRIBUTES: dict[str, str] = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}

#: softplus(x) = x above this threshold, as in torch.nn.functional.softplus and mamba-ssm.
SOFTPLUS_THRESHOLD = 20.0

#: Element types the data inputs (u, delta, B, C) may take; the four share one type. y is float32 for
#: either (``OUTPUTS``), and A, D, delta_bias are float32 (``INPUTS``).
DATA_DTYPES = ("float32", "float16")

INPUT_INDEX = {p.name: i for i, p in enumerate(INPUTS)}


def c_header() -> str:
    """Render the C++ header that the plugin compiles against, so C++ cannot drift from Python."""
    lines = [
        "// Generated from mhunet_deploy/ops/selective_scan/contract.py by",
        "// `python -m mhunet_deploy.ops.selective_scan.contract`. Do not edit.",
        "#pragma once",
        "namespace mhunet { namespace contract {",
        f'constexpr char const* kPluginName = "{PLUGIN_NAME}";',
        f'constexpr char const* kPluginVersion = "{PLUGIN_VERSION}";',
        f'constexpr char const* kPluginNamespace = "{PLUGIN_NAMESPACE}";',
        f"constexpr int kNbInputs = {len(INPUTS)};",
        f"constexpr int kNbOutputs = {len(OUTPUTS)};",
    ]
    for p in INPUTS:
        lines.append(f"constexpr int kInput_{p.name} = {INPUT_INDEX[p.name]};")
    for name, default in ATTRIBUTES.items():
        lines.append(f'constexpr char const* kAttr_{name} = "{name}";')
        lines.append(f"constexpr int kDefault_{name} = {default};")
    lines.append(f"constexpr float kSoftplusThreshold = {SOFTPLUS_THRESHOLD}f;")
    lines.append("}}  // namespace mhunet::contract")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(c_header(), end="")
