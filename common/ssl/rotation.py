"""Rotation prediction (Gidaris, Singh and Komodakis, ICLR 2018) on a 3D (or 2D) Swin encoder.

Each view is rotated by one of K right angles (Sec. 2: K = 4, rotations by 0, 90, 180 and 270 degrees; in
3D about the superior-inferior axis, or optionally the 24 rotations of the cube), the encoder's pooled
embedding goes through a classifier (a linear layer, as after RotNet's global average pooling, or a small
MLP), and the loss is the cross-entropy of the rotation label averaged over images and rotations
(Sec. 2, Eq. 1-2):

    L = -1/(N K) * sum_i sum_y log softmax(F(g(X_i | y)))_y.

With ``all_rotations`` (the default) all K rotated copies of every view enter the same batch, which the
paper found clearly better than one random rotation per image (Sec. 3, implementation details); otherwise
each view gets one rotation drawn at random and the loss is the batch mean of its cross-entropy. Rotation
accuracy is reported as a detached term (not back-propagated: the trainer uses ``"loss"`` only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..networks.heads import mlp
from ..networks.swin import SwinEncoder
from ..transforms.rotation import all_rotations, num_rotations, random_rotation_labels, rotate_batch
from .base import SSLMethod, views


class RotationPrediction(SSLMethod):
    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        rotations: str = "axial4",
        rotation_plane: Sequence[int] = (0, 1),
        all_rotations: bool = True,
        head_layers: int = 1,
        head_hidden_dim: int = 512,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder(in_channels, feature_size, spatial_dims, use_checkpoint)
        self.classifier = mlp(self.encoder.out_dim, head_hidden_dim, num_rotations(rotations), head_layers)
        self.rotations, self.rotation_plane, self.all_rotations = (
            rotations,
            tuple(rotation_plane),
            all_rotations,
        )

    def rotated_views(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotated global views of ``batch`` and their rotation labels."""
        x = torch.cat(views(batch, "global"))
        if self.all_rotations:
            return all_rotations(x, self.rotation_plane, self.rotations)
        labels = random_rotation_labels(x.shape[0], self.rotations, device=x.device)
        return rotate_batch(x, labels, self.rotation_plane, self.rotations), labels

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, labels = self.rotated_views(batch)
        logits = self.classifier(self.encoder(x))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "rotation": loss.detach(), "rotation_accuracy": accuracy.detach()}
