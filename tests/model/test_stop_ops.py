"""STOP's tensor helpers against their plain PyTorch definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tempstop.model.stop import conv3d


@pytest.mark.parametrize(
    ("kernel", "padding"), [((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (0, 1, 1)), ((3, 1, 1), (1, 0, 0))]
)
@pytest.mark.parametrize("frames", [1, 2, 5])
def test_single_video_conv3d_equals_nn_conv3d(kernel, padding, frames):
    """The batch-1 CPU path (one Conv2d per temporal offset) computes Conv3d, gradients too."""
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 4, kernel, padding=padding)
    g = torch.randn(1, 6, frames, 5, 7, requires_grad=True)  # [B, C, T, H, W]
    ref, out = conv(g), conv3d(conv, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad_ref = torch.autograd.grad(ref.square().sum(), (g, conv.weight))
    grad_out = torch.autograd.grad(out.square().sum(), (g, conv.weight))
    for a, b in zip(grad_out, grad_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_batched_conv3d_is_nn_conv3d():
    conv = nn.Conv3d(3, 2, 3, padding=1)
    g = torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(conv3d(conv, g), conv(g))
