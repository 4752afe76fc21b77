"""SuPreM on the embedded data: supervised pre-training with partial labels, then its three transfers.

1. ``suprem_pretrain`` trains one backbone on the partially labelled CT set (AbdomenAtlas classes from
   TotalSegmentator-labelled subjects, lung tumour from pyradiomics' lung CTs).
2. Direct inference: the pre-trained network segments the held-out subject A (never seen in training);
   Dice over the classes A's source annotates.
3. Few-shot transfer to a new class list: ``multiorgan_ct_segmentation`` (26 classes, 13 of them novel to
   the pre-training: spinal cord, vertebrae, ribs, autochthonous muscles) is fine-tuned on N = 1, 2 volumes
   from scratch and from the pre-trained network (everything but the output layer,
   ``--pretrained_network``), over seeds; held-out Dice, mean ± sd and a two-sample t-test (the paper's
   statistics, Li et al., ICLR 2024, Table 2).
4. Lesion classification from the encoder (``configs/lesion_classification.json``): leave-one-case-out
   AUC of a linear head on frozen encoder features, scratch versus pre-trained.

Every run goes through ``monai.bundle``; rows land in ``<work_dir>/results.csv`` as they finish and a
finished row is not run again (resume after a stop).

    python tools/suprem_transfer.py --backbone segresnet --work_dir runs/suprem_transfer
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import numpy as np
from monai.bundle import run

from common.bundle import REPO_ROOT, bundle_root
from common.data.partial_labels import SUPREM_CLASSES, annotated_mask, covered_structures
from common.data.prepare import prepare_all
from common.evaluation.heldout import finetune_and_evaluate, score_heldout
from common.evaluation.results import ResultsTable
from common.evaluation.stats import mean_sd, significance_marker, t_test_independent

SUPREM = "suprem_pretrain"
SUPREM_DATALIST = REPO_ROOT / "data_lists" / "suprem_ct.json"
INITS = ("scratch", "suprem")
FIELDS = ("run", "init", "shots", "seed", "seconds", "mean_dice", "seen_dice", "novel_dice", "liver", "auc")


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(Path(bundle_root(bundle)) / "configs" / name) for name in names]


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else float("nan")


def _row(run_name, init, shots, seed, seconds, result=None, auc="") -> dict:
    row = dict.fromkeys(FIELDS, "")
    row.update(run=run_name, init=init, shots=shots, seed=seed, seconds=round(seconds), auc=auc)
    if result is not None:
        covered = covered_structures()
        novel = np.array([name not in covered for name in result.names])
        row.update(
            mean_dice=_nanmean(result.dice),
            seen_dice=_nanmean(result.dice[~novel]),
            novel_dice=_nanmean(result.dice[novel]),
            liver=round(result.dice_of("liver"), 4),
        )
    return row


def main(
    backbone: str = "segresnet",
    feature_size: int = 16,
    work_dir: str = "runs/suprem_transfer",
    pixdim: float = 4.0,
    pretrain_epochs: int = 40,
    finetune_epochs: int = 60,
    shots: tuple[int, ...] = (1, 2),
    seeds: tuple[int, ...] = (0, 1, 2),
    learning_rate: float = 1e-3,
) -> None:
    """See the module docstring. ``seeds`` apply to the 1-shot key (three datalist splits); the 2-shot key
    holds both training volumes, so it runs with seed 0 only."""
    prepare_all()
    root = Path(work_dir)
    table = ResultsTable(root / "results.csv", FIELDS)
    geometry = {"pixdim": [pixdim] * 3, "roi_size": [96, 96, 32], "num_samples": 2, "num_workers": 0}
    network = {"feature_size": feature_size, "learning_rate": learning_rate}

    pre = root / "pretrain"
    suprem = {
        **geometry,
        **network,
        "backbone": backbone,
        "ckpt_dir": str(pre / "models"),
        "output_dir": str(pre / "eval"),
        "batch_size": 1,
        "max_epochs": pretrain_epochs,
        "val_interval": pretrain_epochs,  # one validation, at the end: model.pt is the final network
        "seed": 0,
    }
    checkpoint = pre / "models" / "model.pt"
    if "pretrain" not in table:
        start = time.time()
        run("training", config_file=_configs(SUPREM, "train.json"), **suprem)
        table.append(_row("pretrain", "suprem", "", 0, time.time() - start))
    if "direct_inference" not in table:
        start = time.time()
        run("evaluating", config_file=_configs(SUPREM, "train.json", "evaluate.json"), **suprem)
        source = json.loads(SUPREM_DATALIST.read_text())
        test_source = source["test"][0]["source"]
        annotated = annotated_mask(source["sources"][test_source]["annotated"], SUPREM_CLASSES)
        result = score_heldout(pre / "eval", suprem["pixdim"], SUPREM_DATALIST, annotated)
        table.append(_row("direct_inference", "suprem", 0, 0, time.time() - start, result))

    for init in ("scratch", "suprem"):
        for n in shots:
            for seed in seeds if n == 1 else (0,):
                name = f"{init}_{n}shot_seed{seed}"
                if name in table:
                    continue
                out = root / name
                start = time.time()
                overrides = {
                    **geometry,
                    **network,
                    "arch": backbone,
                    "ckpt_dir": str(out / "models"),
                    "output_dir": str(out / "eval"),
                    "max_epochs": finetune_epochs,
                    "val_interval": finetune_epochs,
                    "train_datalist_key": f"training_{n}shot_seed{seed}",
                    "pretrained_network": str(checkpoint) if init == "suprem" else None,
                    "seed": seed,
                }
                result = finetune_and_evaluate(overrides)
                table.append(_row(name, init, n, seed, time.time() - start, result))
                print(f"[suprem_transfer] {table.rows[name]}", flush=True)

    for init in ("scratch", "suprem"):
        for seed in seeds:  # scratch: another random network per seed; both: other patches per seed
            name = f"lesions_{init}_seed{seed}"
            if name in table:
                continue
            start = time.time()
            run(
                "evaluating",
                config_file=_configs(SUPREM, "lesion_classification.json"),
                backbone=backbone,
                feature_size=feature_size,
                ckpt_path=str(checkpoint) if init == "suprem" else "",  # "": random initialisation
                output_dir=str(root / name),
                seed=seed,
            )
            auc = json.loads((root / name / "lesion_classification.json").read_text())["auc"]
            table.append(_row(name, init, "", seed, time.time() - start, auc=round(auc, 4)))

    print("\n" + table.markdown())
    print("\n" + summary(table))


def _compare(label: str, scratch: list[float], suprem: list[float]) -> str:
    """A Markdown row: mean ± sd of each arm and the two-sample t-test of SuPreM versus scratch."""
    cells = []
    for values in (scratch, suprem):
        mean, sd = mean_sd(values)
        cells.append(f"{mean:.4f}" + ("" if np.isnan(sd) else f" ± {sd:.4f}") + f" (n={len(values)})")
    t, p = t_test_independent(suprem, scratch) if min(len(scratch), len(suprem)) > 1 else (np.nan, np.nan)
    return f"| {label} | {cells[0]} | {cells[1]} | {t:.2f} | {p:.3f} {significance_marker(p)} |"


def summary(table: ResultsTable) -> str:
    """Scratch versus SuPreM: held-out mean Dice (all classes, novel classes) per shot count, and lesion
    AUC; mean ± sd over seeds and a two-sample t-test (Li et al., ICLR 2024, Table 2)."""
    lines = ["| comparison | scratch | SuPreM | t | p |", "|---|---|---|---|---|"]
    rows = list(table.rows.values())
    finetunes = [r for r in rows if r["init"] in ("scratch", "suprem") and str(r["shots"]) not in ("", "0")]
    for n in sorted({int(r["shots"]) for r in finetunes}):
        for key, label in (("mean_dice", "mean Dice"), ("novel_dice", "novel-class Dice")):
            arms = [
                [float(r[key]) for r in finetunes if r["init"] == init and int(r["shots"]) == n]
                for init in ("scratch", "suprem")
            ]
            if all(arms):
                lines.append(_compare(f"{n}-shot {label}", *arms))
    aucs = [[float(r["auc"]) for r in rows if r["run"].startswith(f"lesions_{init}_")] for init in INITS]
    if all(aucs):
        lines.append(_compare("lesion AUC (leave-one-case-out)", *aucs))
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire(main)
