"""SMIT (Jiang et al., MICCAI 2022): self-distilled masked image transformer, on SwinUNETR's 3D Swin encoder.

Two global views are block-masked for the student (ratio 0.7, a learnable ``mask_token`` in place of the
masked patch embeddings) and seen unmasked by the EMA teacher. Three losses (Sec. 2):

- ``reconstruction``: masked image modelling, the l1 distance on masked voxels between the views and
  their prediction from the student's last-stage features (SimMIM's head and loss,
  :class:`~common.ssl.simmim.ReconstructionHead`, :func:`~common.losses.simmim.masked_l1_loss`);
- ``patch``: masked patch-token self-distillation, iBOT's ``L_MIM`` on the stride-16 tokens of the same
  view (the third stage's output, projected to the head's width as in :class:`~common.ssl.ibot.IBOT`;
  :class:`~common.losses.ibot.IBOTPatchLoss`);
- ``global``: global self-distillation, DINO's loss between the teacher's unmasked view and the student's
  masked other view, on the pooled embedding ([CLS] role) (:class:`~common.losses.dino.DINOLoss`).

``loss = reconstruction_weight * reconstruction + patch_weight * patch + global_weight * global``, with the
weights of the authors' code (``train_self_supervised.py``: ``rec_w`` 1, ``patch_w`` 0.1, ``cls_w`` 0.1).
The teacher temperature warm-up and cosine EMA momentum come from the schedule handler. Masks are drawn in
blocks of ``mask_patch_size`` = 16 voxels, as the authors' code does (a multiple of 16 is required, so that a
stride-16 token is masked exactly when its voxels are): a 96³ view has 216 mask cells, 151 of them masked
at ratio 0.7. The [CLS] and patch tokens share one head, as in :class:`~common.ssl.ibot.IBOT` (the authors'
code defaults to two heads).
"""

from __future__ import annotations

import torch

from ..losses.simmim import masked_l1_loss
from ..networks.swin import PATCH_SIZE
from ..transforms.masking import upsample_mask
from .base import kl_part, views
from .ibot import IBOT
from .masking import TOKEN_STRIDE
from .simmim import ReconstructionHead


class SMIT(IBOT):
    """iBOT's networks and distillation losses with a fixed ``mask_ratio`` for every image and SimMIM's
    reconstruction head on the student."""

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        mask_ratio: float = 0.7,
        mask_patch_size: int = TOKEN_STRIDE,
        reconstruction_weight: float = 1.0,
        patch_weight: float = 0.1,
        global_weight: float = 0.1,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            feature_size,
            spatial_dims,
            out_dim,
            hidden_dim,
            bottleneck_dim,
            norm_last_layer,
            student_temp,
            center_momentum,
            mask_ratio=(mask_ratio, mask_ratio),
            mask_probability=1.0,
            mask_patch_size=mask_patch_size,
            cls_weight=global_weight,
            patch_weight=patch_weight,
            use_checkpoint=use_checkpoint,
        )
        self.reconstruction_head = ReconstructionHead(self.encoder.out_dim, in_channels, spatial_dims)
        self.reconstruction_weight = reconstruction_weight

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        global_views = views(batch, "global")
        x = torch.cat(global_views)
        mask = self.draw_mask(x)
        student_maps = self.student_feature_maps(x, mask)
        prediction = self.reconstruction_head(student_maps[-1])
        reconstruction = masked_l1_loss(prediction, x, upsample_mask(mask, PATCH_SIZE))
        global_loss, patch_loss = self.distillation_losses(x, student_maps, mask, len(global_views))
        loss = (
            self.reconstruction_weight * reconstruction
            + self.patch_weight * patch_loss
            + self.cls_weight * global_loss
        )
        return {
            "loss": loss,
            "reconstruction": reconstruction.detach(),
            "patch": patch_loss.detach(),
            "global": global_loss.detach(),
            "global_kl": kl_part(global_loss, self.cls_criterion),
            "patch_kl": kl_part(patch_loss, self.patch_criterion),
        }
