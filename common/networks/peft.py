"""Parameter-efficient fine-tuning: LoRA and BitFit, and the four fine-tuning protocols of DINOv2-radiology.

DINOv2-radiology (papers/004, section 4.4, Table 9) adapts a classifier ``head(encoder(x))`` four ways and
reports the share of trainable parameters of each: full fine-tuning, linear probing (frozen encoder), LoRA
and BitFit.

- LoRA (Hu et al. 2021, eq. 3): a frozen ``nn.Linear`` ``W0`` gains a trainable low-rank update,
  ``h = W0 x + (alpha / r) B A x`` with ``A`` (r x in) random (Kaiming-uniform, as the authors' reference
  code) and ``B`` (out x r) zero, so an adapted network starts exactly as the pre-trained one. After
  training, ``W = W0 + (alpha / r) B A`` is merged back into a plain ``nn.Linear`` (no inference cost).
- BitFit (Ben Zaken et al. 2022): only the bias terms of the model train.

Wrapping a layer renames its weights (``qkv.weight`` becomes ``qkv.base.weight``); :func:`merge_lora`
restores the plain layout, so load encoder files before :func:`apply_lora` and export after merging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

PEFT_METHODS = ("full", "linear", "lora", "bitfit")


class LoRALinear(nn.Module):
    """``base(x) + scaling * B A dropout(x)`` with ``scaling = alpha / rank`` (Hu et al. 2021, eq. 3).

    ``base`` (the pre-trained layer) is frozen; ``lora_a`` (rank, in_features) is Kaiming-uniform and
    ``lora_b`` (out_features, rank) zero, so at initialisation the output equals ``base(x)`` exactly.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base, self.rank, self.alpha = base, int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        base.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(self.rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, self.rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``scaling * B A`` (out_features, in_features)."""
        return self.scaling * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_a.T @ self.lora_b.T
        return self.base(x) + self.scaling * update

    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W0 + scaling * B A`` and the base's bias (and trainability)."""
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        for name, parameter in merged.named_parameters():
            parameter.requires_grad_(getattr(base, name).requires_grad)
        return merged


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    """Whether the dotted module ``name`` ends with one of ``suffixes`` on a name boundary (``"proj"``
    matches ``blocks.0.attn.proj`` but not ``out_proj``)."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] = ("qkv",),
    dropout: float = 0.0,
) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` whose qualified name ends with one of ``target_modules``
    (``"qkv"``, ``"attn.proj"``, ``"fc1"``, ...) in a :class:`LoRALinear`, in place, and freeze every other
    parameter (only the LoRA ``A``/``B`` matrices train). Returns the wrapped module names.

    Raises ``ValueError`` listing the model's ``nn.Linear`` names when no name matches.
    """
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    wrapped_bases = {id(m.base) for m in model.modules() if isinstance(m, LoRALinear)}
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in wrapped_bases
    ]
    targets = [name for name in linears if _matches(name, target_modules)]
    if not targets:
        raise ValueError(
            f"apply_lora: no nn.Linear named like {list(target_modules)} in {type(model).__name__}; "
            f"its nn.Linear modules are {linears}"
        )
    for name in targets:
        _replace_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith((".lora_a", ".lora_b")))
    return targets


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every :class:`LoRALinear` of ``model`` by its merged ``nn.Linear``, in place; returns the
    merged module names (the state dict is back in the layout of the model before :func:`apply_lora`)."""
    names = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if "" in names:
        raise ValueError("merge_lora: the model itself is a LoRALinear; call its merge() instead")
    for name in names:
        _replace_module(model, name, model.get_submodule(name).merge())
    return names


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def apply_bitfit(model: nn.Module, keep_trainable: Sequence[str] = ()) -> list[str]:
    """BitFit (Ben Zaken et al. 2022): only parameters named ``*.bias`` train, plus those whose name starts
    with a prefix of ``keep_trainable`` (e.g. ``"head."``, the new classification layer); in place.
    Returns the trainable parameter names; ``ValueError`` when the model has no bias at all."""
    prefixes = tuple(keep_trainable)
    names = [name for name, _ in model.named_parameters()]
    if not any(_is_bias(name) for name in names):
        raise ValueError(f"apply_bitfit: {type(model).__name__} has no bias parameter to train")
    trainable = [name for name in names if _is_bias(name) or name.startswith(prefixes)]
    keep = set(trainable)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in keep)
    return trainable


def trainable_share(model: nn.Module) -> dict:
    """``{"trainable": n, "total": n, "share": trainable / total}`` over the model's (distinct) parameter
    elements, the efficiency figure of DINOv2-radiology's Table 9."""
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    if total == 0:
        raise ValueError(f"trainable_share: {type(model).__name__} has no parameters")
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return {"trainable": trainable, "total": total, "share": trainable / total}


def _unfreeze_head(model: nn.Module, head_prefix: str) -> None:
    head = [p for name, p in model.named_parameters() if name.startswith(head_prefix)]
    if not head:
        children = [name for name, _ in model.named_children()]
        raise ValueError(
            f"no parameter of {type(model).__name__} starts with head_prefix {head_prefix!r} "
            f"(its submodules: {children})"
        )
    for parameter in head:
        parameter.requires_grad_(True)


def apply_peft(
    model: nn.Module, method: str = "full", head_prefix: str = "head.", **lora_kwargs
) -> nn.Module:
    """Prepare a classifier ``head(encoder(x))`` (head parameters named ``head_prefix*``) for one of
    DINOv2-radiology's protocols, in place, and return it (for bundle configs):

    - ``"full"``: every parameter trains;
    - ``"linear"``: linear probing, only the head trains;
    - ``"lora"``: :func:`apply_lora` with ``lora_kwargs`` (rank, alpha, target_modules, dropout), and the
      head trains;
    - ``"bitfit"``: :func:`apply_bitfit`, the head trains too.
    """
    if method not in PEFT_METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose one of {PEFT_METHODS}")
    if lora_kwargs and method != "lora":
        raise ValueError(f"LoRA options {sorted(lora_kwargs)} given for method {method!r}")
    if method == "full":
        model.requires_grad_(True)
    elif method == "linear":
        model.requires_grad_(False)
    elif method == "lora":
        apply_lora(model, **lora_kwargs)
    else:
        apply_bitfit(model, keep_trainable=(head_prefix,))
    _unfreeze_head(model, head_prefix)
    return model
