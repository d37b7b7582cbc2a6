"""The rnnfast command line: info and subcommand dispatch."""

import subprocess
import sys

from rnnfast import cli


def test_info_prints_backend_table(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "rnnfast 0." in out and "torch" in out
    assert "backend" in out and "in auto" in out
    for name in ("reference", "torch", "cpu", "triton", "cuda"):
        assert name in out, f"'{name}' missing from rnnfast info"


def test_unknown_command_fails(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("info", "bench", "profile", "spinn-train"):
        assert name in out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "rnnfast", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Support on" in r.stdout
