"""Data-parallel training over rnnfast modules is torch.distributed as it is: two CPU processes (gloo)
each take half the batch, and after one optimizer step the parameters equal one process's step over the
whole batch (float64, default backend). DistributedDataParallel, and FSDP2's ``fully_shard`` in the same
two processes."""

import datetime
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rnnfast
from tests.utils import assert_close

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    fully_shard = None

WORLD = 2
B, T, I = 6, 5, 3  # B divisible by WORLD: the mean over each half, averaged, is the mean over the batch
TIMEOUT_S = 120  # a hung rank fails the test after this; it does not hang the suite

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = rnnfast.GRU(I, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.lstm = rnnfast.LSTM(8, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y, _ = self.gru(x)
        y, (h, _) = self.lstm(y)
        return self.head(y[:, -1] + h[-1])


def _step(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    nn.functional.mse_loss(model(x), target).backward()
    opt.step()


def _worker(rank, store_path, data_path, out_path):
    torch.set_num_threads(1)  # two ranks on a small CI machine
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD, timeout=timeout
    )
    try:
        state, x, target = torch.load(data_path)
        rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        model = _Net().double()
        model.load_state_dict(state)
        _step(nn.parallel.DistributedDataParallel(model), x[rows], target[rows])
        torch.save(model.state_dict(), f"{out_path}.ddp.{rank}")
        if fully_shard is not None:
            model = _Net().double()
            model.load_state_dict(state)
            for part in (model.gru, model.lstm, model):
                fully_shard(part)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FSDP's note on modules returning views (batch_first)
                _step(model, x[rows], target[rows])
            full = {k: v.full_tensor() for k, v in model.state_dict().items()}
            torch.save(full, f"{out_path}.fsdp.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Both ranks' parameters after their step, and the one-process step's, from one pair of processes."""
    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    model = _Net().double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    target = torch.randn(B, 2, dtype=torch.float64)
    data = tmp / "data.pt"
    torch.save((model.state_dict(), x, target), data)
    out = tmp / "out"
    ctx = mp.start_processes(
        _worker,
        args=(str(tmp / "store"), str(data), str(out)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):  # raises with the rank's traceback if one fails
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    _step(model, x, target)  # one process, the whole batch
    return out, model.state_dict()


@pytest.mark.parametrize(
    "wrapper",
    [
        "ddp",
        pytest.param(
            "fsdp", marks=pytest.mark.skipif(fully_shard is None, reason="needs torch >= 2.6 (FSDP2)")
        ),
    ],
)
def test_step_equals_single_process_step(run, wrapper):
    out, want = run
    for rank in range(WORLD):
        got = torch.load(f"{out}.{wrapper}.{rank}")
        assert got.keys() == want.keys()
        for name, w in want.items():
            assert_close(f"{wrapper} rank {rank} {name}", got[name], w, atol=1e-12, rtol=1e-10)
