"""A FeatureNorm case hard for its kernels, and the formula it must match, for the CPU tests
(tests/test_network.py) and the GPU ones (tests/test_gpu.py)."""

from __future__ import annotations

import torch

from crackseg.models.layers import FeatureNorm


def plain_feature_norm(x, scale, bias, eps=0.001):
    """The formula as written, composed from torch operations (autograd differentiates it)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)  # unbiased
    return scale * (x - mean) / torch.sqrt(std + eps) + bias


def feature_norm_case(dtype):
    """Two samples, three channels of 5x7: offsets far above the spread (x - mean cancels),
    a constant channel (std 0), learned scale and bias; and an upstream gradient."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7) * torch.tensor([1.0, 0.01, 0.0]).view(1, 3, 1, 1)
    x = x + torch.tensor([0.5, 20.0, 3.0]).view(1, 3, 1, 1)
    norm = FeatureNorm(3)
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([1.5, -0.7, 2.0]).view(1, 3, 1, 1))
        norm.bias.copy_(torch.tensor([0.1, 0.2, -0.3]).view(1, 3, 1, 1))
    return norm, x.to(dtype).requires_grad_(), torch.randn(2, 3, 5, 7).to(dtype)


def gradients(y, upstream, *tensors):
    return torch.autograd.grad(y, tensors, upstream)
