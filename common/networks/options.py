"""Network-level performance switches the builders read (issue 21, item 2): each option leaves the state
dict and, within floating-point rounding, the outputs unchanged, and is off by default until measured to win
on the machine at hand (``python tools/bench.py options``)."""

from __future__ import annotations

from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

from .fused_attention import use_fused_attention
from .memory_format import use_channels_last


def network_options(
    network: nn.Module, fused_attention: bool = False, channels_last: bool = False, spatial_dims: int = 3
) -> nn.Module:
    """Apply the switches to ``network`` in place and return it.

    Args:
        fused_attention: Swin window attention through ``scaled_dot_product_attention``
            (:func:`~common.networks.fused_attention.use_fused_attention`); an error for a network without
            Swin attention, where the switch would silently do nothing.
        channels_last: the channels-last layout for convolutions
            (:func:`~common.networks.memory_format.use_channels_last`).
        spatial_dims: 2 or 3, the layout's dimensionality.
    """
    if fused_attention:
        if not any(isinstance(m, WindowAttention) for m in network.modules()):
            raise ValueError(
                f"fused_attention=True: {type(network).__name__} has no Swin window attention to fuse; "
                "set fused_attention to false for this network"
            )
        use_fused_attention(network)
    if channels_last:
        use_channels_last(network, spatial_dims)
    return network
