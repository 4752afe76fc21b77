"""LeADER (papers/001, Sec. 3, Algorithm 1): a student learns an anatomy-disease entangled representation
by distilling two frozen expert teachers.

The student ``S`` (paper: Swin-B; here any encoder of the collection, 2D Swin by default) gives ``E_DA``;
the disease head ``h_D`` and the anatomy head ``h_A`` (2-layer MLPs) map it to the embedding spaces of the
disease expert ``T_D`` and the anatomy expert ``T_A``, whose output widths set the heads' output widths
(read by one forward pass of each teacher at construction). ``L_D = l_s(T_D(I), h_D(S(I)))``,
``L_A = l_s(T_A(I), h_A(S(I)))`` (Eq. 1-2), ``L = L_D + L_A`` (Eq. 3), ``l_s`` MSE by default
(:func:`~common.losses.distillation.distillation_loss`).

Algorithm 1's two stages: in stage 1 only the disease branch trains, on whole images (lines 8-13); in
stage 2 both branches train on (image, patch) pairs, each loss taken on the image and on the patch (lines
15-27). ``stage`` is an attribute the :class:`~common.engines.LeADERStageHandler` sets each epoch. Patches
come from disease boxes, random patches from healthy images (:class:`~common.transforms.BoxPatchd`).

Stage 1 reads an image-only datalist (the paper's image datasets D_I) and stage 2 the image+patch one
(D_IP); the stage handler switches the trainer's data source with the stage, and Algorithm 1's rounds
(one stage-1 epoch, then one stage-2 epoch) may alternate instead of running the two stages as blocks.

A teacher gives its *embedding* (the paper's ``E_D = T_D(I)``, ``E_A = T_A(I)``): for a classifier of the
collection (children ``encoder`` and ``head``, eager or TorchScript, e.g. the trained
``radiograph_classification`` bundle) that is the embedding its head reads (:class:`ClassifierEmbedding`),
the encoder's penultimate features, never its logits. Teachers stay frozen: no gradient, ``eval`` mode
whatever the student's mode, weights unchanged; they are loaded by :func:`load_teacher` from a bundle
directory, a TorchScript file or an encoder file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..losses.distillation import distillation_loss
from ..networks.classifier import embed
from ..networks.encoders import build_encoder, encoder_from_file
from ..networks.heads import mlp
from ..networks.pretrained import EncoderLoadError, read_encoder_file, save_encoder, state_dict_problems
from .base import SSLMethod

STAGES = (1, 2)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with every parameter's ``requires_grad`` off."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def is_classifier(module: nn.Module) -> bool:
    """Whether ``module`` is a classifier of the collection: an encoder and a linear head on its embedding
    (:class:`~common.networks.classifier.EncoderClassifier`, or its TorchScript export)."""
    children = dict(module.named_children())
    return "encoder" in children and "head" in children


class ClassifierEmbedding(nn.Module):
    """The embedding a classifier's head reads: its encoder's pooled output, or the [CLS] / [CLS] + mean
    patch view the classifier was built with (:func:`~common.networks.classifier.embed`). This is the
    disease expert's ``E_D`` of LeADER (papers/001, Fig. 2 and Eq. 2), its penultimate features."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = classifier.encoder
        self.view = str(getattr(classifier, "features", "pooled"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.encoder, x, self.view)


def expert_embedding(module: nn.Module) -> nn.Module:
    """The module giving an expert's embedding: :class:`ClassifierEmbedding` of a classifier, any other
    module (an encoder, an exported embedding model) as it is."""
    return ClassifierEmbedding(module) if is_classifier(module) else module


def load_teacher(path: str | os.PathLike) -> nn.Module:
    """A frozen expert teacher from ``path``, as the module giving its embedding (:func:`expert_embedding`):

    - a bundle directory: its ``configs/inference.json`` ``network_def`` with ``models/model.pt`` loaded
      (strict key check);
    - a TorchScript file (``torch.jit.save``, e.g. a bundle's ``models/model.ts``);
    - an encoder file of the collection (its meta names the encoder, see ``common.networks.encoders``).
    """
    path = Path(path)
    if path.is_dir():
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(path / "configs" / "inference.json"))
        parser["bundle_root"] = str(path)
        network = parser.get_parsed_content("network_def")
        state, _ = read_encoder_file(path / "models" / "model.pt")
        problems = state_dict_problems(network.state_dict(), state)
        if problems:
            raise EncoderLoadError(
                "\n".join([f"{path}/models/model.pt does not fit the bundle's network_def", *problems])
            )
        network.load_state_dict(state)
        return freeze(expert_embedding(network))
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher not found: {path} (give a bundle directory, a TorchScript file or an encoder file)"
        )
    try:
        return freeze(expert_embedding(torch.jit.load(str(path), map_location="cpu")))
    except RuntimeError:
        return freeze(encoder_from_file(path))


def write_stand_in_teacher(path: str | os.PathLike, name: str, config: dict, seed: int = 0) -> str:
    """Write a randomly initialised encoder (seeded, so every process writes the same weights) as an encoder
    file marked ``stand_in``, and return its path. For smoke checks of the bundle only: it knows nothing,
    a real run takes trained experts (see the bundle's docs)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = build_encoder(name, **config)
    save_encoder(encoder, path, encoder=name, encoder_config=dict(config), stand_in=True)
    return str(path)


def as_teacher(teacher: nn.Module | str | os.PathLike) -> nn.Module:
    """A module's :func:`expert_embedding`, frozen, or :func:`load_teacher` of a path."""
    return freeze(expert_embedding(teacher)) if isinstance(teacher, nn.Module) else load_teacher(teacher)


def teacher_embedding(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` embedding of a teacher (a module from :func:`as_teacher`, which gives embeddings, not
    logits): the first element of a tuple/list output, spatial maps averaged over space."""
    with torch.no_grad():
        out = teacher(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.flatten(2).mean(-1) if out.ndim > 2 else out


class LeADER(SSLMethod):
    """``encoder``: the student; ``disease_teacher`` / ``anatomy_teacher``: modules or paths for
    :func:`as_teacher` (a classifier teaches its embedding, :class:`ClassifierEmbedding`); ``input_shape``:
    one input ``(C, *spatial)`` used to read the widths of the teachers' embeddings, the heads' outputs."""

    def __init__(
        self,
        encoder: nn.Module,
        disease_teacher: nn.Module | str | os.PathLike,
        anatomy_teacher: nn.Module | str | os.PathLike,
        input_shape: Sequence[int],
        head_hidden_dim: int = 2048,
        loss: str = "mse",
        stage: int = 1,
        image_key: str = "image",
        patch_key: str = "patch",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.disease_teacher = as_teacher(disease_teacher)
        self.anatomy_teacher = as_teacher(anatomy_teacher)
        probe = torch.zeros(2, *input_shape)
        disease_dim = teacher_embedding(self.disease_teacher, probe).shape[1]
        anatomy_dim = teacher_embedding(self.anatomy_teacher, probe).shape[1]
        self.disease_head = mlp(encoder.out_dim, head_hidden_dim, disease_dim, num_layers=2)
        self.anatomy_head = mlp(encoder.out_dim, head_hidden_dim, anatomy_dim, num_layers=2)
        self.loss_kind, self.image_key, self.patch_key = loss, image_key, patch_key
        self.stage = stage

    def train(self, mode: bool = True) -> LeADER:
        """Train mode for the student and heads; the teachers stay in eval mode."""
        super().train(mode)
        self.disease_teacher.eval()
        self.anatomy_teacher.eval()
        return self

    def _branch(
        self, teacher: nn.Module, head: nn.Module, x: torch.Tensor, student: torch.Tensor
    ) -> torch.Tensor:
        return distillation_loss(teacher_embedding(teacher, x), head(student), self.loss_kind)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.stage not in STAGES:
            raise ValueError(f"LeADER stage must be one of {STAGES}, got {self.stage}")
        image = batch[self.image_key]
        student_image = self.encoder(image)
        disease = self._branch(self.disease_teacher, self.disease_head, image, student_image)
        if self.stage == 1:
            return {"loss": disease, "disease": disease.detach()}
        if self.patch_key not in batch:
            raise KeyError(f"LeADER stage 2 needs image/patch pairs: no {self.patch_key!r} in the batch")
        patch = batch[self.patch_key]
        student_patch = self.encoder(patch)
        disease = disease + self._branch(self.disease_teacher, self.disease_head, patch, student_patch)
        anatomy = self._branch(self.anatomy_teacher, self.anatomy_head, image, student_image) + self._branch(
            self.anatomy_teacher, self.anatomy_head, patch, student_patch
        )
        return {"loss": disease + anatomy, "disease": disease.detach(), "anatomy": anatomy.detach()}
