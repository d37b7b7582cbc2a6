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


def _short(name: str) -> str:
    """'void rnnfast::...::fwd_step_kernel<float, 3>(...)' -> 'fwd_step_kernel<float, lstm>'."""
    m = re.search(r"(\w+_kernel)<([\w ]+), (\d)>", name)
    return f"{m.group(1)}<{m.group(2)}, {_CELL_NAMES[int(m.group(3))]}>" if m else name


@pytest.fixture(scope="module")
def nvcc_logs(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """{file name: (return code, nvcc output)} of every .cu, compiled concurrently (one process each)."""
    out = tmp_path_factory.mktemp("nvcc")
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


# --------------------------------------------------------------------------------------------------
# Host emulation: the kernels' own phase functions (csrc/cuda/phases.cuh) run thread by thread on the CPU
# (csrc/cuda/emulator), against the reference backend. This checks the indexing of both algorithms, every
# cell and dtype, lengths and reverse, several units per CTA, ragged last CTAs and several batch chunks,
# under two schedules (ascending and descending CTAs/threads, the backward's CTAs running ahead into the
# next step) so that a race shows as a mismatch. Outputs, shared memory and workspaces start as NaN.

EMU_SRC = SRC / "emulator" / "host_emulator.cu"
EMU_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
EMU_TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 6e-2}  # half path: h and dgh rounded for the MMA
# (T, B, H, lengths, modelled SMs, modelled shared memory per CTA in bytes)
EMU_CASES = [
    (5, 3, 33, [5, 0, 2], 4, 1 << 20),  # 9 units per CTA, last CTA 6; a zero-length row
    (4, 17, 20, None, 4, 1 << 20),  # two batch chunks of 16 for the tensor-core path
    (1, 1, 7, None, 4, 1 << 20),
    # float32 only: batch chunks shrunk to 1 or 2 rows (GRU, LSTM) to fit 1800 bytes; too small for the
    # tensor-core tiles, which the other cases cover.
    (6, 5, 9, [1, 6, 3, 0, 5], 2, 1800),
]
EMU_PARAMS = [
    pytest.param(algo, dt, case, id=f"{algo_name}-{dt}-T{case[0]}-B{case[1]}-H{case[2]}-sms{case[4]}")
    for algo, algo_name in ((1, "persistent"), (2, "stepwise"))
    for dt in EMU_DTYPES
    for case in EMU_CASES
    if dt == "float32" or case[5] >= 1 << 20
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
    cmd = [
        CXX,
        "-x",
        "c++",
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-Wall",
        f"-I{include}",
        "-c",
        "-o",
        str(obj),
        str(EMU_SRC),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"host emulator does not build:\n{proc.stdout}{proc.stderr}"
    return obj


@pytest.fixture(scope="module")
def emulator(emulator_object):
    import ctypes

    lib = emulator_object.with_name("rnnfast_emulator.so")
    proc = subprocess.run(
        [CXX, "-shared", "-o", str(lib), str(emulator_object)], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"host emulator does not link:\n{proc.stderr}"
    return ctypes.CDLL(str(lib))


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
    import ctypes

    return ctypes.c_void_p(t.data_ptr() if t is not None and t.numel() else 0)


def _nan(*shape, dtype):
    import torch

    return torch.full(shape, float("nan"), dtype=dtype)


@pytest.mark.parametrize(("algo", "dtype_name", "case"), EMU_PARAMS)
def test_host_emulation_matches_reference(emulator, algo, dtype_name, case):
    import torch

    from rnnfast.ops.recurrence import common, reference

    T, B, H, lengths, sms, optin = case
    dtype = getattr(torch, dtype_name)
    tol = EMU_TOL[dtype_name]
    for cell in common.CELLS:
        for reverse in (False, True):
            a = _emu_inputs(cell, dtype, T, B, H, lengths)
            G, S, code = common.GATES[cell], common.SAVED[cell], common.CELL_CODE[cell]
            L = a["lengths"]

            def d(t):
                return None if t is None else t.double()

            want_fwd = reference.forward(
                cell, d(a["gi"]), d(a["h0"]), d(a["c0"]), d(a["w_hh"]), d(a["b_hh"]), None, L, reverse, True
            )
            valid = torch.ones(T, B, 1, dtype=torch.bool) if L is None else common.valid_mask(L, T, B, "cpu")
            for rev in (0, 1):
                tag = f"{cell} reverse={reverse} schedule={'desc' if rev else 'asc'}"
                y, hn = _nan(T, B, H, dtype=dtype), _nan(B, H, dtype=dtype)
                cn = _nan(B, H, dtype=dtype) if cell == "lstm" else torch.empty(0, dtype=dtype)
                ws = _nan(T, B, S * H, dtype=torch.float32)
                rc = emulator.rnnfast_emulate_fwd(
                    algo, code, EMU_DTYPES[dtype_name], T, B, H, int(reverse), sms, optin, rev,
                    _ptr(a["gi"]), _ptr(a["h0"]), _ptr(a["c0"]), _ptr(a["w_hh"]), _ptr(a["b_hh"]), _ptr(L),
                    _ptr(y), _ptr(hn), _ptr(cn), _ptr(ws),
                )  # fmt: skip
                assert rc == 0, f"{tag}: emulator returned {rc} (1: the persistent tile does not fit)"
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
                dgh = _nan(T, B, G * H, dtype=torch.float32)
                rc = emulator.rnnfast_emulate_bwd(
                    algo, code, EMU_DTYPES[dtype_name], T, B, H, int(reverse), sms, optin, rev,
                    _ptr(a["gy"]), _ptr(a["ghn"]), _ptr(a["gcn"]), _ptr(a["h0"]), _ptr(a["c0"]),
                    _ptr(a["w_hh"]), _ptr(L), _ptr(y_in), _ptr(ws_in),
                    _ptr(dgi), _ptr(dgh), _ptr(dh0), _ptr(dc0),
                )  # fmt: skip
                assert rc == 0, f"{tag}: emulator (backward) returned {rc}"
                h_prev = common.previous_states(y_in.float(), a["h0"].float(), L, reverse)
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
    """got (any dtype) within tol·max(1, |want|max) of want, with no NaN (an unwritten element)."""
    got, want = got.double(), want.double()
    assert not got.isnan().any(), f"{name}: NaN (an element was never written, or read before written)"
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, f"{name}: max abs error {err:.3e} > {tol * scale:.3e}"


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
    plan = torch.ops.rnnfast_C.cuda_persistent_plan(common.CELL_CODE["gru"], torch.float16, 3, 33, False, 0)
    assert plan[0] == 1 and plan[1] * plan[2] >= 33, f"plan {plan}"
    T, B, H = 5, 3, 33

    def d(t):
        return None if t is None else t.double()

    for cell in common.CELLS:
        G, code = common.GATES[cell], common.CELL_CODE[cell]
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            tol = EMU_TOL[str(dtype).replace("torch.", "")]
            for algo, reverse, lengths in (
                (1, False, None),
                (1, True, [5, 0, 2]),
                (2, False, [5, 0, 2]),
                (2, True, None),
            ):
                g = torch.Generator().manual_seed(algo)

                def r(*shape, scale=0.5, g=g, dtype=dtype):
                    return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

                gi, h0, w, b = r(T, B, G * H, scale=1.0), r(B, H), r(G * H, H, scale=H**-0.5), r(G * H)
                c0 = r(B, H) if cell == "lstm" else None
                gy, ghn = r(T, B, H, scale=1.0), r(B, H, scale=1.0)
                gcn = r(B, H, scale=1.0) if cell == "lstm" else None
                L = None if lengths is None else torch.tensor(lengths)
                tag = f"{cell} {dtype} algo={algo} reverse={reverse} lengths={lengths}"
                y, hn, cn, ws = op_f(gi, h0, c0, w, b, None, L, code, reverse, True, algo, 0)
                want = reference.forward(cell, d(gi), d(h0), d(c0), d(w), d(b), None, L, reverse, True)
                assert ws.dtype == torch.float32 and ws.shape == (T, B, common.SAVED[cell] * H), f"{tag} ws"
                for name, got, wnt in zip(("y", "h_n", "c_n"), (y, hn, cn), want[:3]):
                    if cell == "lstm" or name != "c_n":
                        assert got.dtype == dtype, f"{tag} {name}: dtype {got.dtype}"
                        assert_close_f64(f"{tag} {name}", got, wnt, tol)
                assert cell == "lstm" or cn.shape == (0,), f"{tag} c_n placeholder {tuple(cn.shape)}"
                _, _, _, ws_none = op_f(gi, h0, c0, w, b, None, L, code, reverse, False, algo, 0)
                assert ws_none.shape == (0,), f"{tag} ws without need_ws: {tuple(ws_none.shape)}"

                dgi, dh0, dc0, dgh = op_b(gy, ghn, gcn, h0, c0, w, b, None, L, y, ws, code, reverse, algo, 0)
                h_prev = common.previous_states(y.float(), h0.float(), L, reverse)
                dw, db = common.weight_grads(dgh, h_prev, True)
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
            for algo in ("persistent", "stepwise"):
                with cuda_backend.flags(algo=algo):
                    _adapter_case(cell, algo, bias, reverse, gi, h0, c0, w, b, L, gy, ghn, gcn)


def _adapter_case(cell, algo, bias, reverse, gi, h0, c0, w, b, L, gy, ghn, gcn) -> None:
    from rnnfast.ops.recurrence import cuda as cuda_backend
    from rnnfast.ops.recurrence import reference

    tag = f"adapter {cell} bias={bias} {algo}"
    got = cuda_backend.forward(cell, gi, h0, c0, w, b, None, L, reverse, True)
    want = reference.forward(cell, gi, h0, c0, w, b, None, L, reverse, True)
    for name, x, y in zip(("y", "h_n", "c_n", "ws"), got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, (
            f"{tag} {name}: {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
        )
        if name != "ws":
            assert_close_f64(f"{tag} {name}", x, y, 1e-5)
    got_b = cuda_backend.backward(cell, gy, ghn, gcn, h0, c0, w, b, None, L, reverse, got[0], got[3])
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
