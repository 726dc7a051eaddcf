"""Skip a test unless the machine has what it needs (a CUDA GPU, bfloat16 on it).

    @run_if(min_cuda_gpus=1, bf16_cuda=True)
    def test_something_on_a_gpu(): ...

The suite runs on CPU machines; these tests run where a GPU is, and say why they were
skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch


def run_if(min_cuda_gpus: int = 0, bf16_cuda: bool = False) -> pytest.MarkDecorator:
    """A ``skipif`` mark whose reason names every requirement the machine misses."""
    missing = []
    found = torch.cuda.device_count()
    if found < min_cuda_gpus:
        missing.append(f"needs {min_cuda_gpus} CUDA GPU(s), found {found}")
    if bf16_cuda and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        missing.append("needs a CUDA GPU with bfloat16 support")
    return pytest.mark.skipif(bool(missing), reason="; ".join(missing) or "all requirements met")
