"""How far a bf16 result may lie from float32's, derived from what bf16 rounds.

bfloat16 keeps 8 significant bits: rounding an operand moves it by at most u = 2^-8 of its
value. Under autocast every convolution and linear layer rounds both its input and its weight,
so its output is off by at most 2u relative to the same layer in float32 (the sums run in
float32 on every CPU kernel: oneDNN's AVX-512 BF16 and AMX kernels both accumulate in float32,
only their order differs). To first order the layers' errors add along the network's depth:
a result computed through L such layers is off by at most 2·L·u relative. How much of that
bound a machine uses depends on its kernels (measured first-step loss gaps: 0.3 % on AMD EPYC
with AVX-512 BF16, 0.75 % on Intel Xeon with AMX; 14 layers give a bound of 10.9 %).

A float32 result computed twice in one process is the same to the bit, and float32 itself
rounds at 2^-24: a gap of more than a few float32 steps means another precision ran.
"""

from __future__ import annotations

import torch

#: The relative rounding of one bf16 operand (8 significant bits).
BF16_UNIT = 2.0**-8
#: A gap larger than 8 float32 rounding steps cannot come from float32 alone.
FLOAT32_NOISE = 8 * 2.0**-24


def bf16_layers(module: torch.nn.Module) -> int:
    """The layers autocast runs in bf16 (every convolution and linear layer)."""
    return sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in module.modules())


def bf16_relative_bound(module: torch.nn.Module) -> float:
    """The first-order bound on the relative gap between bf16 and float32 results."""
    return 2 * bf16_layers(module) * BF16_UNIT


def on_bf16_grid(value: float) -> bool:
    """Whether a float32 number has no more than bf16's 8 significant bits (a value computed
    in float32 lands there with probability 2^-16; one computed in bf16 always does)."""
    return torch.tensor(value).to(torch.bfloat16).float().item() == value
