"""Checking that the ranks of a distributed run hold the same weights.

``DistributedDataParallel`` keeps its replicas equal only as long as every parameter and buffer update goes
through it (gradients averaged by all-reduce, buffers broadcast from rank 0). A rank-local update (an EMA
teacher fed from a rank-local quantity, a centre not all-reduced, a sampler that leaves one rank without a
batch) makes them drift silently. :func:`write_weights_digest`, called on every rank after training, writes
one digest per tensor; :func:`compare_weights_digests` names the tensors whose digests differ.

One kind of tensor is rank-local by design and left out of the comparison: the running statistics of a
plain ``BatchNorm`` (not ``SyncBatchNorm``, which needs a GPU). Each rank updates them from its own batch;
DDP overwrites them with rank 0's at the start of every forward pass, so training uses rank 0's, but after
the last step every rank holds its own (MoCo v3's projector and predictor on CPU; on GPUs its
``multi_gpu_train.json`` converts them to ``SyncBatchNorm``, whose statistics are compared).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..atomic import atomic_path
from ..ssl.base import unwrap


def weights_digest(network: torch.nn.Module) -> dict[str, str]:
    """``{name: "<dtype> <shape> <sha256 of the bytes>"}`` for every tensor of ``network``'s state dict
    (unwrapped from ``DistributedDataParallel``, so the names do not depend on the wrapper)."""
    digest = {}
    for name, tensor in unwrap(network).state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        digest[name] = f"{tensor.dtype} {tuple(tensor.shape)} {hashlib.sha256(data).hexdigest()}"
    return digest


def rank_local_tensors(network: torch.nn.Module) -> list[str]:
    """The state-dict names of the running statistics of plain (not synchronised) batch norms."""
    names = []
    for prefix, module in unwrap(network).named_modules():
        if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            names += [f"{prefix}.{stat}".lstrip(".") for stat in ("running_mean", "running_var")]
    return names


def write_weights_digest(network: torch.nn.Module, path_pattern: str | os.PathLike) -> Path:
    """Write this rank's ``{"tensors": weights_digest, "rank_local": rank_local_tensors}`` as JSON to
    ``path_pattern`` formatted with ``rank`` (``0`` outside a distributed run), e.g.
    ``".../weights_rank{rank}.json"``; returns the path.

    Usable from a config after training, e.g. in a mixin ``{"+run": ["$common.engines.write_weights_digest(
    @network, '/tmp/weights_rank{rank}.json')"]}``, which MONAI appends to the ``run`` list."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    path = Path(str(path_pattern).format(rank=rank))
    record = {"tensors": weights_digest(network), "rank_local": rank_local_tensors(network)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return path


def compare_weights_digests(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The tensor names whose digests differ between the files ``paths`` (or that some file lacks), the
    rank-local batch-norm statistics left out; empty when every file holds the same weights."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    digests = [r["tensors"] for r in records]
    rank_local = set().union(*(r["rank_local"] for r in records))
    names = sorted(set().union(*digests) - rank_local)
    return [name for name in names if len({d.get(name) for d in digests}) > 1]
