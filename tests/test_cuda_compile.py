"""Compile check of the CUDA kernels and their binding, no GPU needed.

- every ``csrc/cuda/*.cu`` compiles with ``nvcc -c -arch=sm_90 -Xptxas -v`` (the .cu files include no
  torch header); the register / spill report of every kernel is printed (``pytest -s`` shows it), and the
  persistent kernels must not spill at all (a spill in their time loop would go to local memory every
  step);
- ``bindings.cpp`` passes ``-fsyntax-only`` with the host compiler against torch's CPU include dirs: it must
  not need any CUDA header.
Skipped, with the reason, where nvcc or a host C++ compiler is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
CU_FILES = sorted(SRC.glob("*.cu"))
ARCH = os.environ.get("RNNFAST_CUDA_CHECK_ARCH", "sm_90")


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


NVCC = _nvcc()
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """{kernel (mangled): {regs, stack, spill_stores, spill_loads}} from ``-Xptxas -v`` output."""
    kernels: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = kernels.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _REGS.search(line)
        if m:
            current["regs"] = int(m.group(1))
    return kernels


def _demangle(names: list[str]) -> dict[str, str]:
    tools = [shutil.which("cu++filt"), NVCC and str(Path(NVCC).parent / "cu++filt"), shutil.which("c++filt")]
    tool = next((t for t in tools if t and Path(t).exists()), None)
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    pretty = out.splitlines()
    return dict(zip(names, pretty)) if len(pretty) == len(names) else {n: n for n in names}


_CELL_NAMES = ("rnn_tanh", "rnn_relu", "gru", "lstm")  # common.CELL_CODE order


def _short(name: str) -> str:
    """'void rnnfast::...::fwd_step_kernel<float, 3>(...)' -> 'fwd_step_kernel<float, lstm>'."""
    m = re.search(r"(\w+_kernel)<([\w ]+), (\d)>", name)
    return f"{m.group(1)}<{m.group(2)}, {_CELL_NAMES[int(m.group(3))]}>" if m else name


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME): the CUDA compile check needs it")
@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_nvcc_compiles_without_persistent_spills(source: Path, tmp_path: Path) -> None:
    text = source.read_text()
    assert not re.search(r'#include\s*[<"](torch|ATen|c10)/', text), f"{source.name}: includes a torch header"
    cmd = [
        NVCC,
        "-c",
        f"-arch={ARCH}",
        "-std=c++17",
        "-O3",
        "-Xptxas",
        "-v",
        "-o",
        str(tmp_path / "k.o"),
        str(source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{source.name}: nvcc failed:\n{log[-6000:]}"
    assert "warning" not in log.lower(), f"{source.name}: compiler warnings:\n{log[-6000:]}"
    kernels = parse_ptxas(log)
    assert kernels, f"{source.name}: no kernel in the ptxas report:\n{log[-3000:]}"
    # 4 cells x 3 dtypes, forward and/or backward, in every file.
    assert len(kernels) % 12 == 0, f"{source.name}: expected 12 instantiations per kernel, got {len(kernels)}"
    names = _demangle(sorted(kernels))
    print(f"\n{source.name} ({ARCH}): registers / stack / spill stores / spill loads")
    for mangled in sorted(kernels, key=lambda n: names[n]):
        k = kernels[mangled]
        figures = " ".join(f"{k[f]:>4}" for f in ("regs", "stack", "spill_stores", "spill_loads"))
        print(f"  {_short(names[mangled]):<50} {figures}")
    for mangled, k in kernels.items():
        assert "regs" in k and "spill_stores" in k, f"{names[mangled]}: incomplete ptxas report"
        if "persistent" in mangled:
            assert k["spill_stores"] == 0 and k["spill_loads"] == 0, (
                f"{names[mangled]}: spills {k['spill_stores']} B stores / {k['spill_loads']} B loads; "
                "a persistent kernel would touch local memory in its time loop"
            )


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler (c++/g++) for the binding's syntax check")
def test_binding_compiles_without_cuda_headers() -> None:
    from torch.utils.cpp_extension import include_paths

    binding = SRC / "bindings.cpp"
    for path in (binding, SRC / "rnnfast_cuda.h"):
        text = path.read_text()
        assert not re.search(r"#include\s*[<\"](cuda|c10/cuda|ATen/cuda)", text), f"{path.name}: CUDA header"
    cmd = [CXX, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra"]
    cmd += [f"-I{p}" for p in include_paths()] + [str(binding)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"bindings.cpp does not compile:\n{proc.stderr[-6000:]}"
    own = [
        line
        for line in proc.stderr.splitlines()
        if re.search(r"(bindings\.cpp|rnnfast_cuda\.h):\d+:\d+:", line)
    ]
    assert not own, "warnings in the binding:\n" + "\n".join(own)


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler for the C ABI header check")
def test_abi_header_is_plain_c(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) for the C ABI header check")
    src = tmp_path / "abi.c"
    src.write_text(
        '#include "rnnfast_cuda.h"\nint main(void) { return (int)rnnfast_fwd_workspace(1, 1) - 3; }\n'
    )
    proc = subprocess.run(
        [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{SRC}", str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"rnnfast_cuda.h is not plain C:\n{proc.stderr}"
