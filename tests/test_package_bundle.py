"""A bundle lives where it is: a copy (renamed, run from another working directory) and a packaged bundle
(``tools/package_bundle.py``, unpacked by ``monai.bundle.download``) train and infer inside themselves."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import monai.bundle
import pytest
import yaml
from monai.apps.utils import HashCheckError

from common.bundle import REPO_ROOT, bundle_root, fetch_large_files

BUNDLE = "multiorgan_ct_segmentation"
SOURCE = REPO_ROOT / "bundles" / BUNDLE
MONAI_MAIN = str(Path(monai.bundle.__file__).parent / "__main__.py")
# On top of smoke.json (training) / alone (inference): a U-Net on a 6 mm grid, so each of the four
# ``monai.bundle run`` processes below spends its time starting up, not computing.
TINY = ["--arch", "unet", "--feature_size", "8", "--pixdim", "[6.0,6.0,6.0]", "--roi_size", "[32,32,32]"]


def _tool():
    spec = importlib.util.spec_from_file_location("package_bundle", REPO_ROOT / "tools" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _monai_run(workflow: str, bundle: Path, cwd: Path) -> None:
    """``python -m monai.bundle run <workflow>`` on ``bundle``'s config (training adds smoke.json) from
    ``cwd``, as a user types it."""
    configs = [bundle / "configs" / ("train.json" if workflow == "training" else "inference.json")]
    if workflow == "training":
        configs.append(bundle / "configs" / "smoke.json")
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow]
    cmd += ["--config_file", json.dumps([str(c) for c in configs]), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}"


def _listing(folder: Path) -> set[str]:
    """The files under ``folder`` (names only: others may edit the repository's tracked files meanwhile)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained_copy(prepared_data, tmp_path_factory):
    """A renamed copy of the bundle (no models/, eval/), trained from an unrelated working directory; the
    repository's bundle folder listing before and after."""
    tmp = tmp_path_factory.mktemp("copy")
    copy = tmp / "elsewhere" / f"my_{BUNDLE}"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("models", "eval", "mlruns*"))
    (tmp / "cwd").mkdir()
    before = _listing(SOURCE)
    _monai_run("training", copy, tmp / "cwd")
    return copy, tmp / "cwd", before


@pytest.mark.slow
def test_copied_bundle_trains_and_infers_in_itself(trained_copy):
    copy, cwd, before = trained_copy
    assert (copy / "models" / "model.pt").is_file()
    assert (copy / "models" / "model_final.pt").is_file()
    _monai_run("inference", copy, cwd)
    written = list((copy / "eval").glob("*_seg.nii.gz"))
    assert len(written) == 1, sorted((copy / "eval").rglob("*"))
    assert _listing(SOURCE) == before, "the run wrote into the repository's bundle folder"
    assert not list(cwd.iterdir()), "the run wrote into its working directory"


@pytest.mark.slow
def test_packaged_bundle_unpacks_with_monai_and_runs_there(trained_copy, tmp_path):
    copy, _, before = trained_copy
    zip_path = _tool().package(copy, out=tmp_path / "dist")
    version = json.loads((SOURCE / "configs" / "metadata.json").read_text())["version"]
    assert zip_path.name == f"{BUNDLE}_v{version}.zip"
    names = zipfile.ZipFile(zip_path).namelist()
    assert {f"{BUNDLE}/LICENSE", f"{BUNDLE}/configs/metadata.json", f"{BUNDLE}/large_files.yml"} <= set(names)
    assert not [n for n in names if n.split("/")[1] in ("models", "eval")], names
    listed = yaml.safe_load(zipfile.ZipFile(zip_path).read(f"{BUNDLE}/large_files.yml"))["large_files"]
    weights = copy / "models" / "model.pt"
    assert [(e["path"], e["hash_val"]) for e in listed] == [("models/model.pt", _md5(weights))]

    bundle_dir = tmp_path / "downloaded"
    monai.bundle.download(name=BUNDLE, url=zip_path.as_uri(), bundle_dir=bundle_dir, progress=False)
    unpacked = bundle_dir / BUNDLE
    assert fetch_large_files(unpacked) == [unpacked / "models" / "model.pt"]
    assert _md5(unpacked / "models" / "model.pt") == _md5(weights)
    (tmp_path / "cwd").mkdir()
    _monai_run("inference", unpacked, tmp_path / "cwd")  # with the weights that large_files.yml names
    assert len(list((unpacked / "eval").glob("*_seg.nii.gz"))) == 1
    _monai_run("training", unpacked, tmp_path / "cwd")
    assert (unpacked / "models" / "model_final.pt").is_file()
    assert _listing(SOURCE) == before


def test_package_is_reproducible_and_leaves_out_what_runs_write(tmp_path):
    tool = _tool()
    copy = tmp_path / BUNDLE
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("models", "eval", "mlruns*"))
    for junk in ("eval/x.nii.gz", "mlruns.db", "configs/__pycache__/a.pyc", ".cache/a", "runs/b"):
        (copy / junk).parent.mkdir(parents=True, exist_ok=True)
        (copy / junk).write_text("written by a run")
    first = tool.package(copy, out=tmp_path / "a")
    second = tool.package(copy, out=tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    shipped = [p.relative_to(SOURCE).as_posix() for p in SOURCE.rglob("*") if p.is_file()]
    expected = sorted(f"{BUNDLE}/{n}" for n in shipped if n.split("/")[0] not in ("models", "eval"))
    assert sorted(zipfile.ZipFile(first).namelist()) == expected
    zips = tool.main(all=True, out=str(tmp_path / "all"))
    assert len(zips) == len(list((REPO_ROOT / "bundles").glob("*/configs/metadata.json")))
    with pytest.raises(ValueError, match="either one bundle"):
        tool.main(BUNDLE, all=True)
    with pytest.raises(FileNotFoundError, match="no_such_bundle"):
        tool.package("no_such_bundle", out=tmp_path)


def test_bundle_root_follows_the_config_file_of_a_monai_run(tmp_path):
    copy = tmp_path / "renamed_copy"
    shutil.copytree(SOURCE / "configs", copy / "configs")
    argv = [MONAI_MAIN, "run", "training", "--config_file", str(copy / "configs" / "train.json")]
    assert bundle_root(BUNDLE, argv) == str(copy)
    # another bundle's name, or a config outside a bundle folder: the usual lookup (this repository's)
    assert bundle_root("suprem_pretrain", argv) == str(REPO_ROOT / "bundles" / "suprem_pretrain")
    loose = tmp_path / "train.json"
    shutil.copy(copy / "configs" / "train.json", loose)
    assert bundle_root(BUNDLE, [*argv[:4], str(loose)]) == str(SOURCE)
    assert bundle_root(BUNDLE, ["pytest"]) == str(SOURCE)


def test_fetch_large_files_checks_hash_and_path(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not the listed weights")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    entry = {"path": "models/model.pt", "url": weights.as_uri(), "hash_val": "0" * 32, "hash_type": "md5"}
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    with pytest.raises(HashCheckError):
        fetch_large_files(bundle)
    assert not (bundle / "models" / "model.pt").exists()
    entry.update(path="../outside.pt", hash_val=_md5(weights))
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    with pytest.raises(ValueError, match="leaves the bundle folder"):
        fetch_large_files(bundle)
