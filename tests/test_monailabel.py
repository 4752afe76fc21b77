"""MONAI Label 0.8.5 serves multiorgan_ct_segmentation: train a smoke model, segment the test CT with it.

MONAI Label cannot be imported beside this environment's torch 2.13.0 CPU, so the serving side runs in its
own environment (``bash tools/monailabel_env.sh``) as a subprocess: ``tools/monailabel_check.py``.
"""

import shutil
import subprocess

import monai
import pytest
from monai.bundle import ConfigWorkflow

from common.bundle import REPO_ROOT

VENV_PYTHON = REPO_ROOT / ".venv-monailabel" / "bin" / "python"
BUNDLE = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation"
SMOKE = BUNDLE / "configs" / "smoke.json"
DATALIST = REPO_ROOT / "data_lists" / "multiorgan_ct.json"

pytestmark = pytest.mark.skipif(
    not VENV_PYTHON.is_file(),
    reason=f"{VENV_PYTHON} not found: MONAI Label 0.8.5 cannot import beside torch 2.13.0 CPU and runs in "
    "its own environment; create it with `bash tools/monailabel_env.sh` (8.2 GB, about 4 minutes)",
)


@pytest.mark.slow
def test_monailabel_bundle_infer_task_segments_the_test_ct(prepared_data, tmp_path):
    image = monai.data.load_decathlon_datalist(DATALIST, True, "test", prepared_data)[0]["image"]
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval", "mlruns*"))
    configs = [str(bundle / "configs" / "train.json"), str(SMOKE)]
    workflow = ConfigWorkflow(config_file=configs, workflow_type="train", bundle_root=str(bundle))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert (bundle / "models" / "model.pt").is_file()

    check = [str(VENV_PYTHON), str(REPO_ROOT / "tools" / "monailabel_check.py"), str(bundle)]
    proc = subprocess.run(
        [*check, "--overrides", str(SMOKE)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-5000:]}"
    assert f'"image": "{image}"' in proc.stdout, proc.stdout
