"""RNN/GRU/LSTM: the drop-in modules against torch.nn, and the bare recurrence ops."""

from rnnfast.bench.runner import default_device, pytest_benchmark_case

OPS = ("gru", "rnn", "lstm", "gru_op", "rnn_op", "lstm_op")


def test_recurrence(bench_case, benchmark):
    case, provider = bench_case
    pytest_benchmark_case(case, provider, benchmark, default_device())
