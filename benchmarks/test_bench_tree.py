"""The SPINN building blocks: tree-LSTM composition and the fused reduce."""

from rnnfast.bench.runner import default_device, pytest_benchmark_case

OPS = ("tree_lstm", "tree_lstm_reduce")


def test_tree(bench_case, benchmark):
    case, provider = bench_case
    pytest_benchmark_case(case, provider, benchmark, default_device())
