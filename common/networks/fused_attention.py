"""Swin window attention through ``torch.nn.functional.scaled_dot_product_attention`` (issue 21, item 2).

Swin's window attention (Liu et al., ICCV 2021, "Swin Transformer", Sec. 3.2, Eq. 4) is
``SoftMax(Q K^T / sqrt(d) + B) V`` with ``B`` the relative position bias and, in shifted windows
(Sec. 3.2, "Efficient batch computation for shifted configuration"), a mask of ``-100`` between tokens that
come from different image regions. :class:`FusedWindowAttention` computes the same expression with one
``scaled_dot_product_attention`` call whose float ``attn_mask`` is ``B`` plus the shift mask, instead of
MONAI's explicit ``q @ k^T``, softmax and ``attn @ v``; MONAI 1.6's own ``use_flash_attention`` path does
this only without autograd, this one also trains.

It subclasses MONAI's ``WindowAttention`` and changes ``forward`` alone: parameters (``qkv``, ``proj``,
``relative_position_bias_table``), the ``relative_position_index`` buffer and hence the state dict are
MONAI's, so every encoder file and published weight loads unchanged (tested).
:func:`use_fused_attention` swaps it into a built network in place, sharing the existing parameters.
"""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn
from torch.nn import functional as F


class FusedWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` (same constructor, same state dict) with ``forward`` as one
    ``scaled_dot_product_attention`` call (Swin Eq. 4: the bias ``B`` and the shift mask are its additive
    float ``attn_mask``; dropout on the attention weights is ``dropout_p``)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, n, head_dim)
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)
        dropout = self.attn_drop.p if self.training else 0.0
        if mask is None:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype), dropout_p=dropout, scale=self.scale
            )
        else:
            # the b windows are (batch, window) in order: fold the nw windows of an image into the head
            # dimension so that bias + shift mask, (nw * heads, n, n), broadcasts over the images
            nw = mask.shape[0]
            attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)).reshape(1, nw * heads, n, n)
            out = F.scaled_dot_product_attention(
                *(t.reshape(b // nw, nw * heads, n, -1) for t in (q, k, v)),
                attn_mask=attn_mask.to(q.dtype),
                dropout_p=dropout,
                scale=self.scale,
            ).reshape(b, heads, n, -1)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


def use_fused_attention(network: nn.Module) -> int:
    """Replace, in place, every MONAI ``WindowAttention`` inside ``network`` (SwinUNETR,
    ``SwinTransformer``, the collection's ``SwinEncoder`` 2D/3D, anything holding them) by a
    :class:`FusedWindowAttention` sharing its parameters; the state dict is unchanged. Returns how many
    were replaced (0 for a network without Swin attention; already fused ones are not counted)."""
    targets = [module for module in network.modules() if type(module) is WindowAttention]
    for attention in targets:  # only ``forward`` differs: the same module keeps its parameters and buffers
        attention.__class__ = FusedWindowAttention
    return len(targets)
