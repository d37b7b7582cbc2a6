"""pytest-benchmark suite over the registry in ``rnnfast.bench.registry``.

Each test is one case × provider; ``benchmark.group`` is the case, so ``--benchmark-only`` prints the
providers of a case side by side. Device: CUDA if present, else CPU (``--bench-device``
overrides). Grid: ``--bench-grid`` or ``RNNFAST_BENCH_GRID``; by default ``quick``, and ``tiny`` under
``--benchmark-disable`` (the smoke run, one call per test).

    pytest benchmarks --benchmark-only                    # time the quick grid
    pytest benchmarks --benchmark-only --bench-grid full --benchmark-json out.json
    pytest benchmarks --benchmark-disable -q              # smoke: tiny grid, each case once
"""

from __future__ import annotations

import os

from rnnfast.bench import registry
from rnnfast.bench.runner import default_device, set_default_device


def pytest_addoption(parser):
    parser.addoption(
        "--bench-grid",
        choices=registry.GRIDS,
        default=None,
        help="benchmark grid (default: quick; tiny with --benchmark-disable)",
    )
    parser.addoption("--bench-device", default=None, help="cpu or cuda[:N] (default: cuda if present)")
    parser.addoption(
        "--bench-compile", action="store_true", help="add the torch.compile provider (slow compiles)"
    )


def pytest_configure(config):
    set_default_device(config.getoption("--bench-device"))


def bench_grid(config) -> str:
    grid = config.getoption("--bench-grid") or os.environ.get("RNNFAST_BENCH_GRID")
    if grid:
        return grid
    return "tiny" if config.getoption("benchmark_disable") else "quick"


def pytest_generate_tests(metafunc):
    """Parametrise ``bench_case`` (case, provider) with the ops the test module lists in ``OPS``.

    Every provider of a case is listed; those that cannot run here skip with the backend's reason.
    """
    if "bench_case" not in metafunc.fixturenames:
        return
    device = default_device()
    with_compile = metafunc.config.getoption("--bench-compile")
    cases = registry.grid(bench_grid(metafunc.config), device, ops=list(metafunc.module.OPS))
    params = [
        (case, name)
        for case in cases
        for name, _, _ in registry.providers(case, device, compile=True)
        if name != "compile" or with_compile
    ]
    metafunc.parametrize("bench_case", params, ids=[f"{c.id}-{p}" for c, p in params])


def pytest_report_header(config):
    return f"rnnfast benchmarks: grid {bench_grid(config)} on {default_device()}"
