"""The build and the loading fallback chain of the compiled CPU kernels, each in a fresh subprocess.

prebuilt ``rnnfast._C`` -> just-in-time build of csrc/cpu -> one warning and the next backend.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in the subprocess: the GRU through `auto` must match the reference, whichever backend serves it.
CHECK_GRU = """
import warnings, torch, rnnfast
from rnnfast import _ext, backends, functional as F
from rnnfast.ops.recurrence import reference as ref
torch.manual_seed(0)
gi, h0 = torch.randn(6, 3, 12, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
w, b = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        y, h = F.gru(gi, h0, w, b, lengths=torch.tensor([6, 2, 0]), reverse=True)
        y_ref, h_ref = ref.gru(gi, h0, w, b, torch.tensor([6, 2, 0]), True)
        assert (y - y_ref).abs().max() < 1e-12 and (h - h_ref).abs().max() < 1e-12
ok, why = _ext.status()
name = backends.resolve("recurrence", torch.device("cpu"), torch.float64, {}, "auto")
msgs = [str(w.message) for w in caught if "C++ CPU kernels" in str(w.message)]
print("STATUS", ok, "|", why)
print("BACKEND", name)
print("WARNINGS", len(msgs))
"""


def _run(code: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 600) -> str:
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = str(cwd)
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"subprocess failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _field(out: str, key: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith(key + " "))
    return line[len(key) + 1 :]


def test_import_does_not_load_the_kernels():
    out = _run(
        "import torch, rnnfast\nfrom rnnfast import _ext\n"
        "print('LOADED', _ext._state is not None or hasattr(torch.ops.rnnfast_C, 'recurrence_fwd'))",
        {"RNNFAST_NO_JIT": "1"},
    )
    assert _field(out, "LOADED") == "False"


def test_no_kernels_warns_once_and_auto_falls_back(tmp_path):
    """No prebuilt module and no JIT: a single warning, status() False with the reason, reference serves."""
    out = _run(
        CHECK_GRU,
        {"RNNFAST_CSRC_DIR": str(ROOT / "csrc"), "RNNFAST_NO_JIT": "1", "RNNFAST_CACHE_DIR": str(tmp_path)},
    )
    assert _field(out, "STATUS").startswith("False | ") and "RNNFAST_NO_JIT" in _field(out, "STATUS")
    assert _field(out, "BACKEND") == "reference"
    assert _field(out, "WARNINGS") == "1"


def test_broken_sources_warn_once_and_auto_falls_back(tmp_path):
    """A JIT build that fails (a compile error) is reported once; results still come from the reference."""
    csrc = tmp_path / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "cpu" / "broken.cpp").write_text("this is not C++;\n")
    env = {
        "RNNFAST_CSRC_DIR": str(csrc),
        "RNNFAST_CACHE_DIR": str(tmp_path / "cache"),
    }
    out = _run(CHECK_GRU, env)
    status = _field(out, "STATUS")
    assert status.startswith("False | ") and "JIT build" in status, status
    assert _field(out, "BACKEND") == "reference"
    assert _field(out, "WARNINGS") == "1"
    assert "rnnfast: building CPU kernels" in out


@pytest.mark.slow
def test_jit_build_from_sources(tmp_path):
    """Without the prebuilt module the kernels are built into the cache dir, then reused without a build.
    Two processes start at once: the file lock makes one build and the other wait and load it."""
    env = {"RNNFAST_CSRC_DIR": str(ROOT / "csrc"), "RNNFAST_CACHE_DIR": str(tmp_path)}
    full = dict(os.environ, **env, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHECK_GRU],
            cwd=ROOT,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=900)
        assert p.returncode == 0, f"subprocess failed:\n{so}\n{se}"
        outs.append(so + se)
    for out in outs:
        assert _field(out, "STATUS").startswith("True | C++ CPU kernels (JIT-built"), out
        assert _field(out, "BACKEND") == "cpu"
        assert _field(out, "WARNINGS") == "0"
    assert sum("rnnfast: building CPU kernels" in out for out in outs) == 1
    assert len(list(tmp_path.glob("cpu-*/rnnfast_cpu_*.so"))) == 1
    again = _run(CHECK_GRU, env)
    assert "rnnfast: building CPU kernels" not in again, again
    assert _field(again, "BACKEND") == "cpu"


@pytest.mark.slow
def test_setup_py_builds_importable_extension(tmp_path):
    """``setup.py build_ext --inplace`` (what ``pip install --no-build-isolation`` runs) on a copy of the
    project produces an importable ``rnnfast._C`` that the loader picks first."""
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    shutil.copytree(
        ROOT / "rnnfast", tmp_path / "rnnfast", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    (tmp_path / "README.md").write_text("rnnfast\n")
    env = dict(os.environ, RNNFAST_SKIP_CUDA_BUILD="1")
    r = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, f"build failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert list((tmp_path / "rnnfast").glob("_C*.so")), "no rnnfast/_C*.so produced"
    out = _run(CHECK_GRU, {"RNNFAST_NO_JIT": "1"}, cwd=tmp_path)
    assert _field(out, "STATUS") == "True | C++ CPU kernels (prebuilt rnnfast._C)"
    assert _field(out, "BACKEND") == "cpu"


def test_environment_variables_read_are_the_documented_few():
    """The package and its kernels read only these variables (choices are flags and a cost model, not
    environment switches); every one of them is named in the README."""
    pattern = re.compile(r'(?:getenv\(|environ(?:\.get)?[(\[]\s*|_flag\()"(RNNFAST_[A-Z0-9_]+)"')
    files = [*ROOT.joinpath("rnnfast").rglob("*.py"), *ROOT.joinpath("csrc").rglob("*.[ch]*")]
    read = {m for f in files for m in pattern.findall(f.read_text(errors="replace"))}
    allowed = {"RNNFAST_BACKEND", "RNNFAST_AUTOTUNE", "RNNFAST_CACHE_DIR", "RNNFAST_NO_JIT"}
    allowed |= {"RNNFAST_CSRC_DIR", "RNNFAST_DEBUG_POISON"}  # development: other sources, poisoned outputs
    assert {"RNNFAST_BACKEND", "RNNFAST_AUTOTUNE", "RNNFAST_DEBUG_POISON"} <= read, read  # pattern works
    assert read <= allowed, sorted(read - allowed)
    readme = ROOT.joinpath("README.md").read_text()
    assert all(name in readme for name in read), sorted(n for n in read if n not in readme)
