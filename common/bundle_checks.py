"""The checks MONAI's model-zoo CI runs on a bundle, run here on every bundle of the collection.

They mirror the model zoo's verifier (``ci/verify_bundle.py`` of Project-MONAI/model-zoo, mode ``full``) with
MONAI's own defaults: required and preferred files (``models/model.pt`` made as the verifier makes it when a
bundle ships none: the ``state_dict()`` of ``network_def`` from ``configs/inference.json``), version and
changelog, the metadata schema, ``verify_net_in_out`` (``n=1, p=1, any=1``, the inference config as
shipped) and ``ckpt_export`` (:mod:`common.bundle_export`). On top of those, the collection's own checks: a
smoke training run, inference and ``torchrun``.

Each ``check_*`` function takes a bundle directory, raises :class:`BundleCheckError` naming the file (and
the key) at fault, and writes only under the ``work_dir`` it is given. The small-data runs merge the
bundle's ``configs/smoke.json`` (one tiny epoch on real data) over its configs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from monai.apps.utils import download_url
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from monai.bundle.scripts import _get_fake_spatial_shape
from monai.utils import BundlePropertyConfig

from common.bundle import REPO_ROOT
from common.data.cache import cache_root
from common.engines import compare_weights_digests

# The model zoo's necessary and preferred files (``models/model.pt`` is made by :func:`make_zoo_weights`).
ZOO_NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
ZOO_PREFERRED_FILES = ("models/model.pt", "configs/inference.json")
# The collection's own required files, on top of the model zoo's.
REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/smoke.json",
    "docs/README.md",
    "LICENSE",
)
# The ids with which a smoke.json shrinks a bundle's network, its crops, views and heads (its other ids
# shorten the run or the data): what a size study puts back or keeps (tools/bench.py --size cpu, the
# trains-at-defaults test).
SIZE_KEYS = frozenset(
    {
        "backbone",
        "encoder_config",
        "feature_size",
        "pixdim",
        "global_size",
        "local_size",
        "num_local",
        "image_size",
        "roi_size",
        "num_samples",
        "patch_size",
        "out_dim",
        "head_hidden_dim",
        "bottleneck_dim",
        "mlp_hidden_dim",
        "projection_dim",
        "projection_hidden_dim",
        "decoder_dim",
        "decoder_depth",
        "decoder_num_heads",
    }
)
# Where MONAI's metadata schema is looked for, after ``--schema`` and $MEDFM_BUNDLE_SCHEMA: the folder beside
# a clone of the steering repository (absent in a user's clone), then the download cache.
SCHEMA_ENV = "MEDFM_BUNDLE_SCHEMA"
SHARED_SCHEMA_DIR = REPO_ROOT.parent / "shared" / "schemas"


class BundleCheckError(AssertionError):
    """A bundle does not meet the model-zoo convention; the message names the file and the key."""


def list_bundles(root: Path = REPO_ROOT / "bundles") -> list[Path]:
    """Every directory under ``bundles/``: one lacking the required files fails, it is not skipped."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def config_path(bundle: Path, name: str) -> str:
    return str(Path(bundle) / "configs" / name)


def smoke_overrides(bundle: Path, config: str) -> dict:
    """``smoke.json``'s id-value pairs, restricted to the top-level ids that ``config`` defines.

    Its optional ``smoke_metadata`` entry (``{"network_data_format#...": value}``) becomes ``_meta_#...``
    overrides: metadata that changes with the smoke size, such as an embedding width."""
    pairs = ConfigParser.load_config_file(config_path(bundle, "smoke.json"))
    defined = ConfigParser.load_config_file(config_path(bundle, config))
    overrides = {k: v for k, v in pairs.items() if k.split("#")[0] in defined}
    overrides.update({f"_meta_#{k}": v for k, v in pairs.get("smoke_metadata", {}).items()})
    return overrides


def check_required_files(bundle: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (Path(bundle) / f).is_file()]
    if missing:
        raise BundleCheckError(f"{bundle}: missing required files {missing}")


def check_zoo_files(bundle: Path) -> None:
    """The model zoo's directory check: its necessary files, then its preferred ones (``models/model.pt``
    included: call :func:`make_zoo_weights` first on a copy of a bundle that ships no weights)."""
    for name in (*ZOO_NECESSARY_FILES, *ZOO_PREFERRED_FILES):
        if not (Path(bundle) / name).is_file():
            raise BundleCheckError(f"{bundle}: the model zoo needs {name}, which is missing")


def check_version(bundle: Path) -> None:
    """The model zoo's version check: ``version`` and ``changelog`` present, the version in the changelog."""
    meta_file = config_path(bundle, "metadata.json")
    meta = ConfigParser.load_config_file(meta_file)
    for key in ("version", "changelog"):
        if key not in meta:
            raise BundleCheckError(f"{meta_file}: {key!r} is missing")
    if meta["version"] not in meta["changelog"]:
        raise BundleCheckError(f"{meta_file}: version {meta['version']} is missing from 'changelog'")


def resolve_schema(meta_file: str | Path, schema: str | Path | None = None) -> Path:
    """The metadata schema file for ``meta_file``: ``schema`` when given, else ``$MEDFM_BUNDLE_SCHEMA``, else
    the schema file named by the metadata's ``schema`` URL in ``../shared/schemas/`` (beside the repository)
    or in the data cache, else that URL downloaded into the cache (as ``verify_metadata`` downloads it).

    Raises :class:`BundleCheckError` naming the file when a given schema is missing, and saying what to do
    when none is found and the download fails (offline)."""
    given = schema or os.environ.get(SCHEMA_ENV)
    if given:
        if not Path(given).is_file():
            source = "--schema" if schema else f"${SCHEMA_ENV}"
            raise BundleCheckError(f"metadata schema {given} ({source}) not found")
        return Path(given)
    url = ConfigParser.load_config_file(str(meta_file)).get("schema")
    if not url:
        raise BundleCheckError(f"{meta_file}: no 'schema' URL")
    cached = cache_root() / "schemas" / Path(url).name
    for candidate in (SHARED_SCHEMA_DIR / Path(url).name, cached):
        if candidate.is_file():
            return candidate
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url=url, filepath=str(cached), progress=False)
    except Exception as e:  # offline: urllib's URLError, or MONAI's RuntimeError around it
        raise BundleCheckError(
            f"{meta_file}: the metadata schema {url} could not be downloaded ({type(e).__name__}: {e}). "
            f"Offline, pass --schema PATH (or set ${SCHEMA_ENV}), or put the file at {cached}"
        ) from e
    return cached


def check_metadata(bundle: Path, schema: Path | None = None) -> None:
    """``monai.bundle.verify_metadata`` against the schema that :func:`resolve_schema` finds."""
    meta_file = config_path(bundle, "metadata.json")
    schema_file = resolve_schema(meta_file, schema)
    try:
        verify_metadata(meta_file=meta_file, filepath=str(schema_file), create_dir=False)
    except ValueError as e:
        raise BundleCheckError(f"{meta_file}: {e}") from e


def make_zoo_weights(bundle: Path) -> Path:
    """``models/model.pt`` as the model zoo's verifier makes it for a bundle that ships no weights: the
    ``state_dict()`` of ``network_def`` parsed from ``configs/inference.json`` with the metadata."""
    parser = ConfigParser()
    parser.read_config(config_path(bundle, "inference.json"))
    parser.read_meta(config_path(bundle, "metadata.json"))
    parser["bundle_root"] = str(bundle)
    weights = Path(bundle) / "models" / "model.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    return weights


def zoo_copy(bundle: Path, work_dir: Path) -> Path:
    """A copy of ``bundle`` in ``work_dir`` (without its outputs) holding the verifier's ``models/model.pt``:
    the model zoo verifies a bundle folder in place, and the checks here write into the copy only."""
    copy = Path(work_dir) / Path(bundle).name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "eval", "mlruns*", "__pycache__"))
    make_zoo_weights(copy)
    return copy


def _workflow(bundle: Path, workflow_type: str, config_files: list[str], **overrides) -> ConfigWorkflow:
    """An initialised ConfigWorkflow whose TrainProperties / InferProperties are all present.

    As in the model zoo: every required property, and every optional one the config references, must
    resolve (``ConfigWorkflow.check_properties``).
    """
    workflow = ConfigWorkflow(
        config_file=config_files,
        meta_file=config_path(bundle, "metadata.json"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    try:
        missing = workflow.check_properties()
    except KeyError as e:  # a required property whose id is absent from the config
        raise BundleCheckError(f"{config_files[0]}: {e.args[0]}") from e
    if missing:
        ids = {name: workflow.properties[name][BundlePropertyConfig.ID] for name in missing}
        raise BundleCheckError(f"{config_files[0]}: missing {workflow_type} properties (name: id) {ids}")
    return workflow


def _train_files(bundle: Path) -> list[str]:
    return [config_path(bundle, "train.json"), config_path(bundle, "smoke.json")]


def _train_dirs(work_dir: Path) -> dict:
    return {"ckpt_dir": str(Path(work_dir) / "models"), "output_dir": str(Path(work_dir) / "eval")}


def _infer_overrides(bundle: Path, ckpt: Path | None, work_dir: Path | None = None, **extra) -> dict:
    overrides = {**smoke_overrides(bundle, "inference.json"), **extra}
    if ckpt is not None:
        overrides["ckpt_path"] = str(ckpt)
    if work_dir is not None:
        overrides["output_dir"] = str(Path(work_dir) / "infer")
    return overrides


def train_smoke(bundle: Path, work_dir: Path, **overrides) -> Path:
    """``ConfigWorkflow`` training with the smoke overrides (and ``overrides``); returns the checkpoint
    that inference reads."""
    dirs = _train_dirs(work_dir)
    workflow = _workflow(bundle, "train", _train_files(bundle), **dirs, **overrides)
    workflow.run()
    workflow.finalize()
    models = Path(dirs["ckpt_dir"])
    for name in (inference_checkpoint_name(bundle), "model_final.pt"):
        if (models / name).is_file():
            return models / name
    raise BundleCheckError(f"{config_path(bundle, 'train.json')}: training wrote no checkpoint in {models}")


def inference_checkpoint_name(bundle: Path) -> str:
    """The file name of ``inference.json``'s ``ckpt_path`` (``model.pt``, or ``encoder.pt`` for the
    pre-training bundles, whose inference network is the exported encoder)."""
    parser = ConfigParser()
    parser.read_config(config_path(bundle, "inference.json"))
    parser["bundle_root"] = str(bundle)
    return Path(parser.get_parsed_content("ckpt_path")).name


def infer_smoke(bundle: Path, ckpt: Path, work_dir: Path, **overrides) -> list[Path]:
    """``ConfigWorkflow`` inference from ``ckpt`` (smoke overrides, then ``overrides``); returns the files it
    wrote under ``work_dir/infer``."""
    overrides = _infer_overrides(bundle, ckpt, work_dir, **overrides)
    workflow = _workflow(bundle, "infer", [config_path(bundle, "inference.json")], **overrides)
    workflow.run()
    workflow.finalize()
    written = sorted(p for p in (Path(work_dir) / "infer").rglob("*") if p.is_file())
    if not written:
        raise BundleCheckError(f"{config_path(bundle, 'inference.json')}: inference wrote nothing")
    return written


def model_weights(ckpt: Path) -> tuple[dict, str]:
    """The network's state dict in ``ckpt`` and its key there: CheckpointSaver writes a dict of objects
    (``{"model": ..., "optimizer": ...}``), an encoder file holds ``{"state_dict": ..., "meta": ...}``,
    or the file is the state dict itself."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            return state[key], key
    return state, ""


def example_input_shape(bundle: Path) -> list[int]:
    """[1, C, *spatial] from the metadata's ``network_data_format``, read as MONAI reads it for
    ``verify_net_in_out`` and ``ckpt_export`` (``"32*n"`` with ``n=1``, ``"*"`` as 1)."""
    meta_file = config_path(bundle, "metadata.json")
    image = ConfigParser.load_config_file(meta_file)["network_data_format"]["inputs"]["image"]
    try:
        spatial = _get_fake_spatial_shape(image["spatial_shape"])
    except (ValueError, SyntaxError, NameError) as e:
        raise BundleCheckError(
            f"{meta_file}: network_data_format#inputs#image#spatial_shape {image['spatial_shape']!r} is not "
            f"a shape MONAI can read ({e})"
        ) from e
    return [1, int(image["num_channels"]), *spatial]


def check_net_in_out(bundle: Path, **overrides) -> None:
    """``monai.bundle.verify_net_in_out`` as the model zoo runs it: the inference network as shipped (plus
    ``overrides``), MONAI's defaults ``n=1, p=1, any=1`` and device, ``bundle_root`` the bundle folder."""
    config = config_path(bundle, "inference.json")
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=config_path(bundle, "metadata.json"),
            config_file=config,
            bundle_root=str(bundle),
            **overrides,
        )
    except (ValueError, KeyError, RuntimeError) as e:
        raise BundleCheckError(f"{config}: verify_net_in_out failed: {e}") from e


def check_distributed(
    bundle: Path,
    work_dir: Path,
    nproc: int = 2,
    timeout: int = 900,
    tracking: bool = True,
    nnodes: int = 1,
) -> None:
    """``[train, multi_gpu_train, smoke]`` through ``torchrun --nproc_per_node`` (gloo on a CPU machine),
    then two checks of the run:

    - **same weights on every rank**: a mixin appends :func:`common.engines.write_weights_digest` to the
      config's ``run`` list (``"+run"``), so after training each rank writes a digest of every tensor of
      its network; the digests must agree (the failure names the tensors that differ; plain batch-norm
      running statistics, rank-local by design, are left out: see ``common.engines.distributed``);
    - **only rank 0 writes**: each rank gets its own ``ckpt_dir`` and ``output_dir``
      (``<work_dir>/distributed/{models,eval}/rank<r>``); rank 0's must hold a checkpoint, the other ranks'
      must hold nothing. With ``tracking`` (the default), the run also logs to MLflow (``--tracking
      mlflow``), whose store must be in rank 0's ``output_dir`` only. MONAI's tracking writes its executed
      config (``config_<time>.json``) on every rank; that file is not counted.

    ``nnodes=1`` runs one ``torchrun --standalone``. ``nnodes > 1`` runs ``nnodes`` "nodes" on this machine
    as a cluster would: one ``torchrun --nnodes <nnodes> --node_rank <k>`` per node, launched together,
    meeting by c10d rendezvous at ``127.0.0.1:<free port>`` (:func:`torchrun_commands`); the ranks are
    ``nnodes * nproc`` global ranks, device and data shard chosen by ``LOCAL_RANK`` and ``RANK``.
    """
    files = [config_path(bundle, n) for n in ("train.json", "multi_gpu_train.json", "smoke.json")]
    root = Path(work_dir) / "distributed"
    root.mkdir(parents=True, exist_ok=True)
    digests = str(root / "weights_rank{rank}.json")
    mixin = root / "weights_digest.json"
    mixin.write_text(json.dumps({"+run": [f"$common.engines.write_weights_digest(@network, {digests!r})"]}))
    run = ["-m", "monai.bundle", "run", "training", "--config_file", json.dumps([*files, str(mixin)])]
    for key, sub in (("ckpt_dir", "models"), ("output_dir", "eval")):
        run += [f"--{key}", f"$'{root / sub}/rank' + os.environ['RANK']"]
    if tracking:
        run += ["--tracking", "mlflow"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = torchrun_commands(nproc, nnodes, f"{bundle.name}-{os.getpid()}")
    logs = [root / f"torchrun_node{node}.log" for node in range(len(commands))]
    deadline = time.monotonic() + timeout
    processes = []
    try:
        for command, log in zip(commands, logs, strict=True):
            with log.open("w") as out:  # a file, not a pipe: a node never blocks on its output
                processes.append(
                    subprocess.Popen(
                        command + run, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
                    )
                )
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.terminate()  # torchrun stops its workers on SIGTERM
                p.wait(timeout=60)
    for node, (code, log) in enumerate(zip(codes, logs, strict=True)):
        if code != 0:
            tail = "\n".join(log.read_text().splitlines()[-25:])
            raise BundleCheckError(f"{files[1]}: torchrun (node {node} of {nnodes}) exited {code}:\n{tail}")
    world = nproc * nnodes
    differing = compare_weights_digests([digests.format(rank=r) for r in range(world)])
    if differing:
        raise BundleCheckError(
            f"{files[1]}: the {world} ranks hold different weights after training in {len(differing)} "
            f"tensors: {differing[:10]}"
        )
    models, output = root / "models" / "rank0", root / "eval" / "rank0"
    if not any(models.glob("*.pt")):
        raise BundleCheckError(f"{files[1]}: distributed training wrote no checkpoint in {models}")
    if tracking and not (output / "mlruns.db").is_file():
        raise BundleCheckError(f"{files[1]}: --tracking mlflow wrote no {output / 'mlruns.db'}")
    for rank in range(1, world):
        written = _written_by_rank(root, rank)
        if written:
            raise BundleCheckError(f"{files[1]}: rank {rank} wrote {written[:5]}; only rank 0 should write")


def torchrun_commands(nproc: int, nnodes: int, rdzv_id: str) -> list[list[str]]:
    """The ``torchrun`` command of each node: one ``--standalone`` command for one node; for more, one
    command per ``--node_rank``, all meeting by c10d rendezvous at ``127.0.0.1`` on a free port (what a
    SLURM job runs on each node, with the head node's address instead)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        return [[*torchrun, "--standalone"]]
    with socket.socket() as probe:  # a port free now; the rendezvous binds it an instant later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rendezvous = ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={rdzv_id}"]
    return [
        [*torchrun, f"--nnodes={nnodes}", f"--node_rank={k}", "--local_addr=127.0.0.1", *rendezvous]
        for k in range(nnodes)
    ]


def _written_by_rank(root: Path, rank: int) -> list[Path]:
    """The files in ``rank``'s checkpoint and output folders, but MONAI's executed-config JSON."""
    models, output = root / "models" / f"rank{rank}", root / "eval" / f"rank{rank}"
    files = [p for p in (*models.rglob("*"), *output.rglob("*")) if p.is_file()]
    return [
        p for p in files if not (p.parent == output and p.name.startswith("config_") and p.suffix == ".json")
    ]
