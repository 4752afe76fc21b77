"""Run the model-zoo checks on every bundle (or the ones named) and print a PASS/FAIL table.

    python tools/check_bundles.py                                  # all bundles, all checks
    python tools/check_bundles.py --bundles multiorgan_ct_segmentation --skip distributed
    python tools/check_bundles.py --schema PATH/meta_schema_20240725.json   # offline

The checks up to ``onnx`` are the model zoo's verifier in ``full`` mode with MONAI's defaults, run on a copy
of each bundle holding the ``models/model.pt`` that verifier makes (``common.bundle_checks.zoo_copy``); then
the collection's own: a smoke training run, inference from its checkpoint, and ``torchrun``. The metadata
schema is ``--schema``, else ``$MEDFM_BUNDLE_SCHEMA``, else ``../shared/schemas`` or the cache, else the URL
in each metadata.json downloaded as MONAI does. Exits 1 when any check fails. Work files go to a temporary
directory (``--work_dir`` to keep them).
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

import fire

from common import bundle_checks as bc
from common import bundle_export as be
from common.data.prepare import prepare_all

CHECKS = (
    "files", "zoo_files", "version", "metadata", "net_in_out", "torchscript", "onnx",
    "train", "infer", "distributed",
)  # fmt: skip
# Checks that need what an earlier one made: the model zoo's copy with its weights (made by ``zoo_files``),
# or a trained checkpoint (made by ``train``).
NEEDS = {"net_in_out": "zoo", "torchscript": "zoo", "onnx": "zoo", "infer": "ckpt"}


def _detail(result) -> str:
    """What a passing export check measured: how it exported and max |export - eager|."""
    if isinstance(result, be.ExportResult):
        return f"{result.method}, max |diff| {result.max_abs_diff:.1e}"
    return ""


def run_checks(bundle: Path, work_dir: Path, schema: Path | None, skip: tuple[str, ...] = ()) -> list[tuple]:
    """(check, status, seconds, message: the failure, or what a passing export measured) for each check; a
    check needing the model zoo's copy or a trained checkpoint is skipped when what makes it failed or was
    skipped."""
    state: dict = {}

    def zoo_files():
        state["zoo"] = bc.zoo_copy(bundle, work_dir / "zoo")
        bc.check_zoo_files(state["zoo"])

    steps = {
        "files": lambda: bc.check_required_files(bundle),
        "zoo_files": zoo_files,
        "version": lambda: bc.check_version(bundle),
        "metadata": lambda: bc.check_metadata(bundle, schema),
        "net_in_out": lambda: bc.check_net_in_out(state["zoo"]),
        "torchscript": lambda: be.check_torchscript_export(state["zoo"], state["zoo"] / "models" / "model.pt",
                                                           work_dir / "export"),
        "onnx": lambda: be.check_onnx_export(state["zoo"], state["zoo"] / "models" / "model.pt",
                                             work_dir / "export"),
        "train": lambda: state.update(ckpt=bc.train_smoke(bundle, work_dir)),
        "infer": lambda: bc.infer_smoke(bundle, state["ckpt"], work_dir),
        "distributed": lambda: bc.check_distributed(bundle, work_dir),
    }  # fmt: skip
    rows = []
    for name in CHECKS:
        if name in skip:
            rows.append((name, "SKIP", 0.0, "skipped on request"))
            continue
        if name in NEEDS and NEEDS[name] not in state:
            rows.append((name, "SKIP", 0.0, f"needs {NEEDS[name]}, which failed or was skipped"))
            continue
        start = time.time()
        try:
            result = steps[name]()
            rows.append((name, "PASS", time.time() - start, _detail(result)))
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
                table.append((bundle.name, check, status, seconds, message if status == "PASS" else ""))
                failed |= status == "FAIL"
                if message and status == "FAIL":
                    print(f"\n[{bundle.name}] {check} FAILED:\n{message}\n", file=sys.stderr)
    width = max(len(row[0]) for row in table)
    print(f"\n{'bundle':<{width}}  {'check':<12} status  seconds  detail")
    for name, check, status, seconds, detail in table:
        print(f"{name:<{width}}  {check:<12} {status:<6}  {seconds:7.1f}  {detail}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
