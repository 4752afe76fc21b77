"""Convert a released SuPreM checkpoint (Li et al., ICLR 2024) into a ``pretrained_network`` file.

Builds the collection's segmenter (``common.networks.build_segmenter``), loads the SuPreM weights into it
except the output layer (``common.networks.load_suprem_checkpoint``) and writes ``{"model": state_dict}``.
The written output layer is a fresh initialisation: the segmentation bundles re-initialise it anyway when
they load the file as ``pretrained_network`` for their own class list.

    python tools/convert_suprem.py --src suprem_swinunetr.pth --arch swinunetr \
        --out models/suprem_swinunetr_converted.pt
"""

from __future__ import annotations

import fire

from common.atomic import atomic_torch_save
from common.networks import build_segmenter, load_suprem_checkpoint

SUPREM_FEATURE_SIZE = {"swinunetr": 48, "segresnet": 16}


def convert(
    src: str,
    arch: str,
    out: str,
    feature_size: int | None = None,
    out_channels: int = 2,
    in_channels: int = 1,
) -> dict:
    """Load SuPreM's ``src`` into a ``build_segmenter(arch, ...)`` network, write it to ``out`` atomically and
    return the load report; feature_size defaults to SuPreM's (48 for swinunetr, 16 for segresnet)."""
    size = feature_size or SUPREM_FEATURE_SIZE.get(arch, 16)
    net = build_segmenter(arch, in_channels=in_channels, out_channels=out_channels, feature_size=size)
    report = load_suprem_checkpoint(net, src)
    path = atomic_torch_save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, out)
    print(
        f"[convert_suprem] {src} -> {path} ({arch}, feature_size {size}): loaded {report['loaded']} tensors"
    )
    print(f"[convert_suprem] skipped output layer: {', '.join(report['skipped_output']) or 'none'}")
    print(f"[convert_suprem] ignored SuPreM head keys: {', '.join(report['ignored']) or 'none'}")
    return report


if __name__ == "__main__":
    fire.Fire(convert, serialize=lambda _: None)  # the report is printed above
