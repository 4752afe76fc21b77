"""The evaluation protocols of DINOv2-radiology (papers/004) for several encoders, every one through
``monai.bundle``, at a CPU size: the table of protocol x encoder of issue 6.

Encoders (each a ``(name, encoder_name, encoder_config, encoder file or None)``):

- 3D task ``ct_organ_classification``: SwinUNETR's 3D Swin encoder pre-trained by ``simmim_ssl_pretrain``
  (run here unless ``--swin3d_encoder`` names an encoder file, or a published checkpoint as the benchmark's
  ``--encoders`` do: ``{"published": NAME, "file": PATH, "config": {"feature_size": 12}}``, converted once
  into ``<work_dir>/published/swin3d/encoder.pt``) and a 2D ConvNeXt through slice averaging;
- 2D tasks ``radiograph_classification`` and ``radiograph_segmentation``: a 2D ConvNeXt (Coda's encoder
  when ``--convnext_encoder`` is given, else random initialisation) and a DINOv2-layout ViT with patch 14
  (random initialisation; official DINOv2 weights load with ``common.networks.dinov2`` where available).

Protocols: kNN, linear probing (view chosen on validation), few-shot linear probing (``probe.json``);
linear head, LoRA, BitFit and full fine-tuning (``train.json`` ``protocol``, test AUROC via
``evaluate.json``, share of trainable parameters); frozen-encoder segmentation with a linear and a U-Net
decoder (test mean of Dice and Jaccard, both also reported). Writes ``<work_dir>/protocols.csv`` and
``protocols.md``. Usage: ``python tools/protocol_table.py [--work_dir runs/protocols] [--epochs 10]``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from pathlib import Path

import fire

from common.evaluation import bundle_runs
from common.evaluation.matrix import pretrain_ssl, published_encoder
from common.networks import build_classifier, trainable_share

CONVNEXT2D = {"in_channels": 1, "spatial_dims": 2, "depths": [2, 2, 2, 2], "dims": [32, 64, 128, 256]}
VIT2D = {"in_channels": 1, "img_size": 112, "patch_size": 14, "embed_dim": 192, "depth": 6, "num_heads": 3}
SWIN3D = {"in_channels": 1, "feature_size": 12, "spatial_dims": 3}
IMAGE_SIZE = {"convnext": 128, "vit": 112}
LORA_TARGETS = {"swin": ["qkv"], "vit": ["qkv"], "convnext": ["pwconv1", "pwconv2"]}
FINETUNE_PROTOCOLS = ("linear", "lora", "bitfit", "full")


def probe_rows(bundle: str, out: Path, encoder: tuple, overrides: dict) -> list[dict]:
    name, encoder_name, config, encoder_file = encoder
    if not (out / "eval" / "probes" / "probes.json").is_file():
        bundle_runs.workflow(
            bundle,
            ["train.json", "probe.json"],
            "probing",
            out,
            encoder_name=encoder_name,
            encoder_config=config,
            pretrained_encoder=str(encoder_file or ""),
            **overrides,
        ).run()
    rows = []
    for row in json.loads((out / "eval" / "probes" / "probes.json").read_text()):
        value = row.get("mean_auroc")
        note = row.get("skipped", f"view {row['view']}" + (f", sd {row['sd']:.3f}" if "sd" in row else ""))
        rows.append(
            {
                "task": bundle,
                "encoder": name,
                "protocol": "linear_probe" if row["protocol"] == "linear" else row["protocol"],
                "metric": "test mean AUROC",
                "value": value,
                "trainable_share": None,
                "note": note,
            }
        )
    return rows


def finetune_row(
    bundle: str, out: Path, encoder: tuple, protocol: str, overrides: dict, num_classes: int
) -> dict:
    name, encoder_name, config, encoder_file = encoder
    settings = {
        "encoder_name": encoder_name,
        "encoder_config": config,
        "protocol": protocol,
        "lora_targets": LORA_TARGETS[encoder_name],
        **overrides,
    }
    if protocol == "linear":
        settings["learning_rate"] = 1e-3
    if not (out / "models" / "model.pt").is_file():
        bundle_runs.train(bundle, out, pretrained_encoder=str(encoder_file or ""), **settings)
    metrics = bundle_runs.evaluate(bundle, out, "val_auroc", **settings)
    share = trainable_share(
        build_classifier(
            encoder_name,
            config,
            num_classes,
            protocol=protocol,
            slice_average=overrides.get("slice_average", False),
            lora_targets=LORA_TARGETS[encoder_name],
        )
    )
    return {
        "task": bundle,
        "encoder": name,
        "protocol": "linear_head" if protocol == "linear" else protocol,
        "metric": "test mean AUROC",
        "value": metrics["val_auroc"],
        "trainable_share": share["share"],
        "note": "",
    }


def segmentation_row(out: Path, encoder: tuple, decoder: str, overrides: dict) -> dict:
    name, encoder_name, config, encoder_file = encoder
    settings = {
        "encoder_name": encoder_name,
        "encoder_config": config,
        "decoder": decoder,
        "freeze_encoder": True,
        **overrides,
    }
    if not (out / "models" / "model.pt").is_file():
        bundle_runs.train(
            "radiograph_segmentation", out, pretrained_encoder=str(encoder_file or ""), **settings
        )
    metrics = bundle_runs.evaluate("radiograph_segmentation", out, "val_dice_jaccard", **settings)
    note = f"Dice {metrics['val_dice_jaccard_dice']:.3f}, Jaccard {metrics['val_dice_jaccard_jaccard']:.3f}"
    return {
        "task": "radiograph_segmentation",
        "encoder": name,
        "protocol": f"frozen_{decoder}",
        "metric": "test (Dice+Jaccard)/2",
        "value": metrics["val_dice_jaccard"],
        "trainable_share": None,
        "note": note,
    }


def segmentation3d_row(out: Path, encoder: tuple, arch: str, epochs: int) -> dict:
    """Frozen 3D Swin under a linear or U-Net decoder in ``multiorgan_ct_segmentation`` (its metric: mean
    Dice over the 26 structures on the held-out subject)."""
    name, _, config, encoder_file = encoder
    settings = {
        "arch": arch,
        "feature_size": config["feature_size"],
        "pixdim": [4.0, 4.0, 4.0],
        "roi_size": [64, 64, 64],
        "num_samples": 1,
        "num_workers": 0,
        "max_epochs": epochs,
        "val_interval": max(1, epochs // 2),
        "save_interval": epochs,
    }
    if not (out / "models" / "model.pt").is_file():
        bundle_runs.train("multiorgan_ct_segmentation", out, pretrained_encoder=str(encoder_file), **settings)
    metrics = bundle_runs.evaluate("multiorgan_ct_segmentation", out, "val_mean_dice", **settings)
    return {
        "task": "multiorgan_ct_segmentation",
        "encoder": name,
        "protocol": arch.replace("_swin", ""),
        "metric": "test mean Dice",
        "value": metrics["val_mean_dice"],
        "trainable_share": None,
        "note": "",
    }


def main(
    work_dir: str = "runs/protocols",
    epochs: int = 10,
    swin3d_encoder: str | dict = "",
    convnext_encoder: str = "",
    tasks: tuple = ("ct_organ_classification", "radiograph_classification"),
    shots: tuple = (1, 2, 4, 8),
    seeds: tuple = (0, 1, 2),
) -> Path:
    """Run every (task, encoder, protocol) cell of ``tasks`` not yet in ``work_dir`` and write the table
    (the radiograph task includes frozen-encoder segmentation)."""
    work_dir, start = Path(work_dir), time.time()
    swin3d_name = "swin3d_simmim"
    if isinstance(swin3d_encoder, Mapping):
        swin3d_name = f"swin3d_{swin3d_encoder.get('published')}"
        swin3d_encoder, _ = published_encoder("swin3d", swin3d_encoder, work_dir, SWIN3D["feature_size"])
    if not swin3d_encoder and "ct_organ_classification" in tasks:
        swin3d_encoder = pretrain_ssl(
            "simmim",
            work_dir / "simmim",
            feature_size=12,
            pixdim=4.0,
            epochs=2,
            epoch_length=10,
            learning_rate=1e-4,
        )
    common = {
        "num_workers": 0,
        "max_epochs": epochs,
        "val_interval": max(1, epochs // 2),
        "save_interval": epochs,
        "batch_size": 8,
        "fewshot_shots": list(shots),
        "fewshot_seeds": list(seeds),
    }
    specs = {
        "ct_organ_classification": (
            [
                (swin3d_name, "swin", SWIN3D, swin3d_encoder),
                ("convnext2d_slices", "convnext", CONVNEXT2D, convnext_encoder or None),
            ],
            {"num_classes": 8},
        ),
        "radiograph_classification": (
            [
                (
                    "convnext2d" + ("_coda" if convnext_encoder else ""),
                    "convnext",
                    CONVNEXT2D,
                    convnext_encoder or None,
                ),
                ("vit_s14_dinov2_layout", "vit", VIT2D, None),
            ],
            {},
        ),
    }
    rows = []
    for bundle in tasks:
        encoders, extra = specs[bundle]
        for encoder in encoders:
            overrides = dict(common, **{k: v for k, v in extra.items() if k != "num_classes"})
            if bundle == "ct_organ_classification" and encoder[1] != "swin":
                overrides["slice_average"] = True
            if bundle == "radiograph_classification":  # ConvNeXt takes multiples of 32, ViT of its patch 14
                overrides["image_size"] = IMAGE_SIZE[encoder[1]]
            cell = work_dir / bundle / encoder[0]
            probe_overrides = {k: v for k, v in overrides.items() if k not in ("max_epochs",)}
            rows += probe_rows(bundle, cell / "probe", encoder, probe_overrides)
            num_classes = (
                8
                if bundle == "ct_organ_classification"
                else len(
                    json.loads((Path("data_lists") / "radiograph_classification.json").read_text())["labels"]
                )
            )
            train_overrides = {k: v for k, v in overrides.items() if not k.startswith("fewshot")}
            for protocol in FINETUNE_PROTOCOLS:
                rows.append(
                    finetune_row(bundle, cell / protocol, encoder, protocol, train_overrides, num_classes)
                )
            if encoder[1] == "swin":
                for arch in ("frozen_swin_linear", "frozen_swin_unet"):
                    rows.append(segmentation3d_row(cell / arch, encoder, arch, epochs))
            if bundle == "radiograph_classification":
                seg = {k: v for k, v in train_overrides.items() if k not in ("image_size", "batch_size")}
                seg["roi_size"] = [IMAGE_SIZE[encoder[1]]] * 2
                for decoder in ("linear", "unet"):
                    rows.append(segmentation_row(cell / f"seg_{decoder}", encoder, decoder, seg))
    with (work_dir / "protocols.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| task | encoder | protocol | metric | value | trainable | note |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        value = "—" if r["value"] is None else f"{r['value']:.3f}"
        share = "" if r["trainable_share"] is None else f"{100 * r['trainable_share']:.2f} %"
        cells = (r["task"], r["encoder"], r["protocol"], r["metric"], value, share, r["note"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n{epochs} epochs per trained protocol; {time.time() - start:.0f} s.")
    (work_dir / "protocols.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return work_dir / "protocols.md"


if __name__ == "__main__":
    fire.Fire(main)
