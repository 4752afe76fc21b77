"""Coda (papers/000, Sec. 2): multi-organ radiograph pre-training with an inter-organ and an intra-organ
branch sharing one student encoder and its EMA teacher.

- Inter-organ (Eq. 1): the batch is augmented twice; view ``global_0`` goes through the student and
  ``h_org``, view ``global_1`` through the teacher and ``h'_org``. The multi-viewed batch (student rows
  first, then the teacher's, computed without gradient) enters
  :func:`~common.losses.supcon.supervised_contrastive_loss` with the organ labels. ``anchors="all"`` (the
  paper: "for any sample x_i within the multi-viewed batch"): all 2B rows are anchors, the teacher rows
  carrying no gradient (their terms still pull the student rows through the positives and negatives);
  ``anchors="student"``: the B student rows only.
- Intra-organ (Eq. 2): the teacher sees the augmented full image (view ``full``: the whole radiograph,
  resized, not cropped; :func:`~common.transforms.coda_transforms`) through ``h'_ins``, the student each
  multi-scale crop (``local_0 .. local_{N-1}``, paper: 12 crops of 96 px, scale 0.4-0.7) through
  ``h_ins``; both softmax-normalised, the teacher centred and sharpened as in DINO, and the loss is the
  cross-entropy averaged over the crops (:class:`~common.losses.dino.DINOLoss`, every crop paired with the
  full view).
- ``L = L_inter + L_intra``; ``use_inter`` / ``use_intra`` switch a branch off (the paper's ablation,
  Table 2).

Heads (Sec. 3): 3-layer MLP, hidden 2048, l2-normalisation, weight-normalised last layer of ``out_dim``
(65,536) outputs: :class:`~common.networks.heads.DINOHead`. The teacher encoder is exported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses.dino import DINOLoss
from ..losses.supcon import supervised_contrastive_loss
from ..networks.heads import DINOHead
from .base import SSLMethod, make_teacher, views
from .dino import multi_crop_outputs

ANCHORS = ("all", "student")


class Coda(SSLMethod):
    """``encoder``: any encoder of the collection (paper: ConvNeXt-B); the batch carries the views
    (``global_0``, ``global_1``, ``full``, ``local_*``) and the integer organ label under ``label_key``;
    ``anchors``: ``"all"`` (Eq. 1, the default) or ``"student"``."""

    def __init__(
        self,
        encoder: nn.Module,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        temperature: float = 0.1,
        denominator: str = "negatives",
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        use_inter: bool = True,
        use_intra: bool = True,
        label_key: str = "region_label",
        anchors: str = "all",
    ) -> None:
        super().__init__()
        if not (use_inter or use_intra):
            raise ValueError("Coda needs at least one branch: set use_inter or use_intra to true")
        if anchors not in ANCHORS:
            raise ValueError(f"Coda: anchors must be one of {ANCHORS}, got {anchors!r}")
        self.anchors = anchors
        self.use_inter, self.use_intra, self.label_key = use_inter, use_intra, label_key
        self.temperature, self.denominator = temperature, denominator
        self.encoder = encoder
        self.teacher_encoder = make_teacher(encoder)
        dim = encoder.out_dim
        self.org_head = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim) if use_inter else None
        self.ins_head = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim) if use_intra else None
        self.teacher_org_head = make_teacher(self.org_head) if use_inter else None
        self.teacher_ins_head = make_teacher(self.ins_head) if use_intra else None
        self.intra_criterion = DINOLoss(out_dim, student_temp, center_momentum) if use_intra else None

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.teacher_encoder, self.encoder)]
        if self.use_inter:
            pairs.append((self.teacher_org_head, self.org_head))
        if self.use_intra:
            pairs.append((self.teacher_ins_head, self.ins_head))
        return pairs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = {}
        if self.use_inter:
            losses["inter"] = self.inter_organ_loss(batch)
        if self.use_intra:
            losses["intra"] = self.intra_organ_loss(batch)
        total = sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def inter_organ_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 1 on the multi-viewed batch: ``global_0`` through the student, ``global_1`` through the
        teacher."""
        if self.label_key not in batch:
            raise KeyError(f"Coda's inter-organ branch needs the organ label {self.label_key!r} in the batch")
        student_view, teacher_view = views(batch, "global")[:2]
        labels = batch[self.label_key].reshape(-1)
        student = self.org_head(self.encoder(student_view))
        with torch.no_grad():
            teacher = self.teacher_org_head(self.teacher_encoder(teacher_view))
        return supervised_contrastive_loss(
            torch.cat([student, teacher]),
            torch.cat([labels, labels]),
            self.temperature,
            num_anchors=None if self.anchors == "all" else student.shape[0],
            denominator=self.denominator,
        )

    def intra_organ_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 2: the teacher's view of the augmented full image (``full``) against every local crop."""
        if "full" not in batch:
            raise KeyError(
                "Coda's intra-organ branch needs the teacher's full-image view 'full' in the batch "
                "(common.transforms.coda_transforms makes it)"
            )
        with torch.no_grad():
            teacher = self.teacher_ins_head(self.teacher_encoder(batch["full"]))
        crops = multi_crop_outputs(self.encoder, self.ins_head, views(batch, "local"))
        return self.intra_criterion(crops, [teacher], self.teacher_temp, exclude_same_view=False)
