"""Pre-train with each self-supervised bundle, fine-tune the segmentation bundle from its encoder, and
compare the held-out Dice with training from scratch (papers/002: few-shot transfer of nine methods).

Every run goes through ``monai.bundle`` with the bundles' own configs, scaled down by overrides; results
(one row per method: pre-training seconds, fine-tuning seconds, mean Dice over the 26 classes and the
larger organs) are appended to ``<work_dir>/results.csv`` as each method finishes, and a Markdown table is
printed at the end. A method whose row is already in the CSV is not run again (resume after a stop).

    python tools/ssl_transfer.py --methods "['simmim','dino']" --work_dir runs/ssl_transfer
"""

from __future__ import annotations

import time
from pathlib import Path

import fire

from common.data.prepare import prepare_all
from common.evaluation.heldout import finetune_and_evaluate
from common.evaluation.matrix import pretrain_ssl as pretrain
from common.evaluation.results import ResultsTable

METHODS = ("simmim", "mae", "dino", "ibot", "smit", "simclr", "mocov3", "rotation", "genesis", "swinunetr")
ORGANS = ("liver", "spleen", "stomach", "colon", "autochthon_left", "autochthon_right")
FIELDS = ("method", "pretrain_s", "finetune_s", "mean_dice", *ORGANS)


def main(
    methods: list[str] | tuple[str, ...] = METHODS,
    work_dir: str = "runs/ssl_transfer",
    feature_size: int = 12,
    pixdim: float = 4.0,
    pretrain_epochs: int = 4,
    pretrain_epoch_length: int = 20,
    pretrain_learning_rate: float = 5e-4,
    finetune_epochs: int = 30,
    train_datalist_key: str = "training_2shot_seed0",
    learning_rate: float = 1e-3,
) -> None:
    """Scratch plus each method in ``methods``; see the module docstring."""
    prepare_all()
    root = Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    results = ResultsTable(root / "results.csv", FIELDS)
    for method in ["scratch", *methods]:
        if method in results:
            print(f"[ssl_transfer] {method}: already in {results.path}, skipped")
            continue
        out = root / method
        start = time.time()
        encoder = None
        if method != "scratch":
            encoder = pretrain(
                method,
                out / "pretrain",
                feature_size,
                pixdim,
                pretrain_epochs,
                pretrain_epoch_length,
                pretrain_learning_rate,
            )
        pretrain_s = time.time() - start
        overrides = {
            "ckpt_dir": str(out / "seg" / "models"),
            "output_dir": str(out / "seg" / "eval"),
            "arch": "swinunetr",
            "feature_size": feature_size,
            "pixdim": [pixdim] * 3,
            "roi_size": [96, 96, 32],
            "num_samples": 2,
            "num_workers": 0,
            "learning_rate": learning_rate,
            "max_epochs": finetune_epochs,
            "val_interval": finetune_epochs,
            "train_datalist_key": train_datalist_key,
            "pretrained_encoder": str(encoder) if encoder else None,
            "seed": 0,
        }
        result = finetune_and_evaluate(overrides)
        row = {
            "method": method,
            "pretrain_s": round(pretrain_s),
            "finetune_s": round(time.time() - start - pretrain_s),
            "mean_dice": round(result.mean_dice, 4),
            **{organ: round(result.dice_of(organ), 4) for organ in ORGANS},
        }
        results.append(row)
        print(f"[ssl_transfer] {row}")
    print("\n" + results.markdown())


if __name__ == "__main__":
    fire.Fire(main)
