"""Checks of the CUDA kernels and their binding that need no GPU.

- every ``csrc/cuda/*.cu`` compiles with ``nvcc -c -arch=sm_90 -Xptxas -v`` (the .cu files include no
  torch header); the register / spill report of every kernel is printed (``pytest -s`` shows it), and the
  persistent kernels must not spill at all (a spill in their time loop would go to local memory every
  step);
- the SASS of the persistent kernels: their innermost product loops load operands from shared memory only
  (LDSM for the tensor-core paths, LDS for the FMA path) and never from global or local memory;
- ``bindings.cpp`` passes ``-fsyntax-only`` with the host compiler against torch's CPU include dirs: it must
  not need any CUDA header;
- the host emulator runs the kernels' CTA programs against the reference (see its section below), and the
  binding itself on emulated kernels.
Skipped, with the reason, where nvcc or a host C++ compiler is missing.
"""

from __future__ import annotations

import ctypes
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

# What torch's extension build adds to nvcc (besides -std=c++20), so the check compiles what it builds.
TORCH_NVCC_FLAGS = [
    "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]

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
_MODE_NAMES = ("mma", "tf32", "ffma")  # rnnfast_cuda.h RNNFAST_MMA16 / TF32 / FFMA


def _short(name: str) -> str:
    """'void rnnfast::...::fwd_persistent_kernel<float, 3, 1>(...)' -> 'fwd_persistent_kernel<float, lstm,
    tf32>'."""
    m = re.search(r"(\w+_kernel)<([\w ]+), (\d)(?:, (\d))?>", name)
    if not m:
        return name
    mode = f", {_MODE_NAMES[int(m.group(4))]}" if m.group(4) else ""
    return f"{m.group(1)}<{m.group(2)}, {_CELL_NAMES[int(m.group(3))]}{mode}>"


_OBJECTS: dict[str, Path] = {}  # where nvcc_logs put the objects


@pytest.fixture(scope="module")
def nvcc_logs(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """{file name: (return code, nvcc output)} of every .cu, compiled concurrently (one process each); the
    objects go to _OBJECTS["dir"]."""
    if NVCC is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME): the CUDA compile check needs it")
    out = tmp_path_factory.mktemp("nvcc")
    _OBJECTS["dir"] = out
    procs = {}
    for source in CU_FILES:
        cmd = [NVCC, "-c", f"-arch={ARCH}", "-std=c++20", "-O3", *TORCH_NVCC_FLAGS, "-Xptxas", "-v"]
        cmd += ["-o", str(out / (source.stem + ".o")), str(source)]
        procs[source.name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return {name: (p.wait(), p.stdout.read()) for name, p in procs.items()}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME): the CUDA compile check needs it")
@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_nvcc_compiles_without_persistent_spills(source: Path, nvcc_logs) -> None:
    text = source.read_text()
    assert not re.search(r'#include\s*[<"](torch|ATen|c10)/', text), f"{source.name}: includes a torch header"
    returncode, log = nvcc_logs[source.name]
    assert returncode == 0, f"{source.name}: nvcc failed:\n{log[-6000:]}"
    assert "warning" not in log.lower(), f"{source.name}: compiler warnings:\n{log[-6000:]}"
    kernels = parse_ptxas(log)
    assert kernels, f"{source.name}: no kernel in the ptxas report:\n{log[-3000:]}"
    # 4 cells x (float32 TF32, float32 FMA, float16, bfloat16) per persistent kernel; 4 cells x 3 dtypes
    # per stepwise kernel (forward and backward).
    expected = {"persistent_fwd.cu": 16, "persistent_bwd.cu": 16, "step.cu": 24}.get(source.name)
    assert expected is None or len(kernels) == expected, (
        f"{source.name}: expected {expected} kernel instantiations, got {len(kernels)}"
    )
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
        '#include "rnnfast_cuda.h"\nint main(void) { return rnnfast_row(33, RNNFAST_BF16) - 40; }\n'
    )
    proc = subprocess.run(
        [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{SRC}", str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"rnnfast_cuda.h is not plain C:\n{proc.stderr}"


# --------------------------------------------------------------------------------------------------
# SASS of the persistent kernels (cuobjdump ships with triton): the innermost loops that do the tile GEMM
# take their operands from shared memory through LDSM (tensor cores) or LDS (float32 FMA), and contain no
# load from global (LDG), generic (LD) or local (LDL: a spill) memory.


def _cuobjdump() -> str | None:
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(tool) if tool.exists() else shutil.which("cuobjdump")


CUOBJDUMP = _cuobjdump()
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_functions(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """{mangled function: [(address, opcode, operands)]} from ``cuobjdump -sass``."""
    funcs: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = funcs.setdefault(m.group(1), [])
            continue
        m = _SASS_LINE.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def innermost_loops(code: list[tuple[int, str, str]], select) -> list[list[tuple[int, str, str]]]:
    """Bodies of the loops (a branch back to an earlier address) that contain no other loop and whose list
    of opcodes passes select."""
    loops = []
    for addr, op, args in code:
        m = re.search(r"0x([0-9a-f]+)", args)
        if op.startswith("BRA") and m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    bodies = []
    for lo, hi in loops:
        if any(lo <= a < b <= hi and (a, b) != (lo, hi) for a, b in loops):
            continue
        body = [ins for ins in code if lo <= ins[0] <= hi]
        if select([op for _, op, _ in body]):
            bodies.append(body)
    return bodies


def _is_memory_load(op: str, prefix: str) -> bool:
    return op == prefix or op.startswith(prefix + ".")


@pytest.mark.skipif(CUOBJDUMP is None, reason="cuobjdump not found (shipped with triton, or CUDA's bin)")
@pytest.mark.parametrize("source", ["persistent_fwd.cu", "persistent_bwd.cu"])
def test_sass_inner_loops_read_operands_from_shared_memory(source, nvcc_logs):
    returncode, log = nvcc_logs[source]
    assert returncode == 0, f"{source}: nvcc failed:\n{log[-3000:]}"
    obj = _OBJECTS["dir"] / (Path(source).stem + ".o")
    proc = subprocess.run([CUOBJDUMP, "-sass", str(obj)], capture_output=True, text=True)
    assert proc.returncode == 0, f"cuobjdump failed: {proc.stderr[-2000:]}"
    funcs = sass_functions(proc.stdout)
    names = _demangle(sorted(funcs))
    assert len(funcs) == 16, f"{source}: expected 16 kernels in the SASS, got {len(funcs)}"
    for mangled, code in funcs.items():
        name = _short(names[mangled])
        ffma = name.endswith("ffma>")
        # The product loop: HMMA for the tensor-core paths; for the FMA path the 4x4 tile's 64 FFMA per
        # iteration (the cells' loops have a few FFMA of their own).
        if ffma:
            loops = innermost_loops(code, lambda ops: ops.count("FFMA") >= 64)
        else:
            loops = innermost_loops(code, lambda ops: any(op.startswith("HMMA") for op in ops))
        assert loops, f"{name}: no innermost product loop ({'64 FFMA' if ffma else 'HMMA'})"
        for body in loops:
            ops = [op for _, op, _ in body]
            where = f"{name}, loop at {body[0][0]:#x}"
            if ffma:
                assert any(op.startswith("LDS.128") for op in ops), f"{where}: no 16-byte shared load"
            else:
                assert any(op.startswith("LDSM") for op in ops), f"{where}: operands not loaded with LDSM"
            bad = [op for op in ops if any(_is_memory_load(op, p) for p in ("LD", "LDG", "LDL"))]
            assert not bad, f"{where}: global/generic/local loads in the product loop: {bad}"


# --------------------------------------------------------------------------------------------------
# Host emulation: the kernels' own CTA programs (csrc/cuda/phases.cuh) run on the CPU over an emulated
# runtime (csrc/cuda/emulator), against the reference backend: every cell, dtype and multiply mode,
# lengths and reverse, several units per CTA, ragged last CTAs, odd n-tile counts, several batch blocks,
# K-chunked staging with and without the prefetch buffer, under three CTA schedules, so that a race shows
# as a mismatch. ldmatrix / mma follow the PTX ISA in the emulator while the lane addresses and
# accumulator positions are the kernels' (tile.cuh); every ldmatrix phase is checked for bank conflicts and
# for reading only the rows it means to. Outputs, shared memory and workspaces start as NaN; copies in
# flight read as NaN until the wait that lands them.

EMU_SRC = SRC / "emulator" / "host_emulator.cu"
EMU_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
# (dtype, multiply mode, tolerance): the half paths round h and dgh for the MMA; TF32 rounds both operands.
EMU_MODES = {
    "float32-ffma": ("float32", 2, 1e-5),
    "float32-tf32": ("float32", 1, 5e-3),
    "float16": ("float16", 0, 2e-2),
    "bfloat16": ("bfloat16", 0, 6e-2),
}
ROOMY, CHUNKED, TIGHT = 0, 1, 2  # shared-memory budgets (rnnfast_emulator_optin)
# (T, B, H, lengths, modelled SMs, budget)
EMU_CASES = [
    (5, 3, 33, [5, 0, 2], 4, ROOMY),  # 9 units per CTA, last CTA 6, odd n-tile counts; a zero-length row
    (4, 17, 20, None, 4, ROOMY),  # two blocks of batch rows, double-buffered across them
    (1, 1, 7, None, 4, ROOMY),
    (3, 18, 40, [3, 1, 2, 0, 3, 2, 1, 3, 3, 2, 1, 0, 3, 3, 2, 2, 1, 3], 2, CHUNKED),  # K-chunks x row blocks
    (4, 5, 33, [4, 1, 3, 0, 2], 2, TIGHT),  # K-chunks, no prefetch buffer
]
SCHEDULES = {0: "ascending", 1: "descending", 2: "rotating"}
EMU_PARAMS = [
    pytest.param(
        algo, mode, case, id=f"{algo_name}-{mode}-T{case[0]}-B{case[1]}-H{case[2]}-sms{case[4]}-{case[5]}"
    )
    for algo, algo_name in ((1, "persistent"), (2, "stepwise"))
    for mode in EMU_MODES
    for case in EMU_CASES
    if algo == 1 or case[5] == ROOMY
]


class EmuInfo(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "ctas units smem k_chunk k_chunks split prefetch nbuf "
            "ldsm_phases bank_conflicts misplaced copies pending_at_exit barrier_ok"
        ).split()
    ]


def _cuda_include() -> Path | None:
    """CUDA's include directory (cuda_runtime.h, cuda_fp16.h), for building the emulator as host C++."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC:
        homes.append(str(Path(NVCC).parent.parent))
    for home in homes:
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


@pytest.fixture(scope="module")
def emulator_object(tmp_path_factory) -> Path:
    """The emulator compiled as plain host C++ (no device code, so no CUDA runtime to link)."""
    include = _cuda_include()
    if CXX is None or include is None:
        pytest.skip("the host emulator needs a host C++ compiler and CUDA's headers (CUDA_HOME)")
    obj = tmp_path_factory.mktemp("emu") / "host_emulator.o"
    cmd = [CXX, "-x", "c++", "-std=c++17", "-O2", "-fPIC", "-Wall", "-Wno-unknown-pragmas", f"-I{include}"]
    cmd += ["-c", "-o", str(obj), str(EMU_SRC)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"host emulator does not build:\n{proc.stdout}{proc.stderr}"
    assert "warning" not in proc.stderr, f"host emulator: compiler warnings:\n{proc.stderr[-4000:]}"
    return obj


@pytest.fixture(scope="module")
def emulator(emulator_object):
    lib = emulator_object.with_name("rnnfast_emulator.so")
    proc = subprocess.run(
        [CXX, "-shared", "-o", str(lib), str(emulator_object)], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"host emulator does not link:\n{proc.stderr}"
    dll = ctypes.CDLL(str(lib))
    assert dll.rnnfast_emulator_info_size() == ctypes.sizeof(EmuInfo), (
        "Info layout differs from the emulator's"
    )
    return dll


def _emu_inputs(cell, dtype, T, B, H, lengths):
    import torch

    from rnnfast.ops.recurrence import common

    G = common.GATES[cell]
    g = torch.Generator().manual_seed(T * 100 + B * 10 + H)

    def r(*shape, scale=0.5):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    return {
        "gi": r(T, B, G * H, scale=1.0),
        "h0": r(B, H),
        "c0": r(B, H) if cell == "lstm" else None,
        "w_hh": r(G * H, H, scale=H**-0.5),
        "b_hh": r(G * H),
        "lengths": None if lengths is None else torch.tensor(lengths, dtype=torch.int64),
        "gy": r(T, B, H, scale=1.0),
        "ghn": r(B, H, scale=1.0),
        "gcn": r(B, H, scale=1.0) if cell == "lstm" else None,
    }


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None and t.numel() else 0)


def _nan(*shape, dtype):
    import torch

    return torch.full(shape, float("nan"), dtype=dtype)


def _row(n, dtype_name):
    per = 16 // (4 if dtype_name == "float32" else 2)
    return (n + per - 1) // per * per


def _check_info(tag, info: EmuInfo, budget: int) -> None:
    assert info.bank_conflicts == 0, (
        f"{tag}: {info.bank_conflicts} of {info.ldsm_phases} ldmatrix phases conflict"
    )
    assert info.misplaced == 0, f"{tag}: {info.misplaced} shared accesses outside the rows they mean to read"
    assert info.pending_at_exit == 0, f"{tag}: cp.async groups never waited for"
    assert info.barrier_ok, f"{tag}: a step started before every CTA arrived at the barrier"
    assert info.copies > 0, f"{tag}: no staging copies"
    if budget != ROOMY:
        assert info.k_chunks > 1, f"{tag}: the case means to stage in K-chunks, got {info.k_chunks}"
    if budget == TIGHT:
        assert not info.prefetch, f"{tag}: the tight budget leaves no room for the prefetch buffer"
    if budget == ROOMY:
        assert info.prefetch, f"{tag}: the roomy budget has room for the prefetch buffer"


@pytest.mark.parametrize(("algo", "mode_name", "case"), EMU_PARAMS)
def test_host_emulation_matches_reference(emulator, algo, mode_name, case):
    import torch

    from rnnfast.ops.recurrence import common, reference

    T, B, H, lengths, sms, budget = case
    dtype_name, mode, tol = EMU_MODES[mode_name]
    dtype, dt = getattr(torch, dtype_name), EMU_DTYPES[dtype_name]
    for cell in common.CELLS:
        G, S, code = common.GATES[cell], common.SAVED[cell], common.CELL_CODE[cell]
        optin_f = emulator.rnnfast_emulator_optin(budget, code, dt, mode, 0, B, H, sms)
        optin_b = emulator.rnnfast_emulator_optin(budget, code, dt, mode, 1, B, H, sms)
        for reverse in (False, True):
            a = _emu_inputs(cell, dtype, T, B, H, lengths)
            L = a["lengths"]

            def d(t):
                return None if t is None else t.double()

            want_fwd = reference.forward(
                cell, d(a["gi"]), d(a["h0"]), d(a["c0"]), d(a["w_hh"]), d(a["b_hh"]), None, L, reverse, True
            )
            valid = torch.ones(T, B, 1, dtype=torch.bool) if L is None else common.valid_mask(L, T, B, "cpu")
            for order in SCHEDULES if algo == 1 else (0, 1):
                tag = f"{cell} reverse={reverse} schedule={SCHEDULES[order]}"
                y, hn = _nan(T, B, H, dtype=dtype), _nan(B, H, dtype=dtype)
                cn = _nan(B, H, dtype=dtype) if cell == "lstm" else torch.empty(0, dtype=dtype)
                ws = _nan(T, B, S * H, dtype=torch.float32)
                info = EmuInfo()
                rc = emulator.rnnfast_emulate_fwd(
                    algo, code, dt, mode, T, B, H, int(reverse), sms, optin_f, order,
                    _ptr(a["gi"]), _ptr(a["h0"]), _ptr(a["c0"]), _ptr(a["w_hh"]), _ptr(a["b_hh"]), _ptr(L),
                    _ptr(y), _ptr(hn), _ptr(cn), _ptr(ws), ctypes.byref(info),
                )  # fmt: skip
                assert rc == 0, f"{tag}: emulator returned {rc} (1: the persistent tile does not fit)"
                if algo == 1:
                    _check_info(f"{tag} forward", info, budget)
                got = {"y": y, "h_n": hn, "c_n": cn if cell == "lstm" else None}
                for name, g, w in zip(("y", "h_n", "c_n"), got.values(), want_fwd[:3]):
                    if g is not None:
                        assert_close_f64(f"{tag} {name}", g, w, tol)
                if S:
                    mask = valid.expand(T, B, S * H)
                    assert_close_f64(f"{tag} ws", ws[mask], want_fwd[3][mask], tol)

                # Backward from the reference forward's y and ws (ws NaN where the contract leaves it open).
                y_in = want_fwd[0].to(dtype)
                ws_in = want_fwd[3].float().masked_fill(~valid, float("nan")) if S else torch.empty(0)
                dgi, dh0 = _nan(T, B, G * H, dtype=dtype), _nan(B, H, dtype=dtype)
                dc0 = _nan(B, H, dtype=dtype) if cell == "lstm" else torch.empty(0, dtype=dtype)
                dgh = _nan(T, B, _row(G * H, dtype_name), dtype=dtype)
                info = EmuInfo()
                rc = emulator.rnnfast_emulate_bwd(
                    algo, code, dt, mode, T, B, H, int(reverse), sms, optin_b, order,
                    _ptr(a["gy"]), _ptr(a["ghn"]), _ptr(a["gcn"]), _ptr(a["h0"]), _ptr(a["c0"]),
                    _ptr(a["w_hh"]), _ptr(L), _ptr(y_in), _ptr(ws_in),
                    _ptr(dgi), _ptr(dgh), _ptr(dh0), _ptr(dc0), ctypes.byref(info),
                )  # fmt: skip
                assert rc == 0, f"{tag}: emulator (backward) returned {rc}"
                if algo == 1:
                    _check_info(f"{tag} backward", info, budget)
                assert dgh[..., G * H :].isnan().all(), f"{tag}: the padding of dgh rows was written"
                h_prev = common.previous_states(y_in.double(), a["h0"].double(), L, reverse)
                dgh = dgh[..., : G * H].double()
                dw, db = common.weight_grads(dgh, h_prev, True)
                want = reference.backward(
                    cell, d(a["gy"]), d(a["ghn"]), d(a["gcn"]), d(a["h0"]), d(a["c0"]), d(a["w_hh"]),
                    d(a["b_hh"]), None, L, reverse, y_in.double(), want_fwd[3],
                )  # fmt: skip
                got = (dgi, dh0, dc0 if cell == "lstm" else None, dw, db)
                for name, g, w in zip(("dgi", "dh0", "dc0", "dw_hh", "db_hh"), got, want):
                    if g is not None:
                        assert_close_f64(f"{tag} {name}", g, w, tol)


def assert_close_f64(name, got, want, tol):
    """got (any dtype) within tol·max(1, |want|max) of want, with no NaN (an element never written, or read
    before written)."""
    got, want = got.double(), want.double()
    assert not got.isnan().any(), f"{name}: NaN (an element was never written, or read before written)"
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, f"{name}: max abs error {err:.3e} > {tol * scale:.3e}"


H100_SMS, H100_OPTIN = 132, 232448  # an H100 SXM: SMs, opt-in shared memory per block (227 KiB)


def _largest_h(emulator, cell, dt, mode, backward, B=16):
    """Largest H (multiple of 16, up to 4096) whose persistent tile fits an H100's shared memory."""
    from rnnfast.ops.recurrence import common

    best = 0
    for H in range(16, 4097, 16):
        code = common.CELL_CODE[cell]
        if (
            emulator.rnnfast_emulator_tile(code, dt, mode, int(backward), B, H, H100_SMS, H100_OPTIN, None)
            == 0
        ):
            best = H
    return best


def test_plan_limits_on_an_h100(emulator):
    """Largest H the persistent kernels take on an H100 (printed for docs/cuda.md): staging the shared
    operand in K-chunks lets the backward of every cell reach H=1024 in every dtype, the LSTM's included."""
    from rnnfast.ops.recurrence import common

    print("\nlargest H of the persistent kernels on an H100 (B=16), forward / backward")
    for mode_name, (dtype_name, mode, _) in EMU_MODES.items():
        dt = EMU_DTYPES[dtype_name]
        row = []
        for cell in common.CELLS:
            fwd, bwd = (_largest_h(emulator, cell, dt, mode, b) for b in (False, True))
            row.append(f"{cell} {fwd}/{bwd}")
            assert fwd >= 1024 and bwd >= 1024, f"{cell} {mode_name}: largest H {fwd} forward, {bwd} backward"
        print(f"  {mode_name:<13} " + "  ".join(row))
    info = EmuInfo()
    code = common.CELL_CODE["lstm"]
    assert (
        emulator.rnnfast_emulator_tile(code, 2, 0, 1, 16, 1024, H100_SMS, H100_OPTIN, ctypes.byref(info)) == 0
    )
    assert info.smem <= H100_OPTIN and info.ctas <= H100_SMS, f"LSTM bf16 backward H=1024: {info.smem} B"


# --------------------------------------------------------------------------------------------------
# The binding itself on the emulated kernels: bindings.cpp built with -DRNNFAST_HOST_EMULATION registers the
# ops for CPU tensors and is linked against the emulator's host implementation of the C ABI, so its checks,
# allocations, NaN poisoning, dtype codes and the stepwise loop (ATen GEMMs) run here. In a subprocess: the
# ops must not be registered twice in a process that also loads the real extension.


def _binding_driver(library: str) -> None:
    """Run in a subprocess: every cell x dtype x algorithm x direction x lengths against the reference."""
    import torch

    from rnnfast.ops.recurrence import common, reference

    torch.ops.load_library(library)
    op_f, op_b = torch.ops.rnnfast_C.cuda_recurrence_fwd, torch.ops.rnnfast_C.cuda_recurrence_bwd
    plan = torch.ops.rnnfast_C.cuda_persistent_plan(
        common.CELL_CODE["gru"], torch.float16, False, 3, 33, False, 0
    )
    assert plan[0] == 1 and plan[1] * plan[2] >= 33 and plan[3] == 0, f"plan {plan}"
    plan = torch.ops.rnnfast_C.cuda_persistent_plan(
        common.CELL_CODE["gru"], torch.float32, True, 3, 33, True, 0
    )
    assert plan[0] == 1 and plan[3] == 1, f"float32 with TF32 allowed: mode {plan[3]}, expected 1 (TF32)"
    T, B, H = 5, 3, 33
    tols = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}

    def d(t):
        return None if t is None else t.double()

    for cell in common.CELLS:
        G, code = common.GATES[cell], common.CELL_CODE[cell]
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for algo, reverse, lengths, tf32 in (
                (1, False, None, False),
                (1, True, [5, 0, 2], dtype == torch.float32),
                (2, False, [5, 0, 2], False),
                (2, True, None, False),
            ):
                tol = 5e-3 if tf32 else tols[dtype]
                g = torch.Generator().manual_seed(algo)

                def r(*shape, scale=0.5, g=g, dtype=dtype):
                    return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

                gi, h0, w, b = r(T, B, G * H, scale=1.0), r(B, H), r(G * H, H, scale=H**-0.5), r(G * H)
                c0 = r(B, H) if cell == "lstm" else None
                gy, ghn = r(T, B, H, scale=1.0), r(B, H, scale=1.0)
                gcn = r(B, H, scale=1.0) if cell == "lstm" else None
                L = None if lengths is None else torch.tensor(lengths)
                tag = f"{cell} {dtype} algo={algo} reverse={reverse} lengths={lengths} tf32={tf32}"
                y, hn, cn, ws = op_f(gi, h0, c0, w, b, None, L, code, reverse, True, algo, tf32, 0)
                want = reference.forward(cell, d(gi), d(h0), d(c0), d(w), d(b), None, L, reverse, True)
                assert ws.dtype == torch.float32 and ws.shape == (T, B, common.SAVED[cell] * H), f"{tag} ws"
                for name, got, wnt in zip(("y", "h_n", "c_n"), (y, hn, cn), want[:3]):
                    if cell == "lstm" or name != "c_n":
                        assert got.dtype == dtype, f"{tag} {name}: dtype {got.dtype}"
                        assert_close_f64(f"{tag} {name}", got, wnt, tol)
                assert cell == "lstm" or cn.shape == (0,), f"{tag} c_n placeholder {tuple(cn.shape)}"
                _, _, _, ws_none = op_f(gi, h0, c0, w, b, None, L, code, reverse, False, algo, tf32, 0)
                assert ws_none.shape == (0,), f"{tag} ws without need_ws: {tuple(ws_none.shape)}"

                dgi, dh0, dc0, dgh = op_b(
                    gy, ghn, gcn, h0, c0, w, b, None, L, y, ws, code, reverse, algo, tf32, 0
                )
                assert dgh.dtype == dtype and dgh.shape[:2] == (T, B) and dgh.shape[2] >= G * H, f"{tag} dgh"
                assert dgh.shape[2] * dgh.element_size() % 16 == 0, f"{tag} dgh rows not padded to 16 bytes"
                h_prev = common.previous_states(y.double(), h0.double(), L, reverse)
                dw, db = common.weight_grads(dgh[..., : G * H].double(), h_prev, True)
                want = reference.backward(
                    cell,
                    d(gy),
                    d(ghn),
                    d(gcn),
                    d(h0),
                    d(c0),
                    d(w),
                    d(b),
                    None,
                    L,
                    reverse,
                    y.double(),
                    ws.double(),
                )
                for name, got, wnt in zip(
                    ("dgi", "dh0", "dc0", "dw_hh", "db_hh"), (dgi, dh0, dc0, dw, db), want
                ):
                    if cell == "lstm" or name != "dc0":
                        assert_close_f64(f"{tag} {name}", got, wnt, tol)

    a = {"gi": torch.rand(3, 2, 24), "h0": torch.rand(2, 8), "w": torch.rand(24, 8), "b": torch.rand(24)}
    code = common.CELL_CODE["gru"]
    bad = [
        ("h0: expected dtype", dict(h0=a["h0"].double())),
        ("w_hh: expected shape", dict(w=a["w"][:, :4])),
        ("b_hh: expected shape", dict(b=a["b"][:5])),
        ("lengths: expected int64", dict(L=torch.ones(2, dtype=torch.int32))),
        ("lengths: expected shape", dict(L=torch.ones(3, dtype=torch.int64))),
        ("w_hr: the LSTM projection", dict(w_hr=a["w"])),
        ("gi: expected a contiguous", dict(gi=a["gi"].transpose(0, 1))),
        ("algo: expected 1", dict(algo=3)),
        ("cell: expected a code", dict(cell=7)),
        ("c0: required for the lstm cell", dict(cell=common.CELL_CODE["lstm"], gi=torch.rand(3, 2, 32),
                                                 w=torch.rand(32, 8), b=torch.rand(32))),
    ]  # fmt: skip
    for match, change in bad:
        k = {
            "gi": a["gi"],
            "h0": a["h0"],
            "w": a["w"],
            "b": a["b"],
            "L": None,
            "w_hr": None,
            "algo": 1,
            "cell": code,
        }
        k.update(change)
        try:
            op_f(
                k["gi"],
                k["h0"],
                None,
                k["w"],
                k["b"],
                k["w_hr"],
                k["L"],
                k["cell"],
                False,
                True,
                k["algo"],
                False,
                0,
            )
        except RuntimeError as e:
            assert match in str(e), f"expected '{match}' in the error, got: {str(e).splitlines()[0]}"
        else:
            raise AssertionError(f"no error for a bad input ({match})")
    _adapter_contract()
    print("binding ok")


def _adapter_contract() -> None:
    """rnnfast/ops/recurrence/cuda.py forward/backward on the emulated ops: the op contract's six outputs
    (shapes, dtypes, empty placeholders) against the reference backend. CUDA's device and stream handling is
    replaced by no-ops, the only part of the adapter that needs a GPU."""
    import contextlib
    import types

    import torch

    from rnnfast.ops.recurrence import common
    from rnnfast.ops.recurrence import cuda as cuda_backend

    torch.cuda.device = lambda device: contextlib.nullcontext()
    torch.cuda.current_stream = lambda device=None: types.SimpleNamespace(cuda_stream=0)
    cuda_backend._device_index = lambda device: 0
    cuda_backend._gpu = lambda device: cuda_backend.Gpu(sms=4)  # the emulated GPU's SMs
    T, B, H = 4, 3, 17
    for cell in common.CELLS:
        for bias, lengths, reverse in ((True, [4, 1, 0], True), (False, None, False)):
            G = common.GATES[cell]
            g = torch.Generator().manual_seed(3)

            def r(*shape, g=g):
                return (torch.rand(*shape, generator=g) - 0.5).float()

            gi, h0, w = r(T, B, G * H), r(B, H), r(G * H, H)
            c0 = r(B, H) if cell == "lstm" else None
            b = r(G * H) if bias else None
            L = None if lengths is None else torch.tensor(lengths)
            gy, ghn = r(T, B, H), r(B, H)
            gcn = r(B, H) if cell == "lstm" else None
            for algo in ("persistent", "stepwise", "auto"):
                with cuda_backend.flags(algo=algo):
                    _adapter_case(cell, algo, bias, reverse, gi, h0, c0, w, b, L, gy, ghn, gcn)


def _adapter_case(cell, algo, bias, reverse, gi, h0, c0, w, b, L, gy, ghn, gcn) -> None:
    import torch

    from rnnfast.ops.recurrence import cuda as cuda_backend
    from rnnfast.ops.recurrence import reference

    tag = f"adapter {cell} bias={bias} {algo}"
    code, why = cuda_backend.algorithm(cell, gi.dtype, gi.shape[1], h0.shape[1], False, gi.device)
    assert code == {"persistent": 1, "stepwise": 2}.get(algo, code) and code in (1, 2), f"{tag}: {why}"
    # float32 with TF32 allowed multiplies in TF32 on the persistent path: compare in exact FMA here.
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        got = cuda_backend.forward(cell, gi, h0, c0, w, b, None, L, reverse, True)
        want = reference.forward(cell, gi, h0, c0, w, b, None, L, reverse, True)
        got_b = cuda_backend.backward(cell, gy, ghn, gcn, h0, c0, w, b, None, L, reverse, got[0], got[3])
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    for name, x, y in zip(("y", "h_n", "c_n", "ws"), got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, (
            f"{tag} {name}: {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
        )
        if name != "ws":
            assert_close_f64(f"{tag} {name}", x, y, 1e-5)
    want_b = reference.backward(cell, gy, ghn, gcn, h0, c0, w, b, None, L, reverse, want[0], want[3])
    names = ("dgi", "dh0", "dc0", "dw_hh", "db_hh", "dw_hr")
    for name, x, y in zip(names, got_b, want_b):
        assert x.shape == y.shape and x.dtype == y.dtype, (
            f"{tag} {name}: {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
        )
        assert_close_f64(f"{tag} {name}", x, y, 1e-5)


@pytest.fixture(scope="module")
def emulated_binding(emulator_object, tmp_path_factory):
    from torch.utils.cpp_extension import include_paths, library_paths

    lib = tmp_path_factory.mktemp("binding") / "rnnfast_binding_emulated.so"
    torch_lib = library_paths()[0]
    cmd = [CXX, "-std=c++20", "-O0", "-shared", "-fPIC", "-DRNNFAST_HOST_EMULATION"]
    cmd += [f"-I{p}" for p in include_paths()]
    cmd += ["-o", str(lib), str(SRC / "bindings.cpp"), str(emulator_object)]
    cmd += [f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-ltorch", "-ltorch_cpu", "-lc10"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"binding (host emulation) does not build:\n{proc.stderr[-6000:]}"
    return lib


def test_binding_on_emulated_kernels(emulated_binding):
    import sys

    root = Path(__file__).resolve().parent.parent
    code = f"import tests.test_cuda_compile as t; t._binding_driver({str(emulated_binding)!r})"
    env = dict(os.environ, PYTHONPATH=str(root), RNNFAST_DEBUG_POISON="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert proc.returncode == 0 and "binding ok" in proc.stdout, (
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
