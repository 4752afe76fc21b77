"""DINO (Caron et al. 2021): self-distillation with no labels, on SwinUNETR's 3D Swin encoder.

Student: the encoder's pooled embedding (the average of the last stage's tokens, standing in for ViT's
[CLS] token) through a :class:`~common.networks.heads.DINOHead`. Teacher: EMA copies of both (Sec. 3.1,
momentum cosine from 0.996 to 1, set by the schedule handler). Multi-crop (Sec. 3.1): the teacher sees the
global views only, the student every view; :class:`~common.losses.dino.DINOLoss` matches each teacher
global view to every other student view, with centring and a teacher temperature warmed up from 0.04 to
0.07 over 30 epochs (Sec. 3.2; ``teacher_temp`` is set by the schedule handler).
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses.dino import DINOLoss
from ..networks.heads import DINOHead
from ..networks.swin import SwinEncoder
from .base import SSLMethod, kl_part, make_teacher, views


def multi_crop_outputs(encoder: nn.Module, head: nn.Module, crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """``head(encoder(crop))`` for each crop, the crops (all of one size) run as one batch, as DINO's
    ``MultiCropWrapper`` does per resolution."""
    if not crops:
        return []
    return list(head(encoder(torch.cat(crops))).chunk(len(crops)))


class DINO(SSLMethod):
    """Defaults are the paper's (Sec. 3.1-3.2, App.): ``out_dim`` 65536, head hidden 2048, bottleneck 256,
    ``norm_last_layer``, student temperature 0.1, centre momentum 0.9."""

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.head = DINOHead(
            self.encoder.out_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer
        )
        self.teacher_encoder = make_teacher(self.encoder)
        self.teacher_head = make_teacher(self.head)
        self.criterion = DINOLoss(out_dim, student_temp, center_momentum)

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher_encoder, self.encoder), (self.teacher_head, self.head)]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        global_views, local_views = views(batch, "global"), views(batch, "local")
        with torch.no_grad():
            teacher = multi_crop_outputs(self.teacher_encoder, self.teacher_head, global_views)
        student = multi_crop_outputs(self.encoder, self.head, global_views)
        student += multi_crop_outputs(self.encoder, self.head, local_views)
        loss = self.criterion(student, teacher, self.teacher_temp)
        return {"loss": loss, "dino": loss.detach(), "dino_kl": kl_part(loss, self.criterion)}
