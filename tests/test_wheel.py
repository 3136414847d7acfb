"""The wheel as pip builds it: everything read at run time is inside it, and an install of it (not the
editable checkout) runs from another folder, so nothing it reads points back into the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mhunet_deploy"
#: Read at run time: packaged weights, the serve page, the kernel sources that `mhunet build-kernels`
#: compiles (cuda_scan keys its library by them) and the plugin contract header (the test below adds
#: every other kernel source it finds).
RUNTIME_FILES = {
    "mhunet_deploy/weights/light.safetensors",
    "mhunet_deploy/weights/light.json",
    "mhunet_deploy/serve/page.html",
    "mhunet_deploy/kernels/selective_scan.cu",
    "mhunet_deploy/kernels/selective_scan.h",
    "mhunet_deploy/kernels/selective_scan_contract.h",
}


def run(cmd: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}: rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of what the wheel is made of (setuptools writes build/ and
    *.egg-info into the folder it builds, which must not be this checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    shutil.copytree(PACKAGE, src / "mhunet_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)])
    (whl,) = out.glob("mhunet_deploy-*.whl")
    return whl


def test_wheel_holds_everything_read_at_run_time(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    kernels = {
        f"mhunet_deploy/kernels/{p.name}"
        for p in (PACKAGE / "kernels").iterdir()
        if p.suffix in (".cu", ".cpp", ".h")
    }
    missing = (RUNTIME_FILES | kernels) - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {n.split("/")[0] for n in names} == {"mhunet_deploy", "mhunet_deploy-0.1.0.dist-info"}


def test_installed_wheel_runs_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    """Installed with --no-deps into a fresh venv that sees this environment's dependencies (a .pth
    line; the editable install's own .pth is not processed there), then run from an empty folder."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (  # the lookups the package makes at run time
        "import json; from importlib import resources; import mhunet_deploy.ops.selective_scan.cuda as c; "
        "from mhunet_deploy.checkpoint import default_checkpoint; "
        "print(json.dumps({'package': c.__file__, 'kernels': str(c.source_dir() / 'selective_scan.cu'), "
        "'weights': str(default_checkpoint()), "
        "'page': str(resources.files('mhunet_deploy.serve') / 'page.html')}))"
    )
    where = json.loads(run([str(py), "-c", probe], cwd=elsewhere).stdout)
    for path in where.values():
        assert Path(path).is_file() and Path(path).resolve().is_relative_to(site.resolve()), where

    info = run([str(venv / "bin" / "mhunet"), "info"], cwd=elsewhere)
    assert "light" in info.stdout
    doctor = run([str(venv / "bin" / "mhunet"), "doctor", "--json"], cwd=elsewhere)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["packaged weights"]["status"] == "ok", checks["packaged weights"]
    assert not [c for c in checks.values() if c["status"] == "fail"], checks
