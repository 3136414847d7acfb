# ruff: noqa: E501, E741
"""The native code compiles where no GPU is: the CUDA kernel with nvcc (one arch, to keep CI short), the
contract header matches mhunet_deploy.ops.selective_scan.contract, and, when TensorRT headers are present under
third_party/TensorRT/include, the plugin library and its harness build and the harness's host-side checks
(creator, clone, serialization, shapes, formats) pass (enqueue checks skip without a GPU)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mhunet_deploy.ops.selective_scan import contract

REPO = Path(__file__).resolve().parent.parent
SCAN = REPO / "mhunet_deploy" / "kernels"
TRT_INC = REPO / "third_party" / "TensorRT" / "include"
NVCC = shutil.which("nvcc")


def test_contract_header_is_generated_text():
    committed = (SCAN / "selective_scan_contract.h").read_text()
    assert committed == contract.c_header(), (
        "mhunet_deploy/kernels/selective_scan_contract.h is stale: regenerate it with "
        "`python -m mhunet_deploy.ops.selective_scan.contract > mhunet_deploy/kernels/selective_scan_contract.h`"
    )


def _c_value(text: str) -> str | int | float:
    """A C++ literal as Python: "s" -> s, 3 -> 3, 20.0f -> 20.0."""
    text = text.strip()
    if text.startswith('"'):
        return text.strip('"')
    return float(text.rstrip("f")) if "." in text else int(text)


def _constexprs(src: str) -> dict[str, str | int | float]:
    """Every ``constexpr ... kName = <literal>;`` in ``src``: name -> value."""
    pattern = r'constexpr [\w :*]+? (k\w+) = ("[^"]*"|-?[\d.]+f?);'
    return {m[1]: _c_value(m[2]) for m in re.finditer(pattern, src)}


def _table(src: str, name: str) -> list[str | int | float]:
    """The values of the brace-initialised array ``name`` in ``src``."""
    found = re.search(rf"\b{name}\[[^]]*\]\s*=\s*\{{([^}}]*)\}}", src)
    assert found, f"no table {name}[] in the plugin source; update this test with it"
    return [_c_value(v) for v in found[1].split(",")]


def test_plugin_uses_contract_constants():
    """The values the native code compiles with are contract.py's: the generated header's constants,
    and the plugin's and kernel's own tables (input ranks and names, fp32-only inputs, softplus
    threshold), parsed from the sources and compared value by value."""
    src = (SCAN / "selective_scan_plugin.cpp").read_text()
    for name in ("kPluginName", "kPluginVersion", "kPluginNamespace", "kAttr_delta_softplus"):
        assert f"ct::{name}" in src
    assert '"SelectiveScan"' not in src and '"mhunet"' not in src, (
        "plugin must not hard-code contract strings"
    )
    header = _constexprs((SCAN / "selective_scan_contract.h").read_text())
    assert header == {
        "kPluginName": contract.PLUGIN_NAME,
        "kPluginVersion": contract.PLUGIN_VERSION,
        "kPluginNamespace": contract.PLUGIN_NAMESPACE,
        "kNbInputs": len(contract.INPUTS),
        "kNbOutputs": len(contract.OUTPUTS),
        **{f"kInput_{p.name}": i for i, p in enumerate(contract.INPUTS)},
        **{
            k: v for a, d in contract.ATTRIBUTES.items() for k, v in ((f"kAttr_{a}", a), (f"kDefault_{a}", d))
        },
        "kSoftplusThreshold": contract.SOFTPLUS_THRESHOLD,
    }
    assert _table(src, "ranks") == [len(p.shape) for p in contract.INPUTS]
    assert _table(src, "names") == [p.name for p in contract.INPUTS]
    fp32_only = re.search(r"bool isFp32Only\(int32_t index\)\s*\{([^}]*)\}", src)
    assert fp32_only, "no isFp32Only() in the plugin source; update this test with it"
    assert set(re.findall(r"ct::kInput_(\w+)", fp32_only[1])) == {
        p.name for p in contract.INPUTS if p.fp32_only
    }
    kernel = _constexprs((SCAN / "selective_scan.cu").read_text())
    assert kernel["kSoftplusThreshold"] == contract.SOFTPLUS_THRESHOLD


def test_plugin_output_type_is_the_contracts():
    """Contract v2: y is FLOAT whatever u's type (``OUTPUTS``), so getOutputDataTypes must write kFLOAT,
    not copy an input's type (v1: y had u's type)."""
    src = (SCAN / "selective_scan_plugin.cpp").read_text()
    body = re.search(r"::getOutputDataTypes\([^)]*\)[^{]*\{(.*?)\n\}", src, re.S)
    assert body, "no getOutputDataTypes() in the plugin source; update this test with it"
    assigned = re.findall(r"outputTypes\[[^\]]+\]\s*=\s*([^;]+);", body[1])
    assert len(assigned) == len(contract.OUTPUTS) and all(p.fp32_only for p in contract.OUTPUTS)
    assert [a.strip() for a in assigned] == ["DataType::kFLOAT"] * len(contract.OUTPUTS), assigned


def _check_resource_usage(report: str) -> None:
    assert "spill" in report
    for line in report.splitlines():
        if "bytes spill" in line:
            assert "0 bytes spill stores, 0 bytes spill loads" in line, f"register spills: {line}"
        if "stack frame" in line:
            assert line.strip().startswith("0 bytes stack frame"), f"local memory use: {line}"


@pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="nvcc or cmake not found")
def test_kernel_only_cmake_build_without_tensorrt_headers(tmp_path):
    """The kernel library the torch backend loads builds with no TensorRT anywhere: no register spills,
    and it carries the key of the package's sources (so cuda_scan accepts it)."""
    from mhunet_deploy.ops.selective_scan.cuda import ScanLibrary, source_sha256

    t0 = time.time()
    args = ["-DMHUNET_KERNEL_ONLY=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DTENSORRT_INCLUDE_DIR=/nonexistent"]
    cfg = subprocess.run(
        ["cmake", "-S", str(REPO / "plugins"), "-B", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    bld = subprocess.run(
        ["cmake", "--build", str(tmp_path), "-j", "2"], capture_output=True, text=True, timeout=1200
    )
    print(f"cmake kernel-only build (sm_90): {time.time() - t0:.1f}s")
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    _check_resource_usage(bld.stdout + bld.stderr)
    assert (tmp_path / "libmhunet_scan.a").is_file()
    lib = ScanLibrary(tmp_path / "libmhunet_scan.so")  # loads without a GPU: nothing runs
    assert lib.source_sha256 == source_sha256()
    # the default of every stage shape of both model configs (the scan's D is 4 x 2C) is a compiled one,
    # and both families are in use where the sweep put them (NOTES.md, "Default configuration")
    defaults = {
        lib.default_config(b, 4 * 2 * c * 2**s, 4096 // 4**s, 4, fp16)
        for c in (32, 96)
        for s in range(4)
        for b in (8, 32)
        for fp16 in (True, False)
    }
    assert defaults <= set(lib.configs()), defaults - set(lib.configs())
    assert {d[5] > 0 for d in defaults} == {True, False}
    assert lib.default_config(32, 6144, 64, 4, True)[5] == 32  # paper stage 4 at batch 32: sequential
    assert lib.default_config(8, 256, 4096, 4, True)[5] == 0  # light stage 1 at batch 8: chunked
    # the sequential family (seg > 0): a few configs, the fields the launcher matches, segments that hold
    # the predecessor's record (N + 1 <= 17 floats)
    seq = [c for c in lib.configs() if c[5] > 0]
    assert 1 <= len(seq) <= 8 and all(c[1:5] == (1, 1, 1, 4) and c[5] >= 17 and c[6] == 1 for c in seq), seq
    # double buffers (bufs = 2): one warp per channel, B/C rows in the input dtype (NOTES.md, "Staging and
    # prefetch"); the fp16 defaults use them
    two = [c for c in lib.configs() if c[6] == 2]
    assert two and all(c[3] == 1 and c[5] == 0 for c in two), two
    assert lib.default_config(8, 256, 4096, 4, True)[4:] == (2, 0, 2)


@pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="nvcc or cmake not found")
@pytest.mark.skipif(
    not (TRT_INC / "NvInferRuntime.h").exists(),
    reason="TensorRT headers not present at third_party/TensorRT/include (fetch them; see mhunet_deploy/kernels/NOTES.md)",
)
def test_plugin_library_and_harness_build(tmp_path):
    t0 = time.time()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO / "plugins"),
            "-B",
            str(tmp_path),
            *gen,
            "-DCMAKE_CUDA_ARCHITECTURES=90",
            f"-DTENSORRT_INCLUDE_DIR={TRT_INC}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    bld = subprocess.run(
        ["cmake", "--build", str(tmp_path), "-j", "2"], capture_output=True, text=True, timeout=1200
    )
    print(f"cmake plugin + harness build (sm_90): {time.time() - t0:.1f}s")
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    lib = tmp_path / "libmhunet_plugins.so"
    assert lib.exists()
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert "getCreators" in syms and "setLoggerFinder" in syms
    assert "nvinfer" not in subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    run = subprocess.run(
        [str(tmp_path / "mhunet_plugin_harness")], capture_output=True, text=True, timeout=600
    )
    out = run.stdout + run.stderr
    assert "FAIL" not in out.replace("HARNESS FAIL", "") and run.returncode == 0, out[-4000:]
