"""Helpers that bundle configs call to locate themselves (wherever a bundle lives: this repository, a copy,
an unpacked package) and the repository's shared files, and to check the overrides of a ``monai.bundle
run`` command line; :func:`fetch_large_files` brings a packaged bundle's weights into its folder."""

from __future__ import annotations

import difflib
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
from monai.apps.utils import download_url
from monai.bundle import ConfigParser, ConfigWorkflow, ReferenceResolver, update_kwargs
from monai.bundle import scripts as bundle_scripts
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS
from monai.utils import ensure_tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
MONAI_BUNDLE_MAIN = ("monai", "bundle", "__main__.py")
# The model zoo's list of the files a bundle fetches by URL (path, url, hash_val, hash_type).
LARGE_FILES = "large_files.yml"


def bundle_root(name: str, argv: Sequence[str] | None = None) -> str:
    """The directory of bundle ``name``: where its configs are read from and where it writes (``models/``,
    ``eval/``).

    In a ``python -m monai.bundle run`` process (``argv``, by default ``sys.argv``) whose first
    ``--config_file`` lies in ``<folder>/configs/`` beside a ``metadata.json``, and whose configs declare
    ``bundle_name`` ``name``, it is ``<folder>``: the bundle lives where it is, so a copy (MONAI Label's, an
    unpacked ``monai.bundle download``, a user's, renamed or not) writes into itself, whatever the working
    directory. This is the folder MONAI itself reads ``metadata.json`` and ``logging.conf`` from. Otherwise
    (a config naming another bundle, ``ConfigWorkflow`` in Python) it is the working directory when that
    is the bundle, then ``<cwd>/bundles/<name>``, then this repository's ``bundles/<name>``. Python callers
    that run a copy pass ``bundle_root`` themselves, as MONAI Label does.
    """
    running = _running_bundle(name, argv)
    if running is not None:
        return str(running)
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    for base in (cwd, REPO_ROOT):
        candidate = base / "bundles" / name
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(f"bundle {name!r} not found in {cwd} nor in {REPO_ROOT / 'bundles'}")


def _running_bundle(name: str, argv: Sequence[str] | None) -> Path | None:
    """The folder of the bundle that the ``python -m monai.bundle run`` command line ``argv`` runs, if it
    is bundle ``name`` (see :func:`bundle_root`); ``None`` for any other process or bundle."""
    given = monai_run_arguments(argv)
    if not given or not given.get("config_file"):
        return None
    configs = Path(ensure_tuple(given["config_file"])[0]).resolve().parent
    if configs.name != "configs" or not (configs / "metadata.json").is_file():
        return None
    config = ConfigParser.load_config_files(given["config_file"])
    declared = given.get("bundle_name", config.get("bundle_name"))
    return configs.parent if declared == name else None


def fetch_large_files(bundle: str | os.PathLike) -> list[Path]:
    """Download the files that ``<bundle>/large_files.yml`` lists into the bundle, as the model zoo's CI
    does (``ci/utils.py`` ``download_large_files``: MONAI's ``download_url``, hash-checked, a file already
    there with the right hash is kept); returns their paths. An entry's ``path`` must stay inside the
    bundle."""
    root = Path(bundle).resolve()
    listing = root / LARGE_FILES
    fetched = []
    for i, entry in enumerate(ConfigParser.load_config_file(listing).get("large_files") or []):
        missing = [key for key in ("path", "url") if not entry.get(key)]
        if missing:
            raise KeyError(f"{listing}: large_files#{i} has no {' or '.join(missing)!r}")
        target = (root / entry["path"]).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"{listing}: large_files#{i}#path {entry['path']!r} leaves the bundle folder")
        download_url(
            entry["url"], target, entry.get("hash_val"), entry.get("hash_type", "md5"), progress=False
        )
        fetched.append(target)
    return fetched


def class_names(datalist_file: str, key: str = "labels") -> list[str]:
    """Class names from a Decathlon datalist's ``key`` entry (default ``labels``): a ``{"0": name, ...}``
    mapping, ordered by label value, or a list (such as ``finding_names``)."""
    with open(datalist_file) as f:
        names = json.load(f).get(key)
    if not names:
        raise KeyError(f"{datalist_file}: no {key!r} entry naming the classes")
    return [names[str(i)] for i in range(len(names))] if isinstance(names, dict) else list(names)


def _undefined(config: dict, key: str) -> str | None:
    """``None`` when the override ``key`` (``a#b#0`` or ``a::b::0``) names an entry of ``config`` or a new
    argument of a component (a dict with ``_target_``, whose class checks its arguments itself); otherwise
    a hint naming the closest existing key (``" (did you mean --a#c?)"``), or ``""``."""
    node = config
    parts = ReferenceResolver.split_id(key)
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif depth == len(parts) - 1 and isinstance(node, dict) and "_target_" in node:
            return None
        else:
            close = difflib.get_close_matches(part, list(node), n=1) if isinstance(node, dict) else []
            return f" (did you mean --{'#'.join([*parts[:depth], close[0]])}?)" if close else ""
    return None


def monai_run_arguments(argv: Sequence[str] | None = None) -> dict | None:
    """The arguments of a ``python -m monai.bundle run`` command line (``argv``, by default ``sys.argv``)
    read as MONAI's CLI reads them: with ``fire``, ``monai.bundle.scripts.run``'s signature and the
    defaults of ``--args_file``; overrides (``--key value``) are entries of the same dict. ``None`` when
    ``argv`` is not such a command line (``ConfigWorkflow`` in Python, MONAI Label, the tests)."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != MONAI_BUNDLE_MAIN or argv[1] != "run":
        return None
    args, kwargs = fire.Fire(lambda *a, **k: (a, k), command=argv[2:], serialize=lambda _: None)
    bound = inspect.signature(bundle_scripts.run).bind(*args, **kwargs).arguments
    override = bound.pop("override", {})
    return update_kwargs(args=bound.get("args_file"), **bound, **override)


def check_overrides(argv: Sequence[str] | None = None) -> None:
    """Raise ValueError naming every ``--key`` of a ``python -m monai.bundle run`` command line that its
    config files do not define.

    MONAI adds an unknown key to the config without a word, so a misspelt ``--learning_rat 1e-3`` would
    train with the default learning rate. The bundles' train and inference configs call this first in their
    ``initialize`` list. The command line (``argv``, by default ``sys.argv``) is read as MONAI's CLI reads
    it: with ``fire``, ``run``'s signature and the defaults of ``--args_file``. A key passes when it names
    an entry of the merged ``--config_file`` files, adds an argument to a component (a dict with
    ``_target_``), is an argument of ``run`` / ``ConfigWorkflow``, is metadata (``_meta_#...``) or is a
    setting that ``--tracking`` adds. Outside a ``monai.bundle run`` process (``ConfigWorkflow`` in
    Python, MONAI Label, the tests) it does nothing: overrides given in Python are the caller's to check.
    """
    given = monai_run_arguments(argv)
    if given is None:
        return
    run_arguments = {
        name
        for function in (bundle_scripts.run, bundle_scripts.create_workflow, ConfigWorkflow.__init__)
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    config = ConfigParser.load_config_files(given["config_file"])
    tracking = given.get("tracking")
    if tracking:
        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
        config = {**(settings or ConfigParser.load_config_files(tracking)).get("configs", {}), **config}
    hints = {
        key: _undefined(config, key)
        for key in given
        if key not in run_arguments and not key.startswith("_meta_")
    }
    unknown = [f"--{key}{hint}" for key, hint in hints.items() if hint is not None]
    if unknown:
        raise ValueError(
            f"unknown override key(s) {', '.join(unknown)}: not defined in the config files "
            f"{given['config_file']}; MONAI would add them to the config, where nothing reads them"
        )
