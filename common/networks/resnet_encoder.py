"""MONAI's 3D ResNet as an encoder of the collection: the layout of MedicalNet's pre-trained ResNets
(Chen, Ma, Zheng, "Med3D", 2019; ``resnet_{10,18,34,50,...}.pth``, keys ``module.conv1.weight``, ...,
``module.layer4.*`` and a segmentation head ``conv_seg.*``), which MONAI's ``resnet`` classes reproduce with
``get_medicalnet_pretrained_resnet_args`` (shortcut type, down-sampling bias) and MedicalNet's first
convolution (kernel 7, stride 2). MONAI's ``ResNet`` down-samples in ``layer3`` and ``layer4`` where
MedicalNet's segmentation network dilates them instead (same weights, other feature-map sizes).

``features`` are the outputs of ``layer1`` to ``layer4`` (strides 4, 8, 16, 32 with the max pooling);
``forward`` is the last one averaged over space (MONAI's ``ResNet`` with ``feed_forward=False``).
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, get_inplanes, get_medicalnet_pretrained_resnet_args

# depth -> (block, layers) of MONAI's resnet10 ... resnet200
RESNET_LAYERS = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
    200: ("bottleneck", [3, 24, 36, 3]),
}


class ResNetEncoder(ResNet):
    """MONAI ``ResNet`` of ``depth`` with MedicalNet's first convolution, shortcut type and down-sampling
    bias, without classifier."""

    def __init__(self, depth: int = 10, in_channels: int = 1, spatial_dims: int = 3) -> None:
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNetEncoder: unknown depth {depth}; choose one of {sorted(RESNET_LAYERS)}")
        block, layers = RESNET_LAYERS[depth]
        bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(depth)
        super().__init__(
            block,
            layers,
            get_inplanes(),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type=shortcut_type,
            bias_downsample=bias_downsample,
            feed_forward=False,
        )
        expansion = 1 if block == "basic" else 4
        self.spatial_dims = spatial_dims
        self.feature_channels = tuple(c * expansion for c in get_inplanes())
        self.feature_strides = (4, 8, 16, 32)
        self.out_dim = self.feature_channels[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``layer1`` to ``layer4``."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        # written out: TorchScript (ckpt_export scripts) cannot call modules taken from a tuple
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x1, x2, x3, self.layer4(x3)]

    def tokens(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """``(None, layer4 as tokens (B, N, out_dim))``."""
        return None, self.features(x)[-1].flatten(2).transpose(1, 2)
