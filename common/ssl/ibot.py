"""iBOT (Zhou et al. 2022): image BERT pre-training with an online tokenizer, on SwinUNETR's 3D Swin encoder.

Two global views are block-masked for the student (a learnable ``mask_token`` replaces the masked patch
embeddings, :func:`~common.ssl.masking.masked_patches`) and seen unmasked by the EMA teacher (the online
tokenizer). The loss (Sec. 3.2) is ``lambda1 * L_[CLS] + lambda2 * L_MIM``:

- ``L_[CLS]``: DINO's cross-view loss (:class:`~common.losses.dino.DINOLoss`) between the teacher's
  unmasked and the student's masked global views; the encoder's pooled embedding (the mean of the
  last-stage tokens) takes the [CLS] token's role, since a Swin encoder has no [CLS] token. Local views,
  if the batch has any, join the student side unmasked (iBOT's multi-crop);
- ``L_MIM``: :class:`~common.losses.ibot.IBOTPatchLoss` between the teacher's and the student's patch
  tokens of the same view, over masked tokens only. The patch tokens are those of the stride-16 stage
  (:data:`~common.ssl.masking.TOKEN_STRIDE`, the third stage's output: 6³ = 216 tokens in a 96³ view), the
  token size of iBOT's ViT-S/16 and ViT-B/16 (Sec. 4); a linear ``patch_projection`` (EMA-copied to the
  teacher) maps their ``8 * feature_size`` channels to the head's input width, so that the one head stays
  shared by both losses.

Masks are drawn per image in blocks of ``mask_patch_size`` voxels (default 16), a multiple of 16 so that
each block covers whole stride-16 tokens and a token is masked exactly when its voxels are. The ratio
follows iBOT's random MIM (``--pred_ratio 0 0.3 --pred_ratio_var 0 0.2``): with probability
``mask_probability`` (0.5) an image is masked with a ratio drawn uniformly from ``mask_ratio`` ((0.1, 0.5)),
otherwise not at all; a fixed ratio r is ``mask_ratio=(r, r), mask_probability=1``. One head is shared by
the [CLS] and the patch tokens, iBOT's default (``out_dim`` 8192, Sec. 4 and App.).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..losses.dino import DINOLoss
from ..losses.ibot import IBOTPatchLoss
from ..networks.heads import DINOHead
from ..networks.swin import SwinEncoder, tokens
from .base import SSLMethod, kl_part, make_teacher, views
from .dino import multi_crop_outputs
from .masking import TOKEN_STRIDE, check_mask_patch_size, masked_patches, patch_mask_for, token_mask


def head_outputs(
    head: nn.Module, projection: nn.Module, last_map: torch.Tensor, patch_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's ``(B, K)`` output for the pooled embedding of the ``last_map`` ([CLS] role) and
    ``(B, N, K)`` for the projected tokens of the stride-16 ``patch_map``, in one pass."""
    cls = tokens(last_map).mean(1, keepdim=True)
    out = head(torch.cat([cls, projection(tokens(patch_map))], dim=1))
    return out[:, 0], out[:, 1:]


class IBOT(SSLMethod):
    """Defaults are the paper's (Sec. 4, App.): ``out_dim`` 8192 shared by both losses, head hidden 2048,
    bottleneck 256, student temperature 0.1, centre momenta 0.9, ``lambda1 = lambda2 = 1``."""

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
        mask_ratio: Sequence[float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        mask_patch_size: int = TOKEN_STRIDE,
        cls_weight: float = 1.0,
        patch_weight: float = 1.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_mask_patch_size(mask_patch_size)
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.mask_token = nn.Parameter(torch.zeros(feature_size))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.patch_stage = self.encoder.feature_index(TOKEN_STRIDE)
        self.patch_projection = nn.Linear(
            self.encoder.feature_channels[self.patch_stage], self.encoder.out_dim
        )
        self.head = DINOHead(
            self.encoder.out_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer
        )
        self.teacher_encoder = make_teacher(self.encoder)
        self.teacher_patch_projection = make_teacher(self.patch_projection)
        self.teacher_head = make_teacher(self.head)
        self.cls_criterion = DINOLoss(out_dim, student_temp, center_momentum)
        self.patch_criterion = IBOTPatchLoss(out_dim, student_temp, center_momentum)
        self.mask_ratio, self.mask_probability = tuple(mask_ratio), mask_probability
        self.mask_patch_size = mask_patch_size
        self.cls_weight, self.patch_weight = cls_weight, patch_weight

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.teacher_encoder, self.encoder),
            (self.teacher_patch_projection, self.patch_projection),
            (self.teacher_head, self.head),
        ]

    def draw_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(B, *patch_grid)`` block mask, its ratio drawn per image (random MIM)."""
        low, high = self.mask_ratio
        masks = []
        for image in x.split(1):
            masked = bool(torch.rand(()) < self.mask_probability)
            ratio = float(torch.empty(()).uniform_(low, high)) if masked else 0.0
            masks.append(patch_mask_for(image, ratio, self.mask_patch_size))
        return torch.cat(masks)

    def student_feature_maps(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The student encoder's feature maps of ``x`` with the ``mask``-ed patches replaced."""
        with masked_patches(self.encoder, mask, self.mask_token):
            return self.encoder.features(x)

    def distillation_losses(
        self,
        x: torch.Tensor,
        student_maps: Sequence[torch.Tensor],
        mask: torch.Tensor,
        num_views: int,
        local_views: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_[CLS], L_MIM)`` for the ``num_views`` global views stacked in ``x`` (teacher input, unmasked),
        the student's feature maps of their masked copies and the patch ``mask``."""
        with torch.no_grad():
            teacher_maps = self.teacher_encoder.features(x)
            teacher_cls, teacher_patch = head_outputs(
                self.teacher_head,
                self.teacher_patch_projection,
                teacher_maps[-1],
                teacher_maps[self.patch_stage],
            )
        student_cls, student_patch = head_outputs(
            self.head, self.patch_projection, student_maps[-1], student_maps[self.patch_stage]
        )
        student_cls_views = list(student_cls.chunk(num_views))
        student_cls_views += multi_crop_outputs(self.encoder, self.head, list(local_views))
        cls_loss = self.cls_criterion(
            student_cls_views, list(teacher_cls.chunk(num_views)), self.teacher_temp
        )
        patch_loss = self.patch_criterion(
            list(student_patch.chunk(num_views)),
            list(teacher_patch.chunk(num_views)),
            list(token_mask(mask).chunk(num_views)),
            self.teacher_temp,
        )
        return cls_loss, patch_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        global_views = views(batch, "global")
        x = torch.cat(global_views)
        mask = self.draw_mask(x)
        student_maps = self.student_feature_maps(x, mask)
        cls_loss, patch_loss = self.distillation_losses(
            x, student_maps, mask, len(global_views), views(batch, "local")
        )
        loss = self.cls_weight * cls_loss + self.patch_weight * patch_loss
        return {
            "loss": loss,
            "cls": cls_loss.detach(),
            "patch": patch_loss.detach(),
            "cls_kl": kl_part(cls_loss, self.cls_criterion),
            "patch_kl": kl_part(patch_loss, self.patch_criterion),
        }
