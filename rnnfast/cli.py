"""The ``rnnfast`` command: ``info``, ``bench``, ``profile``, ``spinn-train``."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

import torch

from rnnfast import __version__, backends

# Subcommands whose implementation lives with its subsystem: name -> (module, function, help).
_DELEGATED = {
    "bench": ("rnnfast.bench.cli", "main_bench", "benchmark rnnfast against torch.nn and the reference"),
    "profile": ("rnnfast.bench.cli", "main_profile", "profile one case: Chrome trace + per-kernel table"),
    "spinn-train": ("rnnfast.spinn_train", "main", "train the SPINN SNLI classifier"),
}


def _format_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [[c for c in cols], ["-" * width[c] for c in cols]] + [[str(r[c]) for c in cols] for r in rows]
    return "\n".join("  ".join(v.ljust(width[c]) for c, v in zip(cols, vals)).rstrip() for vals in lines)


def info(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rnnfast info", description="Backends, their status and the build.")
    p.add_argument("--device", default=None, help="device to evaluate support on (default: cuda if present)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"rnnfast {__version__}  torch {torch.__version__}  python {platform.python_version()}")
    if torch.cuda.is_available():
        print(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name()}")
    else:
        print(
            f"CUDA: not available; CPU: {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads"
        )
    for name in ("cpu", "triton", "cuda"):
        ok, why = backends.REGISTRY[name].available()
        print(f"  {name:7s} {'available' if ok else 'unavailable'}: {why}")
        if name == "cpu" and ok:
            path = torch.ops.rnnfast_C.gemm_path(16, 512, 2048)
            isa = {4: "AVX-512", 3: "AVX2"}.get(torch.ops.rnnfast_C.isa_level(), "baseline x86-64 or generic")
            lib = {
                "onednn": "oneDNN",
                "aten": "ATen (no oneDNN in this torch, or flags(gemm='aten'))",
                "packed": "the blocked kernel, W packed in panels",
            }.get(path, path)
            print(
                f"          vector code: {isa}; large float32 products (e.g. a B=16, H=512 LSTM step): {lib}"
            )
            parts = torch.ops.rnnfast_C.team_parts(200, 1, 3, 128, False, torch.float32)
            team = f"a team of {parts} threads" if parts > 1 else "one thread (a team needs 2+ threads)"
            print(f"          small-batch time loops (e.g. LSTM B=1, H=128, T=200): {team}")
            slices = torch.ops.rnnfast_C.row_parts(64, 2, 64, 0, torch.float32)
            rows = f"{slices} slices of rows, a thread each" if slices > 1 else "one loop over all rows"
            print(f"          batched time loops (e.g. GRU B=64, H=64): {rows}")
    f = backends.cpu.facts()
    print(
        f"CPU policy facts: {f.vector_bytes * 8}-bit vectors, L1d {f.l1d_bytes >> 10} KiB, "
        f"L2 {f.l2_bytes >> 10} KiB, L3 {f.l3_bytes >> 20} MiB, {torch.get_num_threads()} threads, "
        f"oneDNN {'yes' if f.onednn else 'no'}"
    )
    state = (
        "on"
        if backends.cpu.benchmark
        else "off (RNNFAST_AUTOTUNE=1 or rnnfast.backends.cpu.benchmark = True)"
    )
    print(f"CPU autotune: {state}; cache {backends.cpu.cache_file()}")
    env = backends.requested_backend(None)
    print(f"RNNFAST_BACKEND: {env}   GPU-verified for auto: {sorted(backends.GPU_VERIFIED) or 'none'}")
    print(f"\nSupport on {device} (float32, sample sizes):")
    print(_format_table(backends.table(device)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"info": "backends, build status, what auto picks", **{k: v[2] for k, v in _DELEGATED.items()}}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: rnnfast {" + ",".join(commands) + "} [options]\n")
        for name, text in commands.items():
            print(f"  {name:12s} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nrnnfast: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        return info(rest)
    module, func, _ = _DELEGATED[cmd]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
