"""The README stays true: its results table is generated from the committed results files, and its test
command is the one CI runs."""

import subprocess
import sys
from pathlib import Path

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
