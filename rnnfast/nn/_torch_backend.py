"""The ``torch`` backend: a drop-in module runs torch.nn's own forward (cuDNN on CUDA, ATen on CPU)."""

import torch


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return False, f"dtype {dtype} is not a floating type"
    return True, "torch.nn's own kernels" + (" (cuDNN)" if device.type == "cuda" else "")
