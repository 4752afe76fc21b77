"""The channels-last memory layout for convolutional networks (issue 21, item 2).

``torch.channels_last_3d`` (``torch.channels_last`` in 2D) stores a ``(B, C, D, H, W)`` tensor with the
channels innermost (NDHWC), the layout oneDNN's convolution kernels prefer; the values, shapes and state
dict are unchanged, only the strides. :func:`use_channels_last` converts a network's convolution weights and
makes it convert its inputs, so a bundle switches layout without touching its data pipeline.
"""

from __future__ import annotations

import torch
from torch import nn

# the layout of a batch of images by its number of dimensions: (B, C, H, W) and (B, C, D, H, W)
LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout of its dimensionality (4-D or 5-D); other tensors unchanged."""
    layout = LAYOUTS.get(x.dim())
    return x.contiguous(memory_format=layout) if layout is not None else x


def _inputs_to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(to_channels_last(a) if isinstance(a, torch.Tensor) else a for a in args)


def use_channels_last(network: nn.Module, spatial_dims: int = 3) -> nn.Module:
    """Convert ``network`` in place to the channels-last layout: its ``spatial_dims + 2``-D parameters and
    buffers (convolution kernels) change strides and a forward pre-hook converts its tensor inputs. Values
    and state-dict keys are unchanged. Returns ``network``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"use_channels_last: spatial_dims must be 2 or 3, got {spatial_dims}")
    network.to(memory_format=LAYOUTS[spatial_dims + 2])
    network.register_forward_pre_hook(_inputs_to_channels_last)
    return network
