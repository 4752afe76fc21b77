"""The one Ignite trainer every self-supervised method runs on.

A method (``common.ssl``) maps a batch of views to a dict of named losses; :class:`SSLTrainer` does the
rest of a step: move the views (a dict) to the device, call the method through the ``inferer`` (MONAI's
``SimpleInferer``: ``method(views)``), autocast (AMP) where asked, back-propagate ``"loss"``, clip the
gradients (the global norm, or each parameter's norm as DINO's and iBOT's code do), fire
``IterationEvents.BACKWARD_COMPLETED`` (where :class:`~common.engines.FreezeLastLayerHandler` drops the
last layer's gradients, as DINO's ``cancel_gradients_last_layer`` does after clipping) and step the
optimiser. Everything else (schedules, EMA teacher, checkpoints, encoder export,
MLflow) is a handler; the trainer attaches one itself, :class:`~common.engines.NonFiniteLossGuard`, so every
method stops on a non-finite loss, before its backward pass, naming the iteration and every term.
"""

from __future__ import annotations

import torch
from monai.engines import IterationEvents, Trainer
from monai.inferers import Inferer, SimpleInferer
from torch.nn.utils import clip_grad_norm_

from .handlers import NonFiniteLossGuard

CLIP_GRAD_MODES = ("global", "per_parameter")


def clip_grad_per_parameter_(parameters, max_norm: float, eps: float = 1e-6) -> None:
    """Scale each gradient ``g`` whose norm exceeds ``max_norm`` by ``max_norm / (||g||_2 + eps)``, each
    parameter on its own (DINO's and iBOT's ``utils.clip_gradients``; Caron et al. 2021 clip at 3.0), in
    place; parameters without a gradient are skipped."""
    for p in parameters:
        if p.grad is not None:  # min(1, coef) as a tensor: no host synchronisation per parameter
            p.grad.detach().mul_((max_norm / (p.grad.detach().norm(2) + eps)).clamp(max=1.0))


class SSLTrainer(Trainer):
    """``engine.state.output`` after each iteration: ``[{name: detached loss}]`` (``"loss"`` the total), a
    one-item list, the layout MONAI's handlers read with ``from_engine(["loss"], first=True)``.

    Once the method has returned its losses the trainer sets ``engine.state.output`` to ``[losses]`` and
    fires ``IterationEvents.LOSS_COMPLETED`` (as MONAI's ``SupervisedTrainer`` does), where its
    :class:`~common.engines.NonFiniteLossGuard` checks them before the backward pass.

    ``clip_grad_norm`` (``None`` or 0: no clipping) with ``clip_grad_mode`` ``"global"``: the norm of all
    gradients together (``torch.nn.utils.clip_grad_norm_``); ``"per_parameter"``: each parameter's
    gradient norm (:func:`clip_grad_per_parameter_`, DINO's and iBOT's code). Gradients are unscaled first
    under AMP.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch_length: int | None = None,
        inferer: Inferer | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_mode: str = "global",
        amp: bool = False,
        train_handlers=None,
        non_blocking: bool = False,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.optimizer = optimizer
        self.inferer = inferer or SimpleInferer()
        if clip_grad_mode not in CLIP_GRAD_MODES:
            raise ValueError(f"clip_grad_mode must be one of {CLIP_GRAD_MODES}, got {clip_grad_mode!r}")
        self.clip_grad_norm, self.clip_grad_mode = clip_grad_norm, clip_grad_mode
        self.grad_scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp)
        NonFiniteLossGuard().attach(self)

    def _iteration(self, engine: SSLTrainer, batchdata: dict) -> list[dict[str, torch.Tensor]]:
        batch = {
            k: v.to(engine.state.device, non_blocking=engine.non_blocking)
            for k, v in batchdata.items()
            if isinstance(v, torch.Tensor)
        }
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(engine.state.device).type, enabled=engine.amp):
            losses = engine.inferer(batch, engine.network)
        engine.state.output = [losses]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.grad_scaler.scale(losses["loss"]).backward()
        if engine.clip_grad_norm:
            engine.grad_scaler.unscale_(engine.optimizer)
            clip = clip_grad_norm_ if engine.clip_grad_mode == "global" else clip_grad_per_parameter_
            clip(engine.network.parameters(), engine.clip_grad_norm)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.grad_scaler.step(engine.optimizer)
        engine.grad_scaler.update()
        return [{k: v.detach().float() for k, v in losses.items()}]
