"""Global encoder features of a segmentation network, for linear probing.

SuPreM (Li et al., ICLR 2024) also judges its supervised pre-trained 3D segmentation networks by how well
their encoder alone tells tumour from non-tumour regions (ROC AUC of a classifier on encoder features).
:func:`encoder_features` gives that representation for the three MONAI architectures of
``common.networks.segmenter``: the deepest encoder feature map, global-average-pooled to one vector per
input. :class:`PooledFeatureMaps` gives the same pooled view to the convolutional encoders of the
collection.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import SegResNet, SwinUNETR, UNet
from torch import nn


class PooledFeatureMaps:
    """Mixin for the convolutional encoders whose ``features(x)`` returns the maps of their levels:
    ``forward`` is the last map averaged over space, ``tokens`` its positions as tokens; there is no [CLS]
    token. (TorchScript compiles the inherited ``forward``.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].flatten(2).mean(-1)

    def tokens(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """``(None, last map as tokens (B, N, out_dim))``."""
        return None, self.features(x)[-1].flatten(2).transpose(1, 2)


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside activation-checkpoint wrappers (``monai.networks.nets.CheckpointUNet``)."""
    while isinstance(module, ActivationCheckpointWrapper):
        module = module.module
    return module


def _unet_bottleneck(net: UNet, x: torch.Tensor) -> torch.Tensor:
    """Run only the down path of a MONAI UNet and return the bottom layer's output.

    ``UNet.model`` nests ``Sequential(down, SkipConnection(subblock), up)`` blocks; a ``SkipConnection``
    calls its submodule on its input unchanged, so following ``[0]`` (down) then ``[1].submodule`` down to
    the innermost module (the bottom layer) reproduces exactly what the bottom layer sees in ``net(x)``,
    without running the decoder.
    """
    block = _unwrap(net.model)
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        x = block[0](x)
        block = _unwrap(block[1].submodule)
    return block(x)


def encoder_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled deepest encoder feature map of a segmentation network: ``(B, C)``.

    What "encoder" means for each architecture:

    - ``SwinUNETR``: the Swin Transformer ``net.swinViT``, called as SwinUNETR's forward calls it
      (``net.swinViT(x, net.normalize)``); its last output, after the fourth stage and patch merging, at
      1/32 of the input size: ``C = 16 * feature_size``.
    - ``SegResNet``: ``net.encode(x)[0]``, the output of the last down block (1/8 of the input size for
      four levels): ``C = init_filters * 2 ** (len(blocks_down) - 1)``, 8 * init_filters for SuPreM's
      blocks_down (1, 2, 2, 4).
    - ``UNet`` (MONAI residual U-Net): the bottleneck, the innermost ``SkipConnection.submodule`` reached
      through ``model[1].submodule...``, computed by running only the down path: ``C = channels[-1]``,
      16 * feature_size for ``build_segmenter("unet", feature_size=...)``.

    Gradients flow as usual; wrap the call in ``torch.no_grad()`` and put ``net`` in eval mode to extract
    frozen features. Raises ``TypeError`` for any other module.
    """
    if isinstance(net, SwinUNETR):
        fmap = net.swinViT(x, net.normalize)[-1]
    elif isinstance(net, SegResNet):
        fmap = net.encode(x)[0]
    elif isinstance(net, UNet):
        fmap = _unet_bottleneck(net, x)
    else:
        raise TypeError(
            f"encoder_features: unsupported network type {type(net).__module__}.{type(net).__name__}; "
            "expected a MONAI SwinUNETR, SegResNet or UNet"
        )
    return fmap.flatten(2).mean(dim=2)
