"""Performance benchmarks of every bundle at a chosen size (``make bench``: the tiny smoke configuration).

For each bundle under ``bundles/`` the training workflow is built from ``configs/train.json`` with the
overrides of ``--size`` (:func:`size_overrides`) through MONAI's ``ConfigWorkflow`` (``ConfigParser``
underneath):

- ``smoke`` (default): ``configs/smoke.json``'s values (32³-64³ views, feature_size 8-12), on the CPU;
- ``cpu``: the smoke run's data, batch and schedule with the network, crop, view and head sizes of the
  bundle's ``train.json`` restored (:data:`SIZE_KEYS`) and a ``feature_size`` of 24
  (:data:`CPU_FEATURE_SIZE`): the sizes people train at, a step of seconds to tens of seconds on a CPU;
- ``default``: the bundle's own ``train.json`` on its own device (a GPU where there is one).

The workflow runs with two changes: checkpoints and encoder files go under ``<out>/work/<bundle>`` (the
bundle's ``models/`` is left alone), and ``val_interval`` / ``save_interval`` are set beyond the run's
length (validation and periodic saves are epoch-level work, not training iterations). Five ratios are
measured, and the peak memory of the training measurements (the process's peak RSS, or CUDA's allocator
peak on a GPU):

(a) **engine / bare**: the Ignite engine's training iteration (the config's trainer with every handler the
    config attaches, checkpoint handlers included), fed one batch of the bundle's own dataloader over and
    over, against a bare PyTorch step on the same batch with the same network, loss and optimiser objects:
    forward, loss, backward, optimiser step, plus the step's own arithmetic where the engine has it
    (gradient-norm clipping, the EMA teacher update). The engine's iteration is timed from Ignite's
    ``GET_BATCH_STARTED`` to the end of ``ITERATION_COMPLETED`` (a clock attached after every other
    handler), so batch preparation, postprocessing, metrics, logging and the progress bar count. The bare
    step gets plain tensors (``MetaTensor.as_tensor()``), as a PyTorch loop would. Aim: <= 1.05.
(b) **loader / model**: samples per second of the bundle's training dataloader (its ``CacheDataset``
    filled at start-up, random transforms applied per fetch; one full pass over the loader per repeat,
    iterator creation included) against the samples per second the bare step consumes (batch size /
    step time). Aim: >= 3.
(c) **achieved / peak FLOP/s**: ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of one
    bare step's forward and backward (matrix multiplies, convolutions, attention; element-wise work and
    the optimiser are not counted), divided by the median bare step time, against this machine's fp32
    peak measured in the same run (median of square ``torch.mm`` products, see :func:`matmul_peak`).
(d) **traced / eager**: latency of the inference config's network (``network_def`` at the size's
    overrides, ``eval()``, ``no_grad``) traced with ``torch.jit.trace`` against the same network eager,
    on a random input of the inference ``roi_size``.
(e) **bundle SW / plain SW** (bundles whose inference config has a ``SlidingWindowInferer``: the
    segmentation bundle and SuPreM): the inference config's ``inferer`` on a real CT volume (the first
    item of its datalist, through its ``preprocessing``, as the ``MetaTensor`` the evaluator passes)
    against ``monai.inferers.sliding_window_inference`` on the plain tensor with the same network,
    ``roi_size``, ``sw_batch_size`` and ``overlap`` and MONAI's defaults otherwise (constant blending;
    the bundles blend with a Gaussian).

Each pair runs side by side in one process: per repeat every member runs once, in turn; the first
``warmup`` repeats are discarded and the table reports medians over ``repeats`` (ratios are ratios of
medians). Outputs: ``<out>/bench.csv`` (every measured number) and ``<out>/bench.md`` (the table and
the machine). Measured, never asserted: the aims above are for reading the table.

    python tools/bench.py                                   # every bundle, 5 repeats (make bench)
    python tools/bench.py --size cpu --only simmim --repeats 2   # one bundle at the sizes it trains at
    python tools/bench.py --only simmim,multiorgan --repeats 1 --warmup 0

``python tools/bench.py options`` (:func:`options`) measures the network-level switches of issue 21 side by
side instead: MONAI's SwinUNETR eager against fused window attention, and a U-Net and a SegResNet in the
default layout against channels-last, one training step (forward, cross-entropy, backward, AdamW) per
member per repeat, interleaved; it writes ``<out>/options.md``.

``python tools/bench.py inference`` (``tools/bench_inference.py``, issue 21) compares sliding-window
inference of a whole CT: eager, TorchScript, ONNX Runtime, compiled and MONAI's own call.

``python tools/bench.py data`` runs the data section (``tools/bench_data.py``, issue 18): seconds to the
first iteration, peak RSS and loader samples/s at N = 10, 100, 1000 volumes, NIfTI against the patch
store; it writes ``<out>/data.md``.
"""

from __future__ import annotations

import copy
import csv
import gc
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import fire
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.utils import first
from torch.nn.utils import clip_grad_norm_
from torch.utils.flop_counter import FlopCounterMode

from common.bundle import REPO_ROOT
from common.bundle_checks import SIZE_KEYS, config_path, list_bundles, smoke_overrides
from common.data.prepare import prepare_all
from common.networks import build_segmenter, network_options

# (csv column, Markdown header, format); the ratios are the columns named a-e.
COLUMNS = (
    ("bundle", "bundle", "{}"),
    ("engine_s", "engine s/it", "{:.3f}"),
    ("bare_s", "bare s/it", "{:.3f}"),
    ("overhead_ratio", "(a) engine/bare", "**{:.3f}**"),
    ("loader_samples_per_s", "loader samples/s", "{:.1f}"),
    ("model_samples_per_s", "model samples/s", "{:.2f}"),
    ("data_ratio", "(b) loader/model", "**{:.1f}**"),
    ("gflop_per_step", "GFLOP/step", "{:.2f}"),
    ("peak_mb", "peak memory MB", "{:,.0f}"),
    ("gflop_per_s", "GFLOP/s", "{:.1f}"),
    ("peak_fraction", "(c) of peak", "**{:.3f}**"),
    ("eager_s", "eager s", "{:.3f}"),
    ("traced_s", "traced s", "{:.3f}"),
    ("torchscript_ratio", "(d) traced/eager", "**{:.3f}**"),
    ("bundle_sw_s", "bundle SW s", "{:.2f}"),
    ("plain_sw_s", "plain SW s", "{:.2f}"),
    ("sliding_window_ratio", "(e) bundle/plain SW", "**{:.3f}**"),
)
RATIOS = ("overhead_ratio", "data_ratio", "peak_fraction", "torchscript_ratio", "sliding_window_ratio")
NEVER = 10**9  # an epoch interval the benchmark's short runs never reach
CPU = "$torch.device('cpu')"
SIZES = ("smoke", "cpu", "default")
CPU_FEATURE_SIZE = 24


def size_overrides(bundle: Path, config: str, size: str) -> dict:
    """The overrides of ``config`` (a file of ``bundle``'s ``configs/``) at ``size`` (see the module
    docstring): ``smoke.json``'s (:func:`common.bundle_checks.smoke_overrides`), the same without
    :data:`SIZE_KEYS` and its metadata and with ``feature_size`` :data:`CPU_FEATURE_SIZE` where the
    config or its ``encoder_config`` has one, or none."""
    if size not in SIZES:
        raise ValueError(f"--size must be one of {SIZES}, got {size!r}")
    if size == "default":
        return {}
    overrides = smoke_overrides(bundle, config)
    if size == "smoke":
        return overrides
    overrides = {k: v for k, v in overrides.items() if k not in SIZE_KEYS and not k.startswith("_meta_#")}
    defaults = ConfigParser.load_config_file(config_path(bundle, config))
    if "feature_size" in defaults:
        overrides["feature_size"] = CPU_FEATURE_SIZE
    elif "feature_size" in (defaults.get("encoder_config") or {}):  # a Swin encoder given as a dict
        overrides["encoder_config#feature_size"] = CPU_FEATURE_SIZE
    return overrides


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a clock read after it is the work's."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory(gpu: bool = False) -> None:
    """Start a new memory peak: the CUDA allocator's with ``gpu``, else the process's peak RSS (Linux:
    write 5 to ``/proc/self/clear_refs``)."""
    if gpu:
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(gpu: bool = False) -> float | None:
    """The peak since :func:`reset_peak_memory`: CUDA's allocated bytes with ``gpu`` (the run is on the
    GPU), else the process's peak RSS (``VmHWM``; None where ``/proc`` has none)."""
    if gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if line is None else int(line.split()[1]) / 1024


def interleaved(
    label: str, members: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of each member, the members run in turn once per repeat.

    A member that returns a ``float`` reports its own measurement (the engine its iteration clock, the
    loader its seconds per sample); for any other return value its wall time counts. The first
    ``warmup`` repeats are discarded. Prints one progress line per repeat.
    """
    times: dict[str, list[float]] = {name: [] for name in members}
    for r in range(warmup + repeats):
        line = []
        for name, member in members.items():
            start = time.perf_counter()
            measured = member()
            synchronize()
            elapsed = measured if isinstance(measured, float) else time.perf_counter() - start
            line.append(f"{name} {elapsed:.4g}s")
            if r >= warmup:
                times[name].append(elapsed)
        tag = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
        print(f"    {label} {tag}: {', '.join(line)}", flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """fp32 FLOP/s of ``torch.mm`` on two ``size`` x ``size`` matrices (``2 size^3`` FLOPs) on ``device``,
    median of ``repeats`` after one warm-up: the practical matrix-multiply peak (on a CPU at torch's
    threads)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = interleaved("torch.mm peak", {"mm": lambda: torch.mm(a, b)}, repeats, 1)["mm"]
    return 2 * size**3 / seconds


def _plain(value):
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def _samples(batch: dict) -> int:
    """The batch size: the leading dimension of the batch's first tensor (an image or a view)."""
    return len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))


class IterationClock:
    """Seconds of the engine's last iteration: from ``GET_BATCH_STARTED`` (the first event of an
    iteration) to the end of ``ITERATION_COMPLETED``; attach it after every other handler so that the
    iteration's handlers all run inside the interval."""

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.stop)

    def start(self, engine) -> None:
        self.started = time.perf_counter()

    def stop(self, engine) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self.started


def bare_step(trainer, batch: dict) -> Callable[[], None]:
    """A plain PyTorch training step on ``batch`` with the trainer's own network, loss and optimiser.

    ``SSLTrainer`` (a method returning its losses): forward, backward, gradient clipping when the trainer
    clips, optimiser step, EMA teacher update. ``SupervisedTrainer``: ``loss(network(image), label)``,
    backward, optimiser step; a partial-label loss keeps the annotated classes that the engine's handler
    set for this same batch.
    """
    network, optimizer = trainer.network, trainer.optimizer
    tensors = {k: _plain(v) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    network.train()
    if hasattr(trainer, "loss_function"):
        image, label, loss_function = tensors["image"], tensors["label"], trainer.loss_function

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_function(network(image), label).mean().backward()
            optimizer.step()

        return step
    clip = trainer.clip_grad_norm

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        network(tensors)["loss"].backward()
        if clip:
            clip_grad_norm_(network.parameters(), clip)
        optimizer.step()
        network.update_teacher()

    return step


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one step (forward and backward) as ``FlopCounterMode`` counts them."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure_training(
    bundle: Path, work_dir: Path, repeats: int, warmup: int, size: str = "smoke"
) -> dict[str, float]:
    """Ratios (a), (b) and the FLOPs of (c) at ``size``: the engine, the bare step and the loader,
    interleaved; and the peak memory of the three."""
    device = {} if size == "default" else {"device": CPU}
    gpu = size == "default" and torch.cuda.is_available()  # the bundle's own device
    workflow = ConfigWorkflow(
        config_file=config_path(bundle, "train.json"),
        meta_file=config_path(bundle, "metadata.json"),
        workflow_type="train",
        ckpt_dir=str(work_dir / "models"),
        output_dir=str(work_dir / "eval"),
        **{
            **size_overrides(bundle, "train.json", size),
            "val_interval": NEVER,
            "save_interval": NEVER,
            **device,
        },
    )
    workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    if "checkpoint_handlers" in parser["train"]:  # what the SSL configs' `run` attaches before running
        for handler in parser.get_parsed_content("train#checkpoint_handlers"):
            handler.attach(trainer)
    clock = IterationClock()
    clock.attach(trainer)
    loader = parser.get_parsed_content("train#dataloader")
    batch = first(loader)
    trainer.data_loader, trainer.state.epoch_length = [batch], 1

    def engine_iteration() -> float:
        trainer.state.max_epochs = trainer.state.epoch + 1  # resume for one more one-iteration epoch
        trainer.run()
        return clock.seconds

    def loader_pass() -> float:
        start, samples = time.perf_counter(), 0
        for fetched in loader:
            samples += _samples(fetched)
        return (time.perf_counter() - start) / samples

    step = bare_step(trainer, batch)
    reset_peak_memory(gpu)
    times = interleaved(
        "train", {"engine": engine_iteration, "bare": step, "loader": loader_pass}, repeats, warmup
    )
    peak_mb = peak_memory_mb(gpu)
    flops = step_flops(step)
    workflow.finalize()
    return {
        "engine_s": times["engine"],
        "bare_s": times["bare"],
        "loader_samples_per_s": 1 / times["loader"],
        "model_samples_per_s": _samples(batch) / times["bare"],
        "gflop_per_step": flops / 1e9,
        **({} if peak_mb is None else {"peak_mb": peak_mb}),
    }


def measure_inference(bundle: Path, repeats: int, warmup: int, size: str = "smoke") -> dict[str, float]:
    """Ratio (d) for every bundle and (e) where the inference config's inferer slides a window, at
    ``size`` on the CPU."""
    parser = ConfigParser()
    parser.read_config(config_path(bundle, "inference.json"))
    parser.read_meta(config_path(bundle, "metadata.json"))
    parser.update({**size_overrides(bundle, "inference.json", size), "device": CPU})
    network = parser.get_parsed_content("network_def").eval()
    roi = parser.get_parsed_content("roi_size")
    roi = [roi] * 3 if isinstance(roi, int) else list(roi)
    x = torch.rand(1, parser.get_parsed_content("in_channels"), *roi)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network, x)
        for _ in range(2):  # TorchScript's profiling executor optimises the graph on its first calls
            traced(x)
        times = interleaved(
            "TorchScript", {"eager": lambda: network(x), "traced": lambda: traced(x)}, repeats, warmup
        )
        out = {"eager_s": times["eager"], "traced_s": times["traced"]}
        inferer = parser.get_parsed_content("inferer")
        if isinstance(inferer, SlidingWindowInferer):
            volume = parser.get_parsed_content("dataset")[0]["image"][None]
            plain = volume.as_tensor()
            print(f"    sliding window over a real CT volume of shape {tuple(volume.shape)}", flush=True)
            times = interleaved(
                "sliding window",
                {
                    "bundle": lambda: inferer(volume, network),
                    "plain": lambda: sliding_window_inference(
                        plain, inferer.roi_size, inferer.sw_batch_size, network, overlap=inferer.overlap
                    ),
                },
                repeats,
                warmup,
            )
            out.update(bundle_sw_s=times["bundle"], plain_sw_s=times["plain"])
    return out


def ratios(row: dict, peak: float) -> dict:
    """The row with its five ratios (a-e) and achieved FLOP/s; (e) is absent without a sliding window."""
    row["overhead_ratio"] = row["engine_s"] / row["bare_s"]
    row["data_ratio"] = row["loader_samples_per_s"] / row["model_samples_per_s"]
    row["gflop_per_s"] = row["gflop_per_step"] / row["bare_s"]
    row["peak_fraction"] = row["gflop_per_s"] * 1e9 / peak
    row["torchscript_ratio"] = row["traced_s"] / row["eager_s"]
    if "bundle_sw_s" in row:
        row["sliding_window_ratio"] = row["bundle_sw_s"] / row["plain_sw_s"]
    return row


def write_tables(rows: list[dict], out: Path, header: list[str]) -> tuple[Path, Path]:
    """``bench.csv`` (every column) and ``bench.md`` (``header`` lines, then the table) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "bench.csv", out / "bench.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c, _, _ in COLUMNS])
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c, _, _ in COLUMNS} for row in rows)
    lines = [*header, "", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = [fmt.format(row[c]) if c in row else "" for c, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def select(only: str | Sequence[str] | None) -> list[Path]:
    """Bundles whose name contains one of ``only`` (comma-separated or a sequence); all when empty."""
    bundles = list_bundles()
    if not only:
        return bundles
    wanted = only.split(",") if isinstance(only, str) else [str(w) for w in only]
    chosen = [b for b in bundles if any(w.strip() and w.strip() in b.name for w in wanted)]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no bundle of {[b.name for b in bundles]}")
    return chosen


def main(
    only: str | Sequence[str] | None = None,
    repeats: int = 5,
    warmup: int = 1,
    size: str = "smoke",
    out: str = str(REPO_ROOT / "runs" / "bench"),
) -> str:
    """Benchmark the bundles named by ``only`` (substrings, e.g. ``simmim,multiorgan``; default all) at
    ``size`` (``smoke``, ``cpu`` or ``default``, see the module docstring), ``warmup`` discarded repeats
    then ``repeats`` timed ones; write ``bench.csv`` and ``bench.md`` under ``out`` and return the Markdown
    file's path."""
    if size not in SIZES:
        raise ValueError(f"--size must be one of {SIZES}, got {size!r}")
    bundles = select(only)
    prepare_all()
    out_dir = Path(out)
    started = time.perf_counter()
    gpu = size == "default" and torch.cuda.is_available()  # the bundles' own device
    machine = (
        torch.cuda.get_device_name()
        if gpu
        else f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    )
    print(f"fp32 matrix-multiply peak ({machine})", flush=True)
    peak = matmul_peak(device="cuda" if gpu else "cpu")
    rows = []
    for i, bundle in enumerate(bundles, 1):
        print(f"[{i}/{len(bundles)}] {bundle.name}", flush=True)
        row = {"bundle": bundle.name}
        row.update(measure_training(bundle, out_dir / "work" / bundle.name, repeats, warmup, size))
        row.update(measure_inference(bundle, repeats, warmup, size))
        rows.append(ratios(row, peak))
        gc.collect()
        print("    " + ", ".join(f"{k} {row[k]:.3f}" for k in RATIOS if k in row), flush=True)
    minutes = (time.perf_counter() - started) / 60
    header = [
        f"# make bench, {date.today().isoformat()}",
        "",
        f"{machine}, torch {torch.__version__}, fp32 torch.mm peak {peak / 1e9:.1f} GFLOP/s; --size {size} "
        f"(training; inference on the CPU); {repeats} repeats after {warmup} warm-up, medians; "
        f"{len(rows)} bundles in {minutes:.1f} min.",
    ]
    csv_path, md_path = write_tables(rows, out_dir, header)
    print(md_path.read_text(), flush=True)
    print(f"wrote {csv_path}", flush=True)
    return str(md_path)


def option_step(network: torch.nn.Module, size: int) -> Callable[[], None]:
    """One training step of ``network`` on a fixed random ``size``^3 crop: forward, cross-entropy against a
    fixed random 2-class label, backward, AdamW step."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, size, size, size)
    label = torch.randint(0, 2, (1, size, size, size))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    network.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(network(x), label).backward()
        optimizer.step()

    return step


def options(
    sizes: int | Sequence[int] = (64, 96),
    swin_feature_size: int = 24,
    conv_feature_size: int = 16,
    repeats: int = 3,
    warmup: int = 1,
    out: str = str(REPO_ROOT / "runs" / "bench"),
) -> str:
    """Issue 21's network options against today's path, interleaved in one run, at each crop size of
    ``sizes``: SwinUNETR (``swin_feature_size``) eager vs fused attention, U-Net and SegResNet
    (``conv_feature_size``) default layout vs channels-last. Both members of a pair start from the same
    weights. Writes ``<out>/options.md`` (s/step, ratio baseline/option: > 1 means the option is faster)
    and returns its path."""
    sizes = [int(v) for v in (sizes if isinstance(sizes, (list, tuple)) else [sizes])]  # fire: 96 or 64,96
    cases = (  # (network, option, builder, the network_options switch)
        ("SwinUNETR", "fused attention", ("swinunetr", swin_feature_size), "fused_attention"),
        ("U-Net", "channels_last_3d", ("unet", conv_feature_size), "channels_last"),
        ("SegResNet", "channels_last_3d", ("segresnet", conv_feature_size), "channels_last"),
    )
    started = time.perf_counter()
    rows = []
    for size in sizes:
        for name, option, (arch, feature_size), switch in cases:
            torch.manual_seed(0)
            baseline = build_segmenter(arch, 1, 2, feature_size=feature_size)
            optioned = network_options(copy.deepcopy(baseline), **{switch: True})  # the builders' switch
            label = f"{name} fs {feature_size} {size}^3"
            print(f"{label}: default vs {option}", flush=True)
            times = interleaved(
                label,
                {"default": option_step(baseline, size), "option": option_step(optioned, size)},
                repeats,
                warmup,
            )
            rows.append(
                (label, option, times["default"], times["option"], times["default"] / times["option"])
            )
            del baseline, optioned
            gc.collect()
    lines = [
        f"# bench options, {date.today().isoformat()}",
        "",
        f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"one training step (fwd + cross-entropy + bwd + AdamW), batch 1; {repeats} interleaved repeats "
        f"after {warmup} warm-up, medians; {(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "| network, crop | option | default s/step | option s/step | default/option |",
        "|---|---|---|---|---|",
        *(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | **{r[4]:.3f}** |" for r in rows),
    ]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "options.md"
    md_path.write_text("\n".join(lines) + "\n")
    print(md_path.read_text(), flush=True)
    return str(md_path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["options"]:
        fire.Fire(options, command=sys.argv[2:])
    elif sys.argv[1:2] == ["data"]:
        from bench_data import main as data  # tools/bench_data.py

        fire.Fire(data, command=sys.argv[2:])
    elif sys.argv[1:2] == ["inference"]:
        from bench_inference import main as inference  # tools/bench_inference.py

        fire.Fire(inference, command=sys.argv[2:])
    else:
        fire.Fire(main)
