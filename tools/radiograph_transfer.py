"""The radiograph pipeline of issue 4, end to end through ``monai.bundle``, at a CPU size:

1. ``coda_pretrain`` three times -- inter-organ branch only, intra-organ only, both (the paper's Table 2
   ablation) -- each writing a ConvNeXt encoder file;
2. ``radiograph_classification`` (body region, test subject held out) from each Coda encoder and from a
   random initialisation, by linear probing (frozen encoder) and full fine-tuning: test ROC AUC;
3. ``leader_pretrain`` with two frozen experts from steps 1-2: the scratch-trained classifier (TorchScript) as
   disease expert, Coda (both branches) as anatomy expert; its Swin encoder goes through step 2 as well;
4. ``radiograph_segmentation`` (U-Net decoder, encoder fine-tuned) from scratch, from Coda and from LeADER:
   test mean of Dice and Jaccard.

Writes ``<work_dir>/results.csv`` and ``results.md``; every run keeps its folder under ``work_dir``.
Usage: ``python tools/radiograph_transfer.py [--work_dir runs/radiograph_transfer] [--epochs 20] ...``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import fire

from common.evaluation import bundle_runs

CONVNEXT = {"in_channels": 1, "spatial_dims": 2, "depths": [2, 2, 2, 2], "dims": [32, 64, 128, 256]}
SWIN = {"in_channels": 1, "feature_size": 24, "spatial_dims": 2}
BRANCHES = {"inter": (True, False), "intra": (False, True), "both": (True, True)}


def pretrain_coda(work_dir: Path, branch: str, epochs: int, image_size: int) -> Path:
    use_inter, use_intra = BRANCHES[branch]
    out = work_dir / f"coda_{branch}"
    if not (out / "models" / "encoder.pt").is_file():
        bundle_runs.train(
            "coda_pretrain",
            out,
            encoder_config=CONVNEXT,
            use_inter=use_inter,
            use_intra=use_intra,
            global_size=image_size,
            local_size=image_size // 2,
            num_local=4,
            out_dim=4096,
            head_hidden_dim=512,
            batch_size=16,
            num_workers=0,
            max_epochs=epochs,
            warmup_epochs=max(1, epochs // 10),
            warmup_teacher_temp_epochs=max(1, epochs // 3),
            save_interval=epochs,
        )
    return out / "models" / "encoder.pt"


def classify(
    work_dir: Path,
    name: str,
    encoder: str,
    config: dict,
    encoder_file: Path | None,
    protocol: str,
    epochs: int,
    image_size: int,
) -> dict:
    out = work_dir / f"cls_{name}_{protocol}"
    overrides = {
        "encoder_name": encoder,
        "encoder_config": config,
        "image_size": image_size,
        "batch_size": 16,
        "num_workers": 0,
        "max_epochs": epochs,
        "val_interval": max(1, epochs // 4),
        "save_interval": epochs,
        "learning_rate": 1e-3 if protocol == "linear" else 2e-4,
    }
    if not (out / "models" / "model.pt").is_file():
        bundle_runs.train(
            "radiograph_classification",
            out,
            pretrained_encoder=str(encoder_file or ""),
            protocol=protocol,
            **overrides,
        )
    metrics = bundle_runs.evaluate(
        "radiograph_classification", out, "val_auroc", protocol=protocol, **overrides
    )
    return {
        "task": "classification",
        "encoder": name,
        "protocol": protocol,
        "metric": "test ROC AUC",
        "value": metrics["val_auroc"],
        "work_dir": str(out),
    }


def segment(
    work_dir: Path,
    name: str,
    encoder: str,
    config: dict,
    encoder_file: Path | None,
    epochs: int,
    image_size: int,
) -> dict:
    out = work_dir / f"seg_{name}"
    overrides = {
        "encoder_name": encoder,
        "encoder_config": config,
        "roi_size": [image_size, image_size],
        "num_workers": 0,
        "max_epochs": epochs,
        "val_interval": max(1, epochs // 4),
        "save_interval": epochs,
    }
    if not (out / "models" / "model.pt").is_file():
        bundle_runs.train(
            "radiograph_segmentation", out, pretrained_encoder=str(encoder_file or ""), **overrides
        )
    metrics = bundle_runs.evaluate("radiograph_segmentation", out, "val_dice_jaccard", **overrides)
    return {
        "task": "segmentation",
        "encoder": name,
        "protocol": "full",
        "metric": "test (Dice+Jaccard)/2",
        "value": metrics["val_dice_jaccard"],
        "work_dir": str(out),
    }


def pretrain_leader(
    work_dir: Path, disease_teacher: Path, anatomy_teacher: Path, epochs: int, image_size: int
) -> Path:
    out = work_dir / "leader"
    if not (out / "models" / "encoder.pt").is_file():
        bundle_runs.train(
            "leader_pretrain",
            out,
            encoder_config=SWIN,
            disease_teacher=str(disease_teacher),
            anatomy_teacher=str(anatomy_teacher),
            image_size=image_size,
            patch_size=image_size,
            head_hidden_dim=512,
            batch_size=16,
            num_workers=0,
            max_epochs=epochs,
            stage1_epochs=epochs // 2,
            save_interval=epochs,
        )
    return out / "models" / "encoder.pt"


def main(
    work_dir: str = "runs/radiograph_transfer",
    epochs: int = 20,
    finetune_epochs: int = 20,
    image_size: int = 128,
) -> Path:
    """Run the pipeline (runs already finished in ``work_dir`` are reused) and write the result table."""
    work_dir = Path(work_dir)
    start, rows = time.time(), []
    convnext = ("convnext", CONVNEXT)
    scratch = {
        p: classify(work_dir, "scratch", *convnext, None, p, finetune_epochs, image_size)
        for p in ("linear", "full")
    }
    rows += scratch.values()
    coda = {}
    for branch in BRANCHES:
        coda[branch] = pretrain_coda(work_dir, branch, epochs, image_size)
        for protocol in ("linear", "full"):
            rows.append(
                classify(
                    work_dir, f"coda_{branch}", *convnext, coda[branch], protocol, finetune_epochs, image_size
                )
            )
    disease = bundle_runs.export_torchscript(
        "radiograph_classification",
        Path(scratch["full"]["work_dir"]),
        [1, 1, image_size, image_size],
        encoder_name="convnext",
        encoder_config=CONVNEXT,
        image_size=image_size,
    )
    leader = pretrain_leader(work_dir, disease, coda["both"], epochs, image_size)
    for protocol in ("linear", "full"):
        rows.append(classify(work_dir, "leader", "swin", SWIN, leader, protocol, finetune_epochs, image_size))
    rows.append(segment(work_dir, "scratch", *convnext, None, finetune_epochs, image_size))
    rows.append(segment(work_dir, "coda_both", *convnext, coda["both"], finetune_epochs, image_size))
    rows.append(segment(work_dir, "leader", "swin", SWIN, leader, finetune_epochs, image_size))
    with (work_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| task | encoder | protocol | metric | value |", "|---|---|---|---|---:|"]
    lines += [
        f"| {r['task']} | {r['encoder']} | {r['protocol']} | {r['metric']} | {r['value']:.3f} |" for r in rows
    ]
    lines.append(
        f"\n{epochs} pre-training epochs, {finetune_epochs} transfer epochs, {image_size} px; "
        f"{time.time() - start:.0f} s."
    )
    (work_dir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return work_dir / "results.md"


if __name__ == "__main__":
    fire.Fire(main)
