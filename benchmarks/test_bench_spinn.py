"""The SPINN encoder: rnnfast.nn.SPINN (thin stack) against the list-based SPINN of the SNLI example."""

from rnnfast.bench.runner import default_device, pytest_benchmark_case

OPS = ("spinn",)


def test_spinn(bench_case, benchmark):
    case, provider = bench_case
    pytest_benchmark_case(case, provider, benchmark, default_device())
