"""The SwinUNETR pre-training recipe (Tang et al., "Self-Supervised Pre-Training of Swin Transformers for 3D
Medical Image Analysis", CVPR 2022, Sec. 3.2): three proxy tasks on one Swin encoder.

Two views of each sample (``global_0`` and ``global_1``; with one global view, two copies of it, as the
official code pairs two augmentations of the same sub-volume) are each

1. rotated by a random right angle about the superior-inferior axis (``rotation_plane``), label ``r``;
2. cut out: random boxes covering up to ``max_cutout_ratio`` (30 %) of the volume are replaced by noise
   (:mod:`common.transforms.cutout`).

The encoder sees the cut-out views; its stride-32 feature map feeds

- a reconstruction head (SimMIM's 1x1 convolution + pixel shuffle,
  :class:`common.ssl.simmim.ReconstructionHead`) that inpaints the rotated view before cut-out:
  ``L_inpaint = || X - X_hat ||_1`` over all voxels (Eq. 1);
- a linear rotation head on the pooled embedding: ``L_rot = -sum_r y_r log softmax(p)_r`` over the 4
  rotations (Eq. 2);
- a linear projection head on the pooled embedding (``contrastive_dim`` 512, as the official code) and the
  NT-Xent loss between the two views of every sample, temperature 0.5 (Eq. 3).

``L = lambda_1 L_inpaint + lambda_2 L_contrast + lambda_3 L_rot`` with every lambda 1 (Eq. 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.ntxent import nt_xent_loss
from ..networks.swin import SwinEncoder
from ..transforms.cutout import cutout, random_cutout_mask
from ..transforms.rotation import num_rotations, random_rotation_labels, rotate_batch
from .base import SSLMethod, views
from .simmim import ReconstructionHead


class SwinUNETRRecipe(SSLMethod):
    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        rotation_plane: Sequence[int] = (0, 1),
        max_cutout_ratio: float = 0.3,
        min_cutout_block: float = 0.05,
        max_cutout_block: float = 0.25,
        cutout_fill: str = "noise",
        contrastive_dim: int = 512,
        temperature: float = 0.5,
        inpainting_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        rotation_weight: float = 1.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.rotation_head = nn.Linear(self.encoder.out_dim, num_rotations("axial4"))
        self.contrastive_head = nn.Linear(self.encoder.out_dim, contrastive_dim)
        self.reconstruction_head = ReconstructionHead(self.encoder.out_dim, in_channels, spatial_dims)
        self.rotation_plane = tuple(rotation_plane)
        self.cutout_args = {
            "max_ratio": max_cutout_ratio,
            "min_block": min_cutout_block,
            "max_block": max_cutout_block,
        }
        self.cutout_fill, self.temperature = cutout_fill, temperature
        self.weights = {
            "inpainting": inpainting_weight,
            "contrastive": contrastive_weight,
            "rotation": rotation_weight,
        }

    def corrupted_views(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rotated, cut_out, labels)``: the two views of every sample stacked view-major ``(2B, ...)``,
        rotated by random labels, and the same with random boxes cut out."""
        first, second = (views(batch, "global") * 2)[:2]
        x = torch.cat([first, second])
        labels = random_rotation_labels(x.shape[0], "axial4", device=x.device)
        rotated = rotate_batch(x, labels, self.rotation_plane)
        mask = random_cutout_mask(x.shape[0], x.shape[2:], **self.cutout_args, device=x.device)
        return rotated, cutout(rotated, mask, self.cutout_fill), labels

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rotated, corrupted, labels = self.corrupted_views(batch)
        feature_map = self.encoder.features(corrupted)[-1]
        embedding = feature_map.flatten(2).mean(-1)  # the encoder's pooled embedding (SwinEncoder.forward)
        terms = {
            "inpainting": F.l1_loss(self.reconstruction_head(feature_map), rotated),
            "contrastive": nt_xent_loss(*self.contrastive_head(embedding).chunk(2), self.temperature),
            "rotation": F.cross_entropy(self.rotation_head(embedding), labels),
        }
        loss = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}
