"""Helpers that bundle configs call to locate themselves and the repository's shared files, and to check
the overrides of a ``monai.bundle run`` command line."""

from __future__ import annotations

import difflib
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
from monai.bundle import ConfigParser, ConfigWorkflow, ReferenceResolver, update_kwargs
from monai.bundle import scripts as bundle_scripts
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

REPO_ROOT = Path(__file__).resolve().parents[1]
MONAI_BUNDLE_MAIN = ("monai", "bundle", "__main__.py")


def bundle_root(name: str) -> str:
    """The directory of bundle ``name``.

    Configs use it for ``bundle_root`` so that ``python -m monai.bundle run training --config_file
    bundles/<name>/configs/train.json`` works from the repository root, from inside the bundle directory,
    and from anywhere else; tools that copy a bundle (MONAI Label) override ``bundle_root`` themselves.
    """
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    for base in (cwd, REPO_ROOT):
        candidate = base / "bundles" / name
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(f"bundle {name!r} not found in {cwd} nor in {REPO_ROOT / 'bundles'}")


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
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != MONAI_BUNDLE_MAIN or argv[1] != "run":
        return
    args, kwargs = fire.Fire(lambda *a, **k: (a, k), command=argv[2:], serialize=lambda _: None)
    bound = inspect.signature(bundle_scripts.run).bind(*args, **kwargs).arguments
    override = bound.pop("override", {})
    given = update_kwargs(args=bound.get("args_file"), **bound, **override)
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
