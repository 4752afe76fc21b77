"""Serve a segmentation bundle through MONAI Label 0.8.5 and check the label it returns.

Run it with the MONAI Label environment's Python (made by ``tools/monailabel_env.sh``)::

    .venv-monailabel/bin/python tools/monailabel_check.py BUNDLE_DIR [--image CT] [--overrides JSON]

The bundle is loaded as MONAI Label's ``monaibundle`` app loads it, by
``monailabel.tasks.infer.bundle.BundleInferTask``, from a temporary copy (it must hold ``models/model.pt``);
``--overrides`` writes the values of a JSON file into the copy's ``configs/inference.json`` for the keys it
already has, so that a model trained with ``smoke.json`` (feature_size 12, 3 mm) is served with the same
settings. The image defaults to the first item of the bundle's inference datalist (the test subject). The
label file must have the image's shape and affine, hold only the bundle's classes, and not be empty.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monailabel.tasks.infer.bundle import BundleInferTask


def copy_bundle(bundle: Path, dest: Path, overrides: dict) -> Path:
    """Copy ``bundle`` under ``dest`` (same folder name: MONAI Label takes the task type from it) and write
    ``overrides`` into the copy's inference config for the keys that config defines."""
    copy = dest / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("eval", "mlruns*", "model_final.pt"))
    config_file = copy / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update({k: v for k, v in overrides.items() if k in config})
    config_file.write_text(json.dumps(config, indent=4))
    return copy


def datalist_image(bundle: Path) -> str:
    """The first image of the bundle's inference datalist (``datalist`` in ``configs/inference.json``)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("datalist")[0]["image"]


def check(bundle: Path, image: str) -> dict:
    """Segment ``image`` with ``bundle`` through ``BundleInferTask``; raise AssertionError on a bad label."""
    model_file = bundle / "models" / "model.pt"
    assert model_file.is_file(), f"{model_file} is missing: train the bundle first"
    start = time.perf_counter()
    task = BundleInferTask(str(bundle), conf={"preload": "false"})
    assert task.is_valid(), f"MONAI Label rejected {bundle} (see its warnings above)"
    label_file, result = task({"image": image, "device": "cpu"})
    seconds = time.perf_counter() - start

    # BundleInferTask loads checkpoints with strict=False: make sure the weights really are the file's.
    network = task._get_network("cpu", None)
    expected = torch.load(model_file, map_location="cpu", weights_only=True)
    expected = expected.get("model", expected)
    loaded = network.state_dict()
    assert loaded.keys() == expected.keys(), "model.pt keys do not match the bundle's network_def"
    assert all(torch.equal(loaded[k], expected[k]) for k in expected), "model.pt weights were not loaded"

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    output = next(iter(metadata["network_data_format"]["outputs"].values()))
    classes = {int(k): v for k, v in output["channel_def"].items()}
    expected_names = {v.lower(): k for k, v in classes.items() if v.lower() != "background"}
    assert result["label_names"] == expected_names, f"label names {result['label_names']} != {expected_names}"

    source, seg = nib.load(image), nib.load(label_file)
    label = np.asarray(seg.dataobj)
    assert label.shape == source.shape[:3], f"label shape {label.shape} != image shape {source.shape[:3]}"
    assert np.allclose(seg.affine, source.affine, atol=1e-3), f"label affine\n{seg.affine}\n!= image affine"
    values = np.unique(label)
    assert np.all(values == np.round(values)), f"non-integer labels {values}"
    assert set(values.astype(int)) <= set(classes), f"labels {values} outside the classes {sorted(classes)}"
    assert np.any(label > 0), "the label is empty (background only)"
    return {
        "image": image,
        "label_file": label_file,
        "shape": list(label.shape),
        "labels": [classes[int(v)] for v in values],
        "foreground_fraction": round(float(np.mean(label > 0)), 4),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="bundle directory holding models/model.pt")
    parser.add_argument("--image", help="CT volume to segment (default: the bundle datalist's test subject)")
    parser.add_argument("--overrides", type=Path, help="JSON file of config values, e.g. smoke.json")
    args = parser.parse_args(argv)
    overrides = json.loads(args.overrides.read_text()) if args.overrides else {}
    with tempfile.TemporaryDirectory(prefix="monailabel-check-") as tmp:
        bundle = copy_bundle(args.bundle.resolve(), Path(tmp), overrides)
        image = args.image or datalist_image(bundle)
        try:
            summary = check(bundle, image)
        except AssertionError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        Path(summary["label_file"]).unlink(missing_ok=True)
    print("PASSED:", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
