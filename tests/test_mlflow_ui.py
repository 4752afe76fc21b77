"""The MLflow UI as a user opens it: a bundle's smoke training logs into its store through
``python -m monai.bundle run training --tracking mlflow``, ``mlflow ui`` (the documented command, an alias of
``mlflow server``) serves that store on 127.0.0.1, the REST API returns the run with its tags, params and
loss, and headless Chromium renders the experiment's run list and the run's page (rendered DOM and a
screenshot checked)."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from common.bundle import REPO_ROOT

BUNDLE = "rotation_ssl_pretrain"  # a fast bundle: a smoke run takes ~35 s, mostly imports
RUN_NAME = "ui_smoke_run"
SERVER_START_TIMEOUT_S = 240  # healthy after about 8 s on the 2-core CPU machine, more under load
WINDOW = (1600, 1200)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(prepared_data, tmp_path_factory):
    """``<work>/eval/mlruns.db``, written by the bundle's smoke training as a user runs it."""
    work = tmp_path_factory.mktemp("mlflow_store")
    configs = REPO_ROOT / "bundles" / BUNDLE / "configs"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{configs / 'train.json'}','{configs / 'smoke.json'}']",
        "--ckpt_dir", str(work / "models"), "--output_dir", str(work / "eval"),
        "--tracking", "mlflow", "--run_name", RUN_NAME,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    db = work / "eval" / "mlruns.db"
    assert db.is_file(), f"--tracking mlflow wrote no {db}"
    return db


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def _wait_healthy(base: str, proc: subprocess.Popen, log) -> float:
    """Seconds until ``/health`` answers OK; fails with the server's log if it exits or never answers."""
    start = time.monotonic()
    while time.monotonic() - start < SERVER_START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(f"{base}/health", timeout=2).strip() == "OK":
                return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow ui not healthy after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its children (the uvicorn worker): its own process group, by the server's id."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """Base URL of ``mlflow ui --backend-store-uri sqlite:///<store>`` on a free port of 127.0.0.1."""
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    assert os.path.isfile(mlflow_cli), f"no `mlflow` command beside {sys.executable}"
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow_server") / "server.log"
    command = [
        mlflow_cli, "ui", "--backend-store-uri", f"sqlite:///{store}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # The server's GenAI job runner (7 more processes) plays no part in viewing runs; off, the server is
    # healthy in half the time on 2 cores.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=store.parent, env=env, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        seconds = _wait_healthy(base, proc, log)
        print(f"mlflow ui healthy after {seconds:.1f} s")
        yield base
    finally:
        _stop(proc)


def _api(base: str, endpoint: str, body: dict) -> dict:
    """POST ``body`` to the REST endpoint ``/api/2.0/mlflow/<endpoint>``; the decoded JSON answer."""
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _bundle_run(base: str) -> tuple[str, dict]:
    """The bundle's experiment id and its one run, found through the REST API."""
    experiments = _api(base, "experiments/search", {"max_results": 100})["experiments"]
    by_name = {e["name"]: e["experiment_id"] for e in experiments}
    assert BUNDLE in by_name, f"experiment {BUNDLE!r} not served; got {sorted(by_name)}"
    runs = _api(base, "runs/search", {"experiment_ids": [by_name[BUNDLE]]})["runs"]
    assert len(runs) == 1, runs
    return by_name[BUNDLE], runs[0]


def test_rest_api_serves_the_bundle_run_with_tags_params_and_loss(server):
    _, run = _bundle_run(server)
    assert run["info"]["run_name"] == RUN_NAME and run["info"]["status"] == "FINISHED"
    data = run["data"]
    assert {t["key"]: t["value"] for t in data["tags"]}["mlflow.runName"] == RUN_NAME
    assert {p["key"]: p["value"] for p in data["params"]}["max_epochs"] == "1"  # smoke.json's value
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    assert {"train_loss", "train_rotation", "lr"} <= metrics.keys()
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0


@pytest.fixture(scope="module")
def chromium():
    """The headless browser; installing it needs root (``make chromium``, part of ``make test``)."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed: `make chromium` installs it (apt-get install chromium)"
        if os.geteuid() != 0:
            pytest.skip(f"{reason}, which needs root")
        pytest.fail(reason)
    return path


def _render(chromium: str, url: str, png, profile) -> str:
    """Load ``url`` in headless Chromium; write a screenshot to ``png`` and return the rendered DOM."""
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=30000", f"--screenshot={png}", "--dump-dom", url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _assert_real_screenshot(png) -> None:
    """A PNG of the window's size that shows a page, not a blank one."""
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == WINDOW, (image.format, image.size)
        grey = np.asarray(image.convert("L"), dtype=np.float32)
    assert grey.std() > 10 and len(np.unique(grey)) > 50, f"{png} looks blank"


def test_ui_lists_the_runs_and_shows_the_run_in_a_headless_browser(server, chromium, tmp_path):
    experiment_id, run = _bundle_run(server)
    # MLflow 3's experiment page opens on the GenAI overview; its run list is the `runs` tab.
    pages = {
        "experiment": f"{server}/#/experiments/{experiment_id}/runs",
        "run": f"{server}/#/experiments/{experiment_id}/runs/{run['info']['run_id']}",
    }
    static = _get(f"{server}/")
    assert RUN_NAME not in static  # the names below come from the JS app's API calls, not the HTML
    dom = {}
    for page, url in pages.items():
        dom[page] = _render(chromium, url, tmp_path / f"{page}.png", tmp_path / f"profile_{page}")
        _assert_real_screenshot(tmp_path / f"{page}.png")
    assert RUN_NAME in dom["experiment"] and BUNDLE in dom["experiment"], dom["experiment"][-2000:]
    loss = {m["key"]: m["value"] for m in run["data"]["metrics"]}["train_loss"]
    for text in (RUN_NAME, "train_loss", "max_epochs", repr(loss)):
        assert text in dom["run"], f"{text!r} not on the run page"
