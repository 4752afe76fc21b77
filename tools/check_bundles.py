"""Run the model-zoo checks on every bundle (or the ones named) and print a PASS/FAIL table.

    python tools/check_bundles.py                                  # all bundles, all checks
    python tools/check_bundles.py --bundles multiorgan_ct_segmentation --skip distributed
    python tools/check_bundles.py --schema ../shared/schemas/meta_schema_20240725.json   # offline

Without ``--schema`` the metadata schema is downloaded from the URL in each metadata.json, as MONAI does.
Exits 1 when any check fails. Work files go to a temporary directory (``--work_dir`` to keep them).
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

import fire

from common import bundle_checks as bc
from common.data.prepare import prepare_all

CHECKS = ("files", "metadata", "net_in_out", "train", "export", "infer", "distributed")


def run_checks(bundle: Path, work_dir: Path, schema: Path | None, skip: tuple[str, ...] = ()) -> list[tuple]:
    """(check, status, seconds, message) for each check; later checks needing a checkpoint are skipped
    when training failed."""
    state: dict = {}
    steps = {
        "files": lambda: bc.check_required_files(bundle),
        "metadata": lambda: bc.check_metadata(bundle, schema),
        "net_in_out": lambda: bc.check_net_in_out(bundle),
        "train": lambda: state.update(ckpt=bc.train_smoke(bundle, work_dir)),
        "export": lambda: bc.check_torchscript_export(bundle, state["ckpt"], work_dir),
        "infer": lambda: bc.infer_smoke(bundle, state["ckpt"], work_dir),
        "distributed": lambda: bc.check_distributed(bundle, work_dir),
    }
    rows = []
    for name in CHECKS:
        if name in skip:
            rows.append((name, "SKIP", 0.0, "skipped on request"))
            continue
        if name in ("export", "infer") and "ckpt" not in state:
            rows.append((name, "SKIP", 0.0, "no checkpoint: training failed or was skipped"))
            continue
        start = time.time()
        try:
            steps[name]()
            rows.append((name, "PASS", time.time() - start, ""))
        except Exception as e:  # every failure is reported in the table, the run goes on
            message = str(e) if isinstance(e, bc.BundleCheckError) else traceback.format_exc(limit=3)
            rows.append((name, "FAIL", time.time() - start, message.strip()))
    return rows


def main(
    bundles: str | tuple | None = None,
    schema: str | None = None,
    skip: str | tuple = (),
    work_dir: str | None = None,
) -> None:
    """Check ``bundles`` (comma-separated names; default all); ``skip`` names checks to leave out."""
    selected = bc.list_bundles()
    if bundles:
        names = bundles.split(",") if isinstance(bundles, str) else list(bundles)
        unknown = sorted(set(names) - {b.name for b in selected})
        if unknown:
            sys.exit(f"unknown bundles {unknown}; known: {[b.name for b in selected]}")
        selected = [b for b in selected if b.name in names]
    skip = tuple(skip.split(",")) if isinstance(skip, str) else tuple(skip)
    unknown_checks = sorted(set(skip) - set(CHECKS))
    if unknown_checks:
        sys.exit(f"unknown checks {unknown_checks}; known: {list(CHECKS)}")
    schema_file = Path(schema) if schema else None
    prepare_all()
    failed = False
    with tempfile.TemporaryDirectory(prefix="bundle-checks-") as tmp:
        base = Path(work_dir or tmp)
        table = []
        for bundle in selected:
            rows = run_checks(bundle, base / bundle.name, schema_file, skip)
            for check, status, seconds, message in rows:
                table.append((bundle.name, check, status, seconds))
                failed |= status == "FAIL"
                if message and status == "FAIL":
                    print(f"\n[{bundle.name}] {check} FAILED:\n{message}\n", file=sys.stderr)
    width = max(len(row[0]) for row in table)
    print(f"\n{'bundle':<{width}}  {'check':<12} status  seconds")
    for name, check, status, seconds in table:
        print(f"{name:<{width}}  {check:<12} {status:<6}  {seconds:7.1f}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
