"""`mhunet doctor` reports every part, and flags a foreign engine with a fix-it line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys


def doctor(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "doctor", "--json", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_doctor_reports_each_part(tmp_path) -> None:
    res = doctor("--export-dir", str(tmp_path), "--engine-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    expected = {"python", "packaged weights", "torch", "onnxruntime", "tensorrt", "tensorrt-rtx"}
    assert expected <= set(checks)
    assert checks["packaged weights"]["status"] == "ok"
    assert checks["onnx graphs"]["status"] == "warn" and "mhunet export" in checks["onnx graphs"]["fix"]
    for c in checks.values():
        assert c["status"] == "ok" or c["fix"], c


def test_doctor_flags_engine_of_another_library_version(tmp_path) -> None:
    engine = tmp_path / "light_portable_fp16.tensorrt-rtx.engine"
    engine.write_bytes(b"\0" * 16)
    key = {"library": "tensorrt-rtx", "library_version": "0.0.1", "precision": "fp16", "target": "SM86"}
    engine.with_suffix(".json").write_text(json.dumps({"key": key}))
    res = doctor("--engine-dir", str(tmp_path))
    row = next(c for c in json.loads(res.stdout) if c["name"] == f"engine {engine.name}")
    if importlib.util.find_spec("tensorrt_rtx"):
        assert row["status"] == "fail" and "0.0.1" in row["detail"] and res.returncode == 1
    else:
        assert row["status"] == "warn" and "not installed" in row["detail"]


def test_doctor_fails_a_plugin_library_that_is_not_ours(tmp_path) -> None:
    import _ctypes
    import os

    env = {**os.environ, "MHUNET_PLUGIN_LIB": _ctypes.__file__}
    cmd = [sys.executable, "-m", "mhunet_deploy.cli", "doctor", "--json", "--engine-dir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    row = next(c for c in json.loads(res.stdout) if c["name"] == "plugin library")
    assert res.returncode == 1 and row["status"] == "fail", row
    assert "is not the mhunet plugin library" in row["detail"] and "cmake" in row["fix"]
