"""Models Genesis (Zhou et al. 2021, MedIA): learn by restoring the original view from a corrupted one.

The corruption (local voxel shuffling, a non-linear intensity curve, in- or out-painting; Sec. 2.1) is
drawn in the data pipeline by :class:`~common.transforms.genesis.ModelsGenesisd`, which puts the corrupted
view beside the original as ``corrupted_0``. The restoration network is MONAI's SwinUNETR (the paper's
encoder-decoder is a 3D U-Net, Sec. 2.2) with as many output channels as input channels and a sigmoid on
the output (the reference code's ``OutputTransition``); its Swin encoder ``net.swinViT`` is the encoder
that is exported. The loss is the mean squared error to the original (Sec. 2.2, "L2 distance").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..networks.segmenter import build_segmenter
from ..transforms.genesis import CORRUPTED_KEY
from .base import SSLMethod, views


class ModelsGenesis(SSLMethod):
    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        # the network the encoder is later fine-tuned in, restoring the input's channels
        self.net = build_segmenter(
            "swinunetr", in_channels, in_channels, feature_size, spatial_dims, use_checkpoint=use_checkpoint
        )
        self.encoder = self.net.swinViT

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if CORRUPTED_KEY not in batch:
            raise KeyError(
                f"ModelsGenesis needs the corrupted view {CORRUPTED_KEY!r} beside 'global_0' "
                "(common.transforms.genesis.genesis_transforms)"
            )
        restored = torch.sigmoid(self.net(batch[CORRUPTED_KEY]))
        loss = F.mse_loss(restored, views(batch, "global")[0])
        return {"loss": loss, "restoration": loss.detach()}
