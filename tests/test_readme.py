"""The README stays true: its results table is generated from the committed results files, its test
command is the one CI runs, and its quick-start install is CI's and gives the main job's plot."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_results_table_matches_committed_results():
    r = subprocess.run(
        [sys.executable, "scripts/results_table.py", "--check", "README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"README results table is stale: {r.stdout}{r.stderr}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index("<!-- test-command:start -->"), readme.index("<!-- test-command:end -->")
    block = [ln for ln in readme[start:end].splitlines() if ln and not ln.startswith(("<!--", "```"))]
    assert len(block) == 1 and block[0].startswith("python -m pytest"), block
    assert "test-command:start" in (ROOT / ".ci" / "run").read_text()


def _extras(install_line: str) -> set[str]:
    m = re.search(r'pip install[^"\n]*-e "?\.\[([^\]]*)\]', install_line)
    assert m, f"no editable install with extras in: {install_line!r}"
    return {e.strip() for e in m.group(1).split(",")}


def test_quick_start_install_gives_the_bench_plot_and_matches_ci():
    """`rnnfast bench` writes its PNG only with matplotlib: the quick start's extras must bring it, and
    be CI's."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") : readme.index("<!-- test-command:start -->")]
    ci = (ROOT / ".ci" / "run").read_text()
    readme_extras = _extras(next(ln for ln in quick.splitlines() if "pip install -e" in ln))
    ci_extras = _extras(next(ln for ln in ci.splitlines() if "pip install" in ln and "-e" in ln))
    assert readme_extras == ci_extras, f"quick start installs {readme_extras}, CI {ci_extras}"
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    deps = {re.split(r"[<>=;\[ ]", d)[0].lower() for e in readme_extras for d in optional[e]}
    assert {"matplotlib", "pytest", "pytest-benchmark"} <= deps, deps


def test_design_diagram_names_what_exists():
    """Every file and custom op the Design diagram names is there (it is drawn from the code's path)."""
    readme = (ROOT / "README.md").read_text()
    design = readme[readme.index("## Design") :]
    block = design[design.index("```") + 3 :]
    block = block[: block.index("```")]
    ops_dirs = [p.name for p in (ROOT / "rnnfast" / "ops").iterdir() if (p / "function.py").exists()]
    paths = set(re.findall(r"\b((?:[\w<>]+/)+[\w.<>]*\.(?:py|cpp))", block))
    assert len(paths) >= 5, paths
    for p in paths:
        candidates = [p.replace("<op>", d) for d in ops_dirs] if "<op>" in p else [p]
        for c in candidates:
            assert (ROOT / c).exists() or (ROOT / "rnnfast" / c).exists(), f"README Design names {c}"
    sources = "".join(
        f.read_text() for f in [*(ROOT / "rnnfast").rglob("*.py"), *(ROOT / "csrc").rglob("*.cpp")]
    )
    ops = set(re.findall(r"\b(rnnfast(?:_C)?::\w+)", block))
    assert len(ops) >= 3, ops
    for op in ops:
        ns, name = op.split("::")
        assert f'"{op}"' in sources or (ns == "rnnfast_C" and f'"{name}(' in sources), f"no op {op}"
