"""Small forward+backward calls of the cuda backend, for compute-sanitizer (memcheck, racecheck, synccheck,
initcheck): every cell x dtype x algorithm, with lengths and reverse, shapes that give several CTAs,
a ragged last CTA and two batch chunks.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python scripts/cuda_sanitize_driver.py
"""

from __future__ import annotations

import torch

from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence import cuda as cuda_backend


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    ok, why = cuda_backend.supports(torch.device("cuda"), torch.float32, {"cell": "gru", "B": 3, "H": 33})
    assert ok, why
    g = torch.Generator().manual_seed(0)
    runs = 0
    for algo in ("auto", "stepwise"):
        with cuda_backend.flags(algo=algo):
            for cell in common.CELLS:
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    for T, B, H, lengths, reverse in (
                        (3, 17, 33, [3, 0, 2] * 5 + [1, 3], True),
                        (2, 3, 300, None, False),
                    ):
                        G = common.GATES[cell]

                        def r(*shape, dtype=dtype):
                            return (torch.rand(*shape, generator=g) - 0.5).to(device="cuda", dtype=dtype)

                        gi, h0, w, b = r(T, B, G * H), r(B, H), r(G * H, H), r(G * H)
                        c0 = r(B, H) if cell == "lstm" else None
                        L = None if lengths is None else torch.tensor(lengths, device="cuda")
                        y, hn, cn, ws = cuda_backend.forward(cell, gi, h0, c0, w, b, None, L, reverse, True)
                        gcn = r(B, H) if cell == "lstm" else None
                        cuda_backend.backward(
                            cell, r(T, B, H), r(B, H), gcn, h0, c0, w, b, None, L, reverse, y, ws
                        )
                        torch.cuda.synchronize()
                        runs += 1
    print(f"cuda_sanitize_driver: {runs} forward+backward calls done")


if __name__ == "__main__":
    main()
