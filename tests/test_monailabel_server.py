"""The real MONAI Label server serves the segmentation bundles over HTTP.

``monailabel start_server`` (MONAI Label 0.8.5, in its own environment: ``bash tools/monailabel_env.sh``) runs
MONAI Label's own ``monaibundle`` sample app, copied by ``monailabel apps --download``, with the three
segmentation-capable bundles in its ``model`` folder, on 127.0.0.1 and a free port, the model zoo off
(``--conf zoo_source github``: local bundle folders, no download). The studies folder holds real CTs and
simulated radiographs of the embedded data. Over HTTP: ``/info/`` lists the bundles; ``POST /train/<bundle>``
trains one small epoch through ``BundleTrainTask`` on labels uploaded to the datastore and writes a new
``models/model.pt``; ``POST /infer/<bundle>`` returns a label of the image's shape (and, for a CT, its
affine: MONAI Label 0.8.5 writes 2D labels without one); an image of the wrong dimensionality gets HTTP 422
naming it. The server is stopped by its process group at the end.

The copies run at smoke size: MONAI Label's ``--conf`` options do not reach bundle config keys, so the
values of each bundle's ``configs/smoke.json`` are written into the copy's ``inference.json`` and
``train.json``. MONAI Label registers an infer task only for a bundle with ``models/model.pt``: the two
bundles trained over HTTP start from their network's initial weights, ``suprem_pretrain`` (whose training
needs each image's ``source``, which MONAI Label's datastore does not give) is trained here first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from common.bundle import REPO_ROOT
from common.data import dataset_dir

ML_BIN = REPO_ROOT / ".venv-monailabel" / "bin"
SERVED = ("multiorgan_ct_segmentation", "radiograph_segmentation", "suprem_pretrain")
CT_LIST = REPO_ROOT / "data_lists" / "multiorgan_ct.json"
RADIOGRAPH_LIST = REPO_ROOT / "data_lists" / "radiograph_segmentation.json"
# Bundle trained over HTTP -> the datalist whose training images (with labels) it is trained on.
TRAINED_OVER_HTTP = {"multiorgan_ct_segmentation": CT_LIST, "radiograph_segmentation": RADIOGRAPH_LIST}
TRAIN_IMAGES = 2  # one trains, one validates (val_split 0.5)
START_TIMEOUT_S = 180
# `monailabel` is a bash script that runs the `python` on PATH: MONAI Label's environment, as if activated.
ML_ENV = {**os.environ, "PATH": f"{ML_BIN}{os.pathsep}{os.environ['PATH']}"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ML_BIN / "monailabel").is_file(),
        reason=f"{ML_BIN / 'monailabel'} not found: MONAI Label 0.8.5 cannot import beside torch 2.13.0 "
        "CPU and runs in its own environment; create it with `bash tools/monailabel_env.sh` (8.2 GB, about "
        "4 minutes)",
    ),
]


def image_id(path: str) -> str:
    """MONAI Label's id of a datastore image: its file name without the extension."""
    return Path(path).name.removesuffix(".nii.gz").removesuffix(".nii")


def served_copy(name: str, model_dir: Path) -> Path:
    """Copy bundle ``name`` into the app's model folder (the folder keeps the bundle's name) with the values
    of its ``configs/smoke.json`` written into the copy's ``inference.json`` (the keys it defines) and
    ``train.json`` (every key, by config id)."""
    source = REPO_ROOT / "bundles" / name
    copy = model_dir / name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("models", "eval", "mlruns*"))
    smoke = json.loads((source / "configs" / "smoke.json").read_text())
    inference = json.loads((copy / "configs" / "inference.json").read_text())
    inference.update({k: v for k, v in smoke.items() if k in inference})
    (copy / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    train = ConfigParser()
    train.read_config(str(copy / "configs" / "train.json"))
    for key, value in smoke.items():
        train[key] = value
    ConfigParser.export_config_file(train.get(), str(copy / "configs" / "train.json"), indent=4)
    (copy / "models").mkdir()
    return copy


def save_initial_weights(bundle: Path) -> None:
    """``models/model.pt``: the state dict of the network that ``inference.json`` builds, untrained."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")


def train_in_process(bundle: Path) -> None:
    """One smoke epoch of the copy's ``train.json`` through MONAI's ``ConfigWorkflow``."""
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), workflow_type="train", bundle_root=str(bundle)
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert (bundle / "models" / "model.pt").is_file(), f"{bundle}: training wrote no models/model.pt"


def datalist(path: Path, key: str) -> list[dict]:
    """The items under ``key`` of a datalist of the embedded data, with absolute paths."""
    return monai.data.load_decathlon_datalist(str(path), True, key, str(dataset_dir()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running ``monailabel start_server`` process, its base URL and its log."""

    def __init__(self, app: Path, studies: Path, log: Path):
        self.app, self.log = app, log
        self.info: dict = {}  # the answer of /info/, once up
        self.images: dict[str, str] = {}  # modality -> test image in the studies folder
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            str(ML_BIN / "monailabel"),
            "start_server",
            "--app",
            str(app),
            "--studies",
            str(studies),
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            *("--conf", "models", ",".join(SERVED)),
            *("--conf", "zoo_source", "github"),
            *("--conf", "preload", "false"),
            *("--conf", "sam2", "false"),
        ]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=ML_ENV, start_new_session=True
            )

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def explain(self, response: requests.Response) -> str:
        return f"HTTP {response.status_code}: {response.text[:2000]}\n--- server log tail:\n{self.tail()}"

    def wait_until_up(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"monailabel exited with {self.process.returncode}:\n{self.tail()}")
            try:
                response = requests.get(f"{self.url}/info/", timeout=5)
                if response.ok:
                    return response.json()
            except requests.ConnectionError:
                pass
            time.sleep(1)
        pytest.fail(f"monailabel did not answer /info/ within {START_TIMEOUT_S} s:\n{self.tail()}")

    def stop(self) -> None:
        """Stop the server and its children: its process group, whose id is its PID."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def server(prepared_data, tmp_path_factory):
    """The app with the served bundles, a studies folder of the test CT, the test radiograph and the
    training images of the bundles trained over HTTP (labels are uploaded by the train test), the server."""
    root = tmp_path_factory.mktemp("monailabel")
    apps = root / "apps"
    download = ["apps", "--download", "--name", "monaibundle", "--output", str(apps)]
    subprocess.run([str(ML_BIN / "monailabel"), *download], check=True, capture_output=True, env=ML_ENV)
    app = apps / "monaibundle"
    for name in SERVED:
        copy = served_copy(name, app / "model")
        if name in TRAINED_OVER_HTTP:
            save_initial_weights(copy)
        else:
            train_in_process(copy)

    studies = root / "studies"
    studies.mkdir()
    images = {
        "ct": datalist(CT_LIST, "test")[0]["image"],
        "radiograph": datalist(RADIOGRAPH_LIST, "test")[0]["image"],
    }
    for path in images.values():
        shutil.copy(path, studies)
    for path in TRAINED_OVER_HTTP.values():
        for item in datalist(path, "training")[:TRAIN_IMAGES]:
            shutil.copy(item["image"], studies)

    server = Server(app, studies, root / "server.log")
    try:
        started = time.perf_counter()
        info = server.wait_until_up()
        print(f"\nMONAI Label server up in {time.perf_counter() - started:.1f} s at {server.url}")
        server.info, server.images = info, images
        yield server
    finally:
        server.stop()


def test_info_lists_every_segmentation_bundle(server):
    models, trainers = server.info["models"], server.info["trainers"]
    assert set(SERVED) <= set(models), f"{sorted(models)}\n{server.tail()}"
    assert set(SERVED) <= set(trainers), sorted(trainers)
    for name in SERVED:
        assert models[name]["type"] == "segmentation", (name, models[name]["type"])
    dims = {name: models[name]["dimension"] for name in SERVED}
    assert dims == {"multiorgan_ct_segmentation": 3, "radiograph_segmentation": 2, "suprem_pretrain": 3}
    assert "liver" in models["multiorgan_ct_segmentation"]["labels"]
    assert set(models["radiograph_segmentation"]["labels"]) == {"lung", "heart", "clavicle"}


@pytest.mark.parametrize("name", sorted(TRAINED_OVER_HTTP))
def test_train_over_http_writes_a_new_model(server, name):
    items = datalist(TRAINED_OVER_HTTP[name], "training")[:TRAIN_IMAGES]
    model = server.app / "model" / name / "models" / "model.pt"
    before = model.read_bytes()
    for item in items:  # the annotator's "submit label": the datastore's final labels are the training set
        with open(item["label"], "rb") as label:
            response = requests.put(
                f"{server.url}/datastore/label",
                params={"image": image_id(item["image"]), "tag": "final"},
                files={"label": (Path(item["label"]).name, label)},
                timeout=60,
            )
        assert response.ok, server.explain(response)
    try:
        params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False}
        started = time.perf_counter()
        response = requests.post(
            f"{server.url}/train/{name}", params={"run_sync": "true"}, json=params, timeout=600
        )
        seconds = time.perf_counter() - started
    finally:
        for item in items:  # the next bundle trains on its own modality only
            requests.delete(
                f"{server.url}/datastore/label",
                params={"id": image_id(item["image"]), "tag": "final"},
                timeout=60,
            )
    assert response.ok, server.explain(response)
    print(f"\nMONAI Label train {name}: {seconds:.1f} s")
    assert model.read_bytes() != before, f"{model} was not rewritten by training\n{server.tail()}"
    weights = torch.load(model, map_location="cpu", weights_only=True)
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("multiorgan_ct_segmentation", "ct"),
        ("radiograph_segmentation", "radiograph"),
        ("suprem_pretrain", "ct"),
    ],
)
def test_infer_over_http_returns_a_label_on_the_image_grid(server, name, modality, tmp_path):
    image = server.images[modality]
    started = time.perf_counter()
    response = requests.post(
        f"{server.url}/infer/{name}", params={"image": image_id(image), "output": "image"}, timeout=600
    )
    seconds = time.perf_counter() - started
    assert response.ok, server.explain(response)
    print(f"\nMONAI Label infer {name} on the {modality}: {seconds:.1f} s")
    label_file = tmp_path / "label.nii.gz"
    label_file.write_bytes(response.content)

    source, seg = nib.load(image), nib.load(label_file)
    label = np.asarray(seg.dataobj)
    assert label.shape == source.shape, f"label shape {label.shape} != image shape {source.shape}"
    # MONAI Label 0.8.5's writer drops the affine of 2D labels (radiograph_segmentation/docs/monailabel.md).
    if source.ndim == 3:
        assert np.allclose(seg.affine, source.affine, atol=1e-3), (
            f"affine\n{seg.affine}\n!= image\n{source.affine}"
        )
    classes = set(server.info["models"][name]["labels"].values()) | {0}
    values = set(np.unique(label).astype(int))
    assert values <= classes, f"labels {sorted(values)} outside the classes {sorted(classes)}"
    assert np.any(label > 0), "the label is empty (background only)"
    # MONAI Label loads model.pt non-strictly and only logs a mismatch of the keys.
    assert "Checkpoint keys don't match" not in server.log.read_text(errors="replace"), server.tail()


@pytest.mark.parametrize(
    ("name", "modality", "found", "expected"),
    [
        ("multiorgan_ct_segmentation", "radiograph", 2, 3),
        ("suprem_pretrain", "radiograph", 2, 3),
        ("radiograph_segmentation", "ct", 3, 2),
    ],
)
def test_image_of_the_wrong_dimensionality_gets_an_error_that_says_so(
    server, name, modality, found, expected
):
    image = server.images[modality]
    response = requests.post(
        f"{server.url}/infer/{name}", params={"image": image_id(image), "output": "image"}, timeout=120
    )
    assert response.status_code == 422, server.explain(response)
    detail = response.json()["detail"]
    assert Path(image).name in detail, detail
    assert f"a {found}D image" in detail and f"expects {expected}D images" in detail, detail
