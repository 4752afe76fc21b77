"""The inference section of the benchmarks (issue 21 item 3): sliding-window inference of a whole CT.

``python tools/bench.py inference`` builds a segmentation bundle's ``inference.json`` at ``--size``
(``size_overrides`` of ``tools/bench.py``: ``smoke``, ``cpu`` or ``default``), its network with random
weights in ``eval()`` mode, and its first datalist volume through its ``preprocessing``, then runs the
config's ``SlidingWindowInferer`` (Gaussian blending, the config's ``roi_size``, ``sw_batch_size`` and
``overlap``) over the whole volume with each predictor, interleaved, under ``no_grad``:

- **eager**: the network as built (what the bundle's evaluator runs);
- **TorchScript**: ``torch.jit.trace`` of it at the window's shape (what ``ckpt_export`` writes);
- **ONNX Runtime**: MONAI's ``convert_to_onnx`` of it (``onnx_export``'s code path; the batch axis dynamic:
  the last window batch can be smaller) run by ``onnxruntime`` on the CPU;
- **compiled** (``--compiled``): ``torch.compile`` of it; its first call compiles (minutes on a CPU);
- **MONAI**: ``monai.inferers.sliding_window_inference`` on the plain tensor with the same network and
  settings (MONAI's own call, no ``MetaTensor``).

Reported per predictor: seconds per volume, voxels per second, the ratio to eager, and the largest absolute
difference of its output from eager's (the same numbers, up to each runtime's arithmetic). Writes
``<out>/inference.md``. Measured, never asserted.
"""

from __future__ import annotations

import platform
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.networks import convert_to_onnx

from common.bundle import REPO_ROOT
from common.bundle_checks import config_path
from common.data.prepare import prepare_all
from common.evaluation.bundle_runs import bundle_dir


def onnx_predictor(network: torch.nn.Module, example: torch.Tensor, path: Path):
    """``network`` exported to ONNX at ``path`` by MONAI's ``convert_to_onnx`` (batch axis dynamic) and run
    by ONNX Runtime on the CPU: a callable from a batch of windows to a tensor."""
    import onnxruntime  # the optional "export" dependency

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_to_onnx(
            network,
            [example],
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            filename=str(path),
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda windows: torch.from_numpy(session.run(None, {"x": torch.as_tensor(windows).numpy()})[0])


def main(
    bundle: str = "multiorgan_ct_segmentation",
    size: str = "smoke",
    repeats: int = 2,
    warmup: int = 1,
    compiled: bool = False,
    overrides: dict | None = None,
    out: str = str(REPO_ROOT / "runs" / "bench"),
) -> str:
    """Run the comparison for ``bundle`` at ``size`` (then ``overrides`` of ``inference.json``, e.g. a
    ``roi_size``); ``compiled`` adds the ``torch.compile`` member. Writes ``<out>/inference.md`` and returns
    its path."""
    from bench import CPU, interleaved, size_overrides  # tools/bench.py, beside this file

    prepare_all()
    root = bundle_dir(bundle)
    parser = ConfigParser()
    parser.read_config(config_path(root, "inference.json"))
    parser.read_meta(config_path(root, "metadata.json"))
    parser.update({**size_overrides(root, "inference.json", size), **(overrides or {}), "device": CPU})
    inferer = parser.get_parsed_content("inferer")
    if not isinstance(inferer, SlidingWindowInferer):
        raise ValueError(
            f"{bundle}'s inference.json has no SlidingWindowInferer (it has {type(inferer).__name__})"
        )
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    volume = parser.get_parsed_content("dataset")[0]["image"][None]
    plain = volume.as_tensor()
    roi = list(inferer.roi_size)
    example = torch.rand(inferer.sw_batch_size, volume.shape[1], *roi)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        predictors = {
            "eager": network,
            "TorchScript": torch.jit.trace(network, example),
            "ONNX Runtime": onnx_predictor(network, example, out_dir / f"{bundle}.onnx"),
        }
        if compiled:
            predictors["compiled"] = torch.compile(network)
        members = {name: (lambda p=p: inferer(volume, p)) for name, p in predictors.items()}
        members["MONAI"] = lambda: sliding_window_inference(
            plain, roi, inferer.sw_batch_size, network, overlap=inferer.overlap, mode=inferer.mode
        )
        outputs = {name: torch.as_tensor(member()) for name, member in members.items()}
        print(f"{bundle} at --size {size}: a volume of shape {tuple(volume.shape)}, window {roi}", flush=True)
        seconds = interleaved("inference", members, repeats, warmup)
    voxels, shape = int(np.prod(volume.shape[2:])), "x".join(map(str, volume.shape[2:]))
    lines = [
        f"# bench inference, {date.today().isoformat()}",
        "",
        f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"{bundle} at --size {size}: sliding window (Gaussian, window {roi}, sw_batch_size "
        f"{inferer.sw_batch_size}, overlap {inferer.overlap}) over a volume of {shape} voxels; "
        f"random weights; {repeats} repeats after {warmup} warm-up, medians.",
        "",
        "| predictor | s / volume | voxels / s | eager / this | max abs difference from eager |",
        "|---|---|---|---|---|",
    ]
    for name, s in seconds.items():
        difference = float((outputs[name] - outputs["eager"]).abs().max())
        lines.append(
            f"| {name} | {s:.2f} | {voxels / s:,.0f} | **{seconds['eager'] / s:.2f}** | {difference:.1e} |"
        )
    md_path = out_dir / "inference.md"
    md_path.write_text("\n".join(lines) + "\n")
    print(md_path.read_text(), flush=True)
    return str(md_path)
