"""NonFiniteLossGuard: real tiny training runs whose loss turns NaN at iteration k stop there, naming the
iteration and the loss terms, and leave the checkpoints written before untouched."""

import math

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from monai.losses import DiceCELoss

from common.bundle import REPO_ROOT
from common.engines import (
    EncoderExportHandler,
    NonFiniteLossError,
    NonFiniteLossGuard,
    SSLTrainer,
    parameter_groups,
)
from common.networks import build_segmenter
from common.ssl import SimMIM
from common.transforms import segmentation_transforms, ssl_transforms

NAN_AT = 2  # one sample per epoch: iteration 2 is the first of epoch 2, after epoch 1's checkpoint
CONFIGS = REPO_ROOT / "bundles" / "multiorgan_ct_segmentation" / "configs"


class DivergingLoss(torch.nn.Module):
    """MONAI's DiceCELoss, times NaN from its ``nan_at``-th call on: a loss that diverges."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.loss, self.nan_at, self.calls = DiceCELoss(to_onehot_y=True, softmax=True), nan_at, 0

    def forward(self, pred, label):
        self.calls += 1
        value = self.loss(pred, label)
        return value * math.nan if self.calls >= self.nan_at else value


class DivergingSimMIM(SimMIM):
    """SimMIM whose loss terms turn NaN from the ``nan_at``-th forward pass on."""

    def __init__(self, nan_at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_at, self.calls = nan_at, 0

    def forward(self, batch):
        self.calls += 1
        losses = super().forward(batch)
        return {k: v * math.nan for k, v in losses.items()} if self.calls >= self.nan_at else losses


@pytest.fixture(scope="module")
def subject_a(prepared_data):
    """The smallest embedded CT (TotalSegmentator subject A) with its 26-structure label map."""
    datalist = str(REPO_ROOT / "data_lists" / "multiorgan_ct.json")
    return load_decathlon_datalist(datalist, True, "validation", prepared_data)


def _snapshot_after_first_epoch(engine, ckpt_dir):
    """The bytes of every file in ``ckpt_dir`` once epoch 1's handlers (attached before) have run."""
    files = {}
    engine.add_event_handler(
        Events.EPOCH_COMPLETED(once=1),
        lambda _: files.update({p.name: p.read_bytes() for p in ckpt_dir.iterdir()}),
    )
    return files


def _segmentation_run(subject_a, ckpt_dir, guard: bool):
    torch.manual_seed(0)
    transform = segmentation_transforms("train", pixdim=None, roi_size=32, num_samples=1, num_classes=27)
    loader = DataLoader(Dataset(subject_a, transform), batch_size=1)
    net = build_segmenter("unet", out_channels=27, feature_size=4)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    saver = CheckpointSaver(
        str(ckpt_dir), {"model": net, "optimizer": optimizer}, save_interval=1, save_final=True,
        final_filename="model_final.pt",
    )  # fmt: skip
    handlers = [NonFiniteLossGuard(), saver] if guard else [saver]
    trainer = SupervisedTrainer(
        "cpu", 3, loader, net, optimizer, DivergingLoss(NAN_AT), train_handlers=handlers
    )
    return trainer, net, _snapshot_after_first_epoch(trainer, ckpt_dir)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_supervised_training_stops_before_the_nan_step_and_keeps_the_checkpoint(subject_a, tmp_path):
    trainer, net, before = _segmentation_run(subject_a, tmp_path, guard=True)
    with pytest.raises(NonFiniteLossError, match=rf"iteration {NAN_AT} \(epoch 2\): loss=nan"):
        trainer.run()
    (epoch_ckpt,) = before  # the interval checkpoint of epoch 1
    assert (tmp_path / epoch_ckpt).read_bytes() == before[epoch_ckpt], "the last good checkpoint changed"
    good = _weights(tmp_path / epoch_ckpt)
    # no NaN step was taken: the network, and the final checkpoint CheckpointSaver writes on the exception,
    # hold epoch 1's weights
    for state in (net.state_dict(), _weights(tmp_path / "model_final.pt")):
        assert all(torch.equal(state[k], good[k]) for k in good)


def test_without_the_guard_the_same_run_saves_nan_weights(subject_a, tmp_path):
    trainer, _, _ = _segmentation_run(subject_a, tmp_path, guard=False)
    trainer.run()  # MONAI trains on: the NaN loss reaches the weights and the final checkpoint
    final = _weights(tmp_path / "model_final.pt")
    assert any(not torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_ssl_trainer_stops_naming_the_loss_terms_and_keeps_encoder_and_checkpoint(prepared_data, tmp_path):
    torch.manual_seed(0)
    items = load_decathlon_datalist(
        str(REPO_ROOT / "data_lists" / "pool_ct_mr.json"), True, "training", prepared_data
    )
    views = ssl_transforms(global_size=32, pixdim=6.0)
    loader = DataLoader(Dataset(items[-1:], views), batch_size=1)  # the MR volume, the smallest
    method = DivergingSimMIM(NAN_AT, feature_size=12, mask_patch_size=16)
    optimizer = torch.optim.AdamW(parameter_groups(method, 0.05), lr=1e-4)
    encoder_file = tmp_path / "encoder.pt"
    trainer = SSLTrainer(
        "cpu", 3, loader, method, optimizer, epoch_length=1,
        train_handlers=[EncoderExportHandler(encoder_file, interval=1, feature_size=12)],
    )  # fmt: skip
    # as the pre-training bundles do: the CheckpointSaver is attached after the trainer is built
    CheckpointSaver(
        str(tmp_path), {"model": method, "optimizer": optimizer, "trainer": trainer}, save_interval=1,
        n_saved=1, save_final=True, final_filename="model.pt",
    ).attach(trainer)  # fmt: skip
    before = _snapshot_after_first_epoch(trainer, tmp_path)
    with pytest.raises(NonFiniteLossError, match=rf"iteration {NAN_AT} .*loss=nan, reconstruction=nan"):
        trainer.run()
    assert "encoder.pt" in before and len(before) == 2
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} changed"
    final = _weights(tmp_path / "model.pt")
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_segmentation_bundle_stops_on_a_nan_loss(prepared_data, tmp_path):
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "smoke.json")],
        workflow_type="train",
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        arch="unet",
        feature_size=4,
        roi_size=[32, 32, 32],
        loss="$lambda pred, label: pred.mean() * float('nan')",
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as err:
        workflow.run()
    cause = err.value.__cause__
    assert isinstance(cause, NonFiniteLossError) and "iteration 1 (epoch 1): loss=nan" in str(cause)
    saved = list((tmp_path / "models").glob("*.pt"))
    assert all(
        torch.isfinite(v).all() for path in saved for v in _weights(path).values() if v.is_floating_point()
    )
