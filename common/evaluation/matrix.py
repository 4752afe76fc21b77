"""MLflow and published-checkpoint helpers of the study runner (:mod:`common.study`).

MLflow: a tracked bundle run goes through ``tracking="mlflow"`` (MONAI's ``DEFAULT_MLFLOW_SETTINGS``). Those
settings only add the config ids ``tracking_uri``, ``experiment_name`` and ``run_name`` where the bundle
config lacks them, so passing them as overrides points every cell of a study at the same SQLite store, in
the experiment named after the task, under the run name of the cell's id. MONAI's ``MLFlowHandler`` sets
no tags, so :func:`tag_run` sets them afterwards (and creates the run for a cell without a tracked run,
e.g. a probe), with the cell's final metrics.

Published checkpoints (``common.networks.published.PUBLISHED``) enter a study by name and file:
:func:`published_encoder` converts one once into ``<work_dir>/published/<name>/encoder.pt`` (the
collection's encoder file, :func:`~common.networks.published.export_published_encoder`), reuses it when the
published name, file hash and configuration are the same and refuses it when they differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..data.fetch import sha256sum
from ..networks.pretrained import read_encoder_file
from ..networks.published import export_published_encoder, published_entry

__all__ = ["ORGANS", "PUBLISHED_SPEC_KEYS", "published_encoder", "sqlite_uri", "tag_run"]

#: organs reported beside the mean Dice (the largest abdominal organs of the class list).
ORGANS = ("liver", "spleen", "stomach")


#: the keys of a published encoder's spec: ``published`` (a name of ``PUBLISHED``), ``file``, and optional
#: ``config`` (overrides of the entry's constructor arguments, e.g. ``{"feature_size": 12}``).
PUBLISHED_SPEC_KEYS = ("published", "file", "config")


def published_encoder(name: str, spec: Mapping, work_dir: str | os.PathLike, feature_size: int) -> tuple:
    """Convert the published Swin checkpoint of ``spec`` (:data:`PUBLISHED_SPEC_KEYS`) for the encoder
    ``name`` into ``<work_dir>/published/<name>/encoder.pt``, once; returns ``(encoder file, record)`` with
    the record ``{"published", "published_file", "published_sha256", "config"}`` (settings and MLflow tags).
    The matrix fine-tunes a SwinUNETR of ``feature_size``: the entry's configuration updated by ``config``
    must have it (a published SwinUNETR has 48), and a file that does not fit raises the loader's error."""
    where = f"encoder {name!r} ({dict(spec)})"
    if set(spec) - set(PUBLISHED_SPEC_KEYS) or not {"published", "file"} <= set(spec):
        raise ValueError(f"{where}: a published encoder has the keys {PUBLISHED_SPEC_KEYS}, config optional")
    entry = published_entry(spec["published"])
    config = {**entry.config, **spec.get("config", {})}
    if entry.encoder != "swin" or config.get("feature_size") != feature_size:
        raise ValueError(
            f"{where}: the matrix fine-tunes a SwinUNETR of feature_size {feature_size}; "
            f"{spec['published']!r} builds {entry.encoder!r} with {config} (set 'config': "
            f"{{'feature_size': {feature_size}}} for a file of that size)"
        )
    file = Path(spec["file"])
    if not file.is_file():
        raise FileNotFoundError(f"{where}: no file {file}")
    record = {
        "published": spec["published"],
        "published_file": str(file),
        "published_sha256": sha256sum(file),
        "config": dict(spec.get("config", {})),
    }
    out = Path(work_dir) / "published" / name / "encoder.pt"
    if out.is_file():
        _, meta = read_encoder_file(out)
        old = {k: meta.get(k) for k in ("published", "published_sha256", "encoder_config")}
        new = {"published": record["published"], "published_sha256": record["published_sha256"]}
        if old != {**new, "encoder_config": config}:
            raise ValueError(
                f"{out}: encoder {name!r} was converted from {old}, not {new} with {config}; "
                "use a new --work_dir or the same file to resume"
            )
        return out, record
    return export_published_encoder(spec["published"], file, out, **spec.get("config", {})), record


def sqlite_uri(path: str | os.PathLike) -> str:
    """The MLflow tracking URI of a SQLite store at ``path`` (as MONAI writes it)."""
    from monai.utils import path_to_sqlite_uri

    return path_to_sqlite_uri(str(Path(path).absolute()))


def tag_run(
    tracking_uri: str, experiment: str, run_name: str, tags: Mapping, metrics: Mapping | None = None
) -> str:
    """Set ``tags`` and log ``metrics`` (final values; None skipped) on the newest run named ``run_name``
    in ``experiment``, creating the experiment and the run when there is none; returns the run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
    else:
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        client.set_terminated(run_id)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    for key, value in (metrics or {}).items():
        if value is not None:
            client.log_metric(run_id, f"result_{key}", float(value))
    return run_id
