"""Study files: a declarative comparison (encoders x tasks x protocols x shots x seeds) expanded into cells.

A study file is JSON (or YAML) read with MONAI's :class:`~monai.bundle.ConfigParser`, so ``@``/``$``/``%``
references work as in bundle configs (e.g. ``"feature_size": "@sizes#feature_size"``). Its keys:

- ``sizes``: free values other entries reference;
- ``steps``: named bundle runs other entries depend on (pre-training, a teacher to export), each
  ``{"bundle", "runs", "overrides", "output"}``; run once, when a cell needs them;
- ``encoders``: ``{name: {}}`` (scratch), ``{"file": PATH}``, ``{"step": NAME}`` (that step's output) or
  ``{"published": NAME, "file": PATH, "config": {...}}`` (a published checkpoint, converted once with
  :func:`~common.evaluation.matrix.published_encoder`); each may add ``overrides`` (e.g. ``encoder_name``);
- ``tasks``: ``{name: {"bundle", "runs", "overrides", "metrics", "encoder_key"}}``: the downstream bundle,
  the runs of one cell (``{"id": "training", "configs": ["train.json"], "track": true}`` or
  ``{"export": "torchscript", "input_shape": [...]}``), and the metric readers
  (:mod:`common.study.execute`);
- ``protocols``: ``{name: overrides}`` (fine-tune, linear head, LoRA, BitFit, frozen decoder, probes);
- ``shots``: ``{name: overrides}`` (e.g. the datalist key of each few-shot split);
- ``matrix``: a list of blocks ``{"tasks", "encoders", "protocols", "shots", "seeds", "overrides"}``; each
  block is the product of its lists (a missing axis is left out of the cell); the study is their union;
- ``report``: the report's sections (:mod:`common.study.report`).

Overrides merge in the order task < encoder < protocol < shots < seed (``{"seed": seed}``) < block.
Strings may hold placeholders: ``{seed}``, ``{shots}``, ``{encoder}``, ``{protocol}``, ``{task}``,
``{out}`` (the cell's folder), ``{step:NAME}`` (that step's folder). A string that is one placeholder
takes the value's type. A string starting with ``$$`` (``@@``) reaches the bundle as the ``$`` expression
(``@`` reference) after the first character, unresolved by the study file's parser.
Every cell and step gets a content-hashed id: the hash of its resolved bundle,
runs, overrides, metric readers and encoder identity (the sha256 of an encoder file, the id of the step
that makes it), so a changed setting makes a new cell and a finished cell is never run again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from monai.bundle import ConfigParser

from ..bundle import REPO_ROOT
from ..data.fetch import sha256sum

__all__ = ["Item", "Study", "load_study"]

TOP_KEYS = ("name", "description", "work_dir", "sizes", "steps", "encoders", "tasks", "protocols", "shots")
TOP_KEYS += ("matrix", "report")
BLOCK_KEYS = ("tasks", "encoders", "protocols", "shots", "seeds", "overrides")
ENCODER_KEYS = ("file", "step", "published", "config", "overrides")
RUN_KEYS = ("bundle", "runs", "overrides", "output", "metrics", "encoder_key")
ESCAPE = "\x00"  # "$$expr" / "@@id": passed to the bundle as "$expr" / "@id", not resolved in the study
PLACEHOLDER = re.compile(r"\{(seed|shots|encoder|protocol|task|out|step:[\w.-]+)\}")


def content_hash(obj) -> str:
    """The first 10 hex digits of the sha256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class Item:
    """One bundle run of the study: a matrix cell or a step. ``id`` is ``<name>-<hash>``; ``deps`` are the
    ids of the steps it needs; ``spec`` is what the child process runs (:mod:`common.study.execute`)."""

    kind: str  # "cell" or "step"
    name: str
    id: str
    spec: dict
    deps: list[str] = field(default_factory=list)
    axes: dict = field(default_factory=dict)


@dataclass
class Study:
    path: Path
    config: dict
    work_dir: Path
    steps: dict[str, Item]
    cells: list[Item]

    @property
    def items(self) -> list[Item]:
        """Steps (in dependency order) then cells."""
        return [*self.steps.values(), *self.cells]


def _error(path, key: str, text: str) -> ValueError:
    return ValueError(f"{path}: {key}: {text}")


def _check_keys(path, where: str, value, allowed) -> None:
    if not isinstance(value, Mapping):
        raise _error(path, where, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _error(path, where, f"unknown key(s) {unknown}; allowed: {list(allowed)}")


def _substitute(value, values: Mapping):
    """Replace the placeholders of every string in ``value`` (see the module docstring)."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in values:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(v, values) for v in value]
    return value


def _step_refs(value) -> set[str]:
    text = json.dumps(value, default=str)
    return {m.group(1)[5:] for m in PLACEHOLDER.finditer(text) if m.group(1).startswith("step:")}


def _escape(value, old: str, new: str):
    """Strings starting with ``old`` start with ``new`` instead, everywhere in ``value``."""
    if isinstance(value, str):
        return new + value[len(old) :] if value.startswith(old) else value
    if isinstance(value, Mapping):
        return {k: _escape(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v, old, new) for v in value]
    return value


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} not found")
    try:
        raw = ConfigParser.load_config_file(str(path))
        parser = ConfigParser(_escape(_escape(raw, "$$", ESCAPE + "$"), "@@", ESCAPE + "@"))
        config = _escape(parser.get_parsed_content("", lazy=False), ESCAPE, "")
    except Exception as err:  # a JSON error, an unresolved @reference, a failing $expression
        raise ValueError(f"{path}: cannot parse the study file: {err}") from err
    if not isinstance(config, Mapping):
        raise ValueError(f"{path}: a study file is a mapping at the top level")
    return json.loads(json.dumps(config, default=str))


def load_study(path: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> Study:
    """Read, check and expand the study file ``path``; ``work_dir`` overrides its ``work_dir``."""
    path = Path(path)
    config = _read(path)
    _check_keys(path, "top level", config, TOP_KEYS)
    for key in ("tasks", "matrix"):
        if not config.get(key):
            raise _error(path, key, "required and non-empty")
    root = Path(work_dir or config.get("work_dir") or Path("runs") / path.stem)
    if not root.is_absolute():
        root = (Path.cwd() / root).resolve()
    steps: dict[str, Item] = {}
    raw_steps = config.get("steps", {})

    def step_item(name: str, chain: tuple = ()) -> Item:
        if name in steps:
            return steps[name]
        if name not in raw_steps:
            raise _error(path, f"steps#{name}", f"no such step (steps: {sorted(raw_steps)})")
        if name in chain:
            raise _error(path, f"steps#{name}", f"circular dependency {' -> '.join((*chain, name))}")
        raw = raw_steps[name]
        _check_keys(path, f"steps#{name}", raw, RUN_KEYS)
        deps = [step_item(dep, (*chain, name)) for dep in sorted(_step_refs(raw))]
        spec = _run_spec(path, f"steps#{name}", raw)
        values = {f"step:{d.name}": d.spec["out"] for d in deps}
        spec["overrides"] = _substitute(spec["overrides"], values)
        identity = {**spec, "deps": [d.id for d in deps]}
        item_id = f"{name}-{content_hash(identity)}"
        out = root / "steps" / item_id
        spec["overrides"] = _substitute(spec["overrides"], {"out": str(out)})
        spec.update(out=str(out), output_path=str(out / raw.get("output", "")), name=name, id=item_id)
        steps[name] = Item("step", name, item_id, spec, [d.id for d in deps])
        return steps[name]

    encoders = config.get("encoders", {})
    for name, entry in encoders.items():
        _check_keys(path, f"encoders#{name}", entry, ENCODER_KEYS)
    cells: list[Item] = []
    seen: set[str] = set()
    for b, block in enumerate(config["matrix"]):
        where = f"matrix#{b}"
        _check_keys(path, where, block, BLOCK_KEYS)
        axes = {
            "task": _axis(path, where, block, "tasks", config.get("tasks", {})),
            "encoder": _axis(path, where, block, "encoders", encoders),
            "protocol": _axis(path, where, block, "protocols", config.get("protocols", {})),
            "shots": _axis(path, where, block, "shots", config.get("shots", {})),
            "seed": [int(s) for s in block["seeds"]] if "seeds" in block else [None],
        }
        if axes["task"] == [None]:
            raise _error(path, where, "needs 'tasks'")
        for task, encoder, protocol, shots, seed in itertools.product(*axes.values()):
            cell = _cell(path, config, root, block, task, encoder, protocol, shots, seed, step_item)
            if cell.id not in seen:
                seen.add(cell.id)
                cells.append(cell)
    return Study(path, config, root, steps, cells)


def _axis(path, where: str, block: Mapping, key: str, declared: Mapping) -> list:
    if key not in block:
        return [None]
    names = [str(n) for n in block[key]]
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise _error(path, f"{where}#{key}", f"{unknown} not declared under '{key}' ({sorted(declared)})")
    return names


def _run_spec(path, where: str, raw: Mapping) -> dict:
    if "bundle" not in raw or not raw.get("runs"):
        raise _error(path, where, "needs 'bundle' and a non-empty 'runs' list")
    bundle = REPO_ROOT / "bundles" / raw["bundle"] / "configs"
    if not bundle.is_dir():
        raise _error(path, f"{where}#bundle", f"no bundle {raw['bundle']!r} under {REPO_ROOT / 'bundles'}")
    for i, run in enumerate(raw["runs"]):
        if "export" not in run and not {"id", "configs"} <= set(run):
            raise _error(path, f"{where}#runs#{i}", "a run has 'id' and 'configs' (or 'export')")
        for name in run.get("configs", []):
            if not (bundle / name).is_file():
                raise _error(path, f"{where}#runs#{i}", f"no config {name} in {bundle}")
    return {
        "bundle": raw["bundle"],
        "runs": list(raw["runs"]),
        "overrides": dict(raw.get("overrides", {})),
        "metrics": list(raw.get("metrics", [])),
    }


def _encoder_identity(path, root: Path, name: str | None, entry: Mapping, step_item) -> tuple:
    """``(identity for the hash, encoder file or None, step dependency or None)``."""
    if name is None or not ({"file", "step"} & set(entry)):
        return None, None, None
    if "step" in entry:
        step = step_item(entry["step"])
        return {"step": step.id}, step.spec["output_path"], step
    file = Path(entry["file"])
    if not file.is_file():
        raise _error(path, f"encoders#{name}#file", f"no file {file}")
    identity = {"file": str(file), "sha256": sha256sum(file)}
    if "published" not in entry:
        return identity, str(file.resolve()), None
    identity.update(published=entry["published"], config=entry.get("config", {}))
    converted = root / "published" / f"{name}-{content_hash(identity)}" / "encoder.pt"
    return identity, str(converted), None


def _cell(path, config, root, block, task, encoder, protocol, shots, seed, step_item) -> Item:
    raw = config["tasks"][task]
    _check_keys(path, f"tasks#{task}", raw, RUN_KEYS)
    spec = _run_spec(path, f"tasks#{task}", raw)
    entry = config.get("encoders", {}).get(encoder, {}) if encoder else {}
    identity, encoder_file, step = _encoder_identity(path, root, encoder, entry, step_item)
    overrides = dict(spec["overrides"])
    overrides.update(entry.get("overrides", {}))
    encoder_key = raw.get("encoder_key", "pretrained_encoder")
    if encoder is not None and encoder_key:
        overrides[encoder_key] = encoder_file  # None: scratch
    overrides.update(config.get("protocols", {}).get(protocol, {}) if protocol else {})
    overrides.update(config.get("shots", {}).get(shots, {}) if shots else {})
    if seed is not None:
        overrides["seed"] = seed
    overrides.update(block.get("overrides", {}))
    deps = [step_item(dep) for dep in sorted(_step_refs(overrides))]
    if step is not None:
        deps.append(step)
    values = {"seed": seed, "shots": shots, "encoder": encoder, "protocol": protocol, "task": task}
    values.update({f"step:{d.name}": d.spec["out"] for d in deps})
    spec["overrides"] = _substitute(overrides, values)
    axes = {k: v for k, v in values.items() if v is not None}
    name = ".".join(
        str(v)
        for v in (
            task,
            encoder,
            protocol,
            f"{shots}shot" if shots else None,
            None if seed is None else f"seed{seed}",
        )
        if v is not None
    )
    item_id = f"{name}-{content_hash({**spec, 'encoder': identity})}"
    out = root / "cells" / item_id
    spec["overrides"] = _substitute(spec["overrides"], {"out": str(out)})
    spec.update(out=str(out), name=name, id=item_id, axes=axes, task_bundle=raw["bundle"])
    spec.update(encoder_key=encoder_key if encoder else None, encoder_file=encoder_file)
    spec["published"] = None
    if "published" in entry:  # converted by the runner; the MLflow tags of a published checkpoint
        spec["published"] = {k: entry[k] for k in ("published", "file", "config") if k in entry}
        spec["published_tags"] = {"published": entry["published"], "published_file": identity["file"]}
        spec["published_tags"].update(published_sha256=identity["sha256"], config=entry.get("config", {}))
    return Item("cell", name, item_id, spec, sorted({d.id for d in deps}), axes)
