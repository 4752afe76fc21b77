"""Package a bundle as ``<name>_v<version>.zip``, the archive ``monai.bundle download`` unpacks.

    python tools/package_bundle.py multiorgan_ct_segmentation [--out DIR] [--weights_url URL]
    python tools/package_bundle.py path/to/a/bundle/copy --out dist
    python tools/package_bundle.py --all              # into ./dist (the default --out)

The zip holds one top folder named after the bundle (``bundle_name`` of its ``configs/inference.json``) with
the bundle's files, as the model zoo's CI zips them (files only, fixed timestamps, sorted: the same bundle
gives the same bytes); ``monai.bundle download --name <name> --url <zip url>`` extracts it into
``<bundle_dir>/<name>/``. Left out is what a run writes: ``models/``, ``eval/``, MLflow stores (``mlruns*``),
``runs/``, caches and hidden files.

Weights never travel inside the zip. When the bundle holds trained weights (the ``models/`` file its
``configs/inference.json`` reads: ``model.pt``, or ``encoder.pt`` for the pre-training bundles), the zip
gets a ``large_files.yml`` in the model zoo's format (``path``, ``url``, ``hash_val``, ``hash_type: md5``)
that says where they live: ``<weights_url>/<file name>`` when ``--weights_url`` is given (upload the file
there), else the file itself as a ``file://`` URL, which only this machine can read.
``common.bundle.fetch_large_files`` downloads them into an unpacked copy. A bundle without weights ships
none: the copy trains its own.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import fire
import yaml
from monai.bundle import ConfigParser

from common.atomic import atomic_path
from common.bundle import LARGE_FILES, REPO_ROOT
from common.bundle_checks import inference_checkpoint_name, list_bundles
from common.data.fetch import file_digest

# What a bundle run writes into its folder: never packaged.
EXCLUDED_DIRS = frozenset({"models", "eval", "mlruns", "runs", "__pycache__"})
EXCLUDED_SUFFIXES = (".pyc", ".db")
# The model zoo's CI touches every file to this time before zipping (ci/utils.py compress_bundle).
ZIP_TIME = (2022, 5, 30, 0, 0, 0)


def _bundle_dir(bundle: str | Path) -> Path:
    """``bundle`` as a bundle folder: a path, or the name of one of this repository's bundles."""
    path = Path(bundle)
    if not path.is_dir():
        path = REPO_ROOT / "bundles" / str(bundle)
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle folder (no {path / 'configs' / 'metadata.json'})")
    return path


def _config_value(file: Path, key: str) -> str:
    value = ConfigParser.load_config_file(file).get(key)
    if not isinstance(value, str) or not value:
        raise KeyError(f"{file}: no {key!r} entry (a non-empty string) to name the package")
    return value


def _packaged_files(bundle: Path) -> list[Path]:
    """The bundle's files that go into the zip, relative to ``bundle``, sorted."""
    files = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle)
        parts = relative.parts
        if (
            path.is_file()
            and not any(part.startswith(".") or part in EXCLUDED_DIRS for part in parts)
            and not parts[-1].startswith("mlruns")
            and not parts[-1].endswith(EXCLUDED_SUFFIXES)
            and parts != (LARGE_FILES,)
        ):
            files.append(relative)
    return files


def large_files(bundle: Path, weights_url: str | None = None) -> list[dict]:
    """The ``large_files.yml`` entries of ``bundle``: those of its own ``large_files.yml`` if it has one,
    then its inference weights (``models/<file>``) if they exist and are not listed there."""
    own = bundle / LARGE_FILES
    entries = list(ConfigParser.load_config_file(own).get("large_files", [])) if own.is_file() else []
    weights = bundle / "models" / inference_checkpoint_name(bundle)
    path = weights.relative_to(bundle).as_posix()
    if weights.is_file() and path not in {entry.get("path") for entry in entries}:
        url = f"{weights_url.rstrip('/')}/{weights.name}" if weights_url else weights.resolve().as_uri()
        md5 = file_digest(weights, "md5")
        entries.append({"path": path, "url": url, "hash_val": md5, "hash_type": "md5"})
    return entries


def package(bundle: str | Path, out: str | Path = "dist", weights_url: str | None = None) -> Path:
    """Write ``<out>/<name>_v<version>.zip`` for ``bundle`` (a name under ``bundles/`` or a folder) and
    return its path; the zip replaces any previous one only once complete."""
    root = _bundle_dir(bundle)
    name = _config_value(root / "configs" / "inference.json", "bundle_name")
    version = _config_value(root / "configs" / "metadata.json", "version")
    target = Path(out) / f"{name}_v{version}.zip"
    entries = large_files(root, weights_url)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        contents = [(f.as_posix(), (root / f).read_bytes()) for f in _packaged_files(root)]
        if entries:
            text = yaml.safe_dump({"large_files": entries}, sort_keys=False)
            contents = sorted([*contents, (LARGE_FILES, text.encode())])
        for relative, data in contents:
            info = zipfile.ZipInfo(f"{name}/{relative}", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    print(f"[package_bundle] {root} -> {target} ({len(contents)} files, {len(entries)} large file(s))")
    return target


def main(bundle: str | None = None, out: str = "dist", weights_url: str | None = None, all: bool = False):
    """``package`` one bundle, or with ``--all`` every bundle of this repository."""
    if all == (bundle is not None):
        raise ValueError("give either one bundle (a name under bundles/ or a folder) or --all")
    bundles = list_bundles() if all else [bundle]
    return [str(package(b, out, weights_url)) for b in bundles]


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
