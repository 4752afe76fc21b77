"""Coda's and LeADER's losses against references written out, and their methods' behaviour."""

import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine

from common.engines import LeADERStageHandler
from common.losses.dino import DINOLoss
from common.losses.distillation import distillation_loss
from common.losses.supcon import supervised_contrastive_loss
from common.networks import save_encoder
from common.networks.swin import SwinEncoder
from common.ssl.coda import Coda
from common.ssl.leader import LeADER, load_teacher
from common.transforms import coda_transforms
from common.transforms.radiographs import FullViewd


def naive_supcon(z, labels, tau, num_anchors, denominator):
    """Eq. 1 of Coda (or standard SupCon) as explicit loops over anchors, positives and negatives."""
    z = F.normalize(z, dim=-1)
    terms = []
    for i in range(num_anchors):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        negatives = [n for n in range(len(z)) if labels[n] != labels[i]]
        others = negatives if denominator == "negatives" else [a for a in range(len(z)) if a != i]
        if not positives or not others:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        terms.append(
            -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in positives) / len(positives)
        )
    return sum(terms) / len(terms)


@pytest.mark.parametrize("denominator", ["negatives", "all"])
def test_supcon_anchors_every_row_of_the_multi_viewed_batch_as_eq_1_says(denominator):
    """Eq. 1 holds "for any sample x_i within the multi-viewed batch": the B student rows and the B teacher
    rows are all anchors (default); ``num_anchors=B`` is the student-only option. Checked against the
    double loop, on a multi-viewed batch of 4 samples (organ 2 has one sample: its two rows are each
    other's only positive)."""
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    z, labels = torch.cat([student, teacher]), torch.tensor([0, 0, 1, 2] * 2)
    got = supervised_contrastive_loss(z, labels, temperature=0.5, denominator=denominator)
    assert got.item() == pytest.approx(naive_supcon(z, labels, 0.5, 8, denominator), rel=1e-6)
    student_only = supervised_contrastive_loss(z, labels, 0.5, num_anchors=4, denominator=denominator)
    assert student_only.item() == pytest.approx(naive_supcon(z, labels, 0.5, 4, denominator), rel=1e-6)
    assert student_only.item() != pytest.approx(got.item(), rel=1e-3)
    # a single-member organ inside one view has no positive: that anchor is skipped, not NaN
    single = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    got = supervised_contrastive_loss(z[:7], single, temperature=0.5, denominator=denominator)
    assert got.item() == pytest.approx(naive_supcon(z[:7], single, 0.5, 7, denominator), rel=1e-6)


def test_supcon_hand_worked_case():
    # Unit vectors: a=(1,0), b=(1,0) same organ; c=(0,1) other organ; tau=1.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # Coda, anchor a: -log(e^1 / e^0) = -1; anchor b the same; c has no positive (skipped).
    assert supervised_contrastive_loss(z, labels, 1.0).item() == pytest.approx(-1.0)
    # Standard SupCon, anchor a: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1).
    expected = math.log(1 + math.exp(-1))
    assert supervised_contrastive_loss(z, labels, 1.0, denominator="all").item() == pytest.approx(expected)


def test_supcon_without_any_valid_anchor_is_zero_not_nan():
    z = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    with pytest.raises(ValueError, match="denominator"):
        supervised_contrastive_loss(z, torch.tensor([0, 0, 1]), denominator="other")


def test_intra_organ_cross_entropy_equals_its_formula():
    torch.manual_seed(1)
    teacher, crops = torch.randn(4, 6), [torch.randn(4, 6) for _ in range(3)]
    loss = DINOLoss(6, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(6))
    center = loss.center.clone()
    got = loss(crops, [teacher], teacher_temp=0.04, exclude_same_view=False)
    # Eq. 2: mean over crops of -sum_k P_t[k] log P_s[k], P_t centred and sharpened, batch mean.
    p_t = torch.softmax((teacher - center) / 0.04, dim=-1)
    expected = sum(-(p_t * torch.log_softmax(c / 0.1, dim=-1)).sum(-1).mean() for c in crops) / 3
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(loss.center, 0.9 * center + 0.1 * teacher.mean(0))


def tiny_encoder():
    return SwinEncoder(in_channels=1, feature_size=12, spatial_dims=2)


def coda_batch():
    torch.manual_seed(0)
    return {
        "global_0": torch.rand(4, 1, 64, 64),
        "global_1": torch.rand(4, 1, 64, 64),
        "full": torch.rand(4, 1, 64, 64),
        "local_0": torch.rand(4, 1, 32, 32),
        "local_1": torch.rand(4, 1, 32, 32),
        "region_label": torch.tensor([0, 0, 1, 2]),
    }


@pytest.mark.parametrize("inter,intra", [(True, True), (True, False), (False, True)])
def test_coda_branches_and_frozen_teacher(inter, intra):
    torch.manual_seed(0)
    coda = Coda(tiny_encoder(), out_dim=32, hidden_dim=16, bottleneck_dim=8, use_inter=inter, use_intra=intra)
    losses = coda(coda_batch())
    assert ("inter" in losses) == inter and ("intra" in losses) == intra
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is None for p in coda.teacher_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in coda.encoder.parameters())
    teacher_modules = {id(t) for t, _ in coda.teacher_pairs()}
    assert len(teacher_modules) == 1 + inter + intra
    assert coda.export_encoder() is coda.teacher_encoder
    with pytest.raises(ValueError, match="at least one branch"):
        Coda(tiny_encoder(), out_dim=32, use_inter=False, use_intra=False)


def traced_coda(anchors: str) -> tuple[Coda, dict, dict]:
    """A Coda forward with the inputs and outputs of its encoders and heads recorded by forward hooks."""
    torch.manual_seed(0)
    coda = Coda(tiny_encoder(), out_dim=32, hidden_dim=16, bottleneck_dim=8, anchors=anchors)
    calls: dict[str, list] = {}
    names = ("encoder", "teacher_encoder", "org_head", "teacher_org_head", "teacher_ins_head")
    for name in names:
        getattr(coda, name).register_forward_hook(
            lambda _, args, out, name=name: calls.setdefault(name, []).append((args[0], out))
        )
    return coda, calls, coda(coda_batch())


@pytest.mark.parametrize("anchors", ["all", "student"])
def test_coda_inter_organ_anchors_are_the_paper_s_multi_viewed_batch(anchors):
    """Eq. 1 at method level: the 2B rows (student h_org on ``global_0``, teacher h'_org on ``global_1``)
    with the organ labels twice, every row an anchor (or the student's B rows only), equal to the double
    loop; the teacher rows carry no gradient."""
    coda, calls, losses = traced_coda(anchors)
    batch = coda_batch()
    ((student_in, student),) = [c for c in calls["encoder"] if c[0] is not None and c[0].shape[-1] == 64]
    assert torch.equal(student_in, batch["global_0"])
    ((_, student_z),), ((_, teacher_z),) = calls["org_head"], calls["teacher_org_head"]
    assert not teacher_z.requires_grad and student_z.requires_grad
    labels = batch["region_label"].repeat(2)
    rows = torch.cat([student_z, teacher_z]).detach().double()
    expected = naive_supcon(rows, labels, coda.temperature, 8 if anchors == "all" else 4, "negatives")
    assert losses["inter"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="anchors"):
        Coda(tiny_encoder(), out_dim=32, anchors="teacher")


def test_coda_intra_organ_teacher_sees_the_augmented_full_image():
    """Eq. 2: h'_ins reads the teacher encoder's features of the ``full`` view (not a global crop)."""
    _, calls, _ = traced_coda("all")
    batch = coda_batch()
    teacher_inputs = [x for x, _ in calls["teacher_encoder"]]
    assert len(teacher_inputs) == 2 and torch.equal(teacher_inputs[0], batch["global_1"])
    assert torch.equal(teacher_inputs[1], batch["full"])
    ((ins_in, _),) = calls["teacher_ins_head"]
    assert torch.equal(ins_in, calls["teacher_encoder"][1][1])
    coda = Coda(tiny_encoder(), out_dim=32, hidden_dim=16, bottleneck_dim=8, use_inter=False)
    with pytest.raises(KeyError, match="'full'"):
        coda({k: v for k, v in batch.items() if k != "full"})


def test_coda_full_view_holds_the_whole_image_resized_and_padded():
    """:class:`FullViewd`: a 40 x 120 image with a bright square in each corner keeps all four in its full
    view (longer side 120 -> 64, the 21 rows centred in 64 by zero padding), under the augmentation."""
    image = torch.zeros(1, 40, 120)
    for rows in (slice(0, 8), slice(32, 40)):
        for cols in (slice(0, 8), slice(112, 120)):
            image[0, rows, cols] = 1.0
    view = FullViewd("image", 64)
    view.set_random_state(0)
    out = view({"image": image})
    full = out["full"][0]
    assert out["full"].shape == (1, 64, 64) and torch.equal(out["image"], image), "the image is kept"
    bright = (full > 0.5).nonzero()
    assert bright[:, 1].min() <= 4 and bright[:, 1].max() >= 59, "both left and right corners"
    assert 19 <= bright[:, 0].min() <= 24 and 40 <= bright[:, 0].max() <= 45, "rows centred, padded"
    assert len({(bool(r < 32), bool(c < 32)) for r, c in bright.tolist()}) == 4, "all four corners"


def test_coda_transforms_rotate_every_view(prepared_data):
    """The paper's augmentations T include rotation: every view (full, globals, crops) is rotated when
    ``rotation_prob`` is 1; with angle 0 the views are those without rotation (same random draws)."""
    from monai.data import load_decathlon_datalist

    from common.bundle import REPO_ROOT

    datalist = REPO_ROOT / "data_lists" / "radiograph_pretrain.json"
    item = load_decathlon_datalist(str(datalist), True, "training", str(prepared_data))[0]

    def views(**rotation):
        pipeline = coda_transforms(global_size=64, num_local=2, local_size=32, **rotation)
        pipeline.set_random_state(3)
        return {k: v for k, v in pipeline(item).items() if isinstance(v, torch.Tensor)}

    plain, rotated = views(rotation_prob=0.0), views(rotation_prob=1.0, rotation_degrees=10.0)
    zero_angle = views(rotation_prob=1.0, rotation_degrees=0.0)
    assert set(plain) == {"full", "global_0", "global_1", "local_0", "local_1"}
    for key in plain:
        assert plain[key].dtype == torch.float32
        assert not torch.allclose(plain[key], rotated[key], atol=1e-3), key
        assert torch.allclose(plain[key], zero_angle[key], atol=1e-5), key


class TinyTeacher(torch.nn.Module):
    """A stand-in expert with BatchNorm, so that a teacher left in train mode would change its statistics."""

    def __init__(self, out_dim):
        super().__init__()
        self.conv, self.norm = torch.nn.Conv2d(1, out_dim, 3, stride=4), torch.nn.BatchNorm2d(out_dim)

    def forward(self, x):
        return self.norm(self.conv(x))


def leader_batch():
    torch.manual_seed(2)
    return {"image": torch.rand(2, 1, 64, 64), "patch": torch.rand(2, 1, 64, 64)}


def test_leader_losses_stages_and_frozen_teachers():
    torch.manual_seed(0)
    disease, anatomy = TinyTeacher(5), TinyTeacher(7)
    leader = LeADER(tiny_encoder(), disease, anatomy, input_shape=(1, 64, 64), head_hidden_dim=16)
    assert leader.disease_head[-1].out_features == 5 and leader.anatomy_head[-1].out_features == 7
    before = {k: v.clone() for k, v in {**disease.state_dict(), **anatomy.state_dict()}.items()}
    optimizer = torch.optim.AdamW([p for p in leader.parameters() if p.requires_grad], lr=1e-2)
    batch = leader_batch()

    leader.train()
    assert not disease.training and not anatomy.training
    losses = leader(batch)  # stage 1: disease branch on images only
    e_da = leader.encoder(batch["image"])
    expected = F.mse_loss(leader.disease_head(e_da), disease(batch["image"]).flatten(2).mean(-1))
    assert set(losses) == {"loss", "disease"} and losses["loss"].item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    losses["loss"].backward()
    assert all(p.grad is None for p in leader.anatomy_head.parameters())

    leader.stage = 2
    optimizer.zero_grad()
    losses = leader(batch)
    embed = {k: leader.encoder(batch[k]) for k in ("image", "patch")}
    target = {
        (t, k): m(batch[k]).flatten(2).mean(-1) for t, m in (("d", disease), ("a", anatomy)) for k in embed
    }
    l_d = sum(F.mse_loss(leader.disease_head(embed[k]), target["d", k]) for k in embed)
    l_a = sum(F.mse_loss(leader.anatomy_head(embed[k]), target["a", k]) for k in embed)
    assert losses["disease"].item() == pytest.approx(l_d.item(), rel=1e-5)
    assert losses["anatomy"].item() == pytest.approx(l_a.item(), rel=1e-5)
    losses["loss"].backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in [*disease.parameters(), *anatomy.parameters()])
    after = {**disease.state_dict(), **anatomy.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics


def test_leader_stage_handler_follows_algorithm_1():
    leader = LeADER(
        tiny_encoder(), TinyTeacher(3), TinyTeacher(3), input_shape=(1, 64, 64), head_hidden_dim=8
    )
    stages = []
    engine = Engine(lambda e, b: stages.append(e.network.stage))
    engine.network = leader
    LeADERStageHandler(stage1_epochs=2).attach(engine)
    engine.run([0], max_epochs=4)
    assert stages == [1, 1, 2, 2]


def test_teachers_load_from_torchscript_and_encoder_files(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.script(TinyTeacher(4).eval())
    scripted.save(str(tmp_path / "teacher.ts"))
    x = torch.rand(2, 1, 64, 64)
    teacher = load_teacher(tmp_path / "teacher.ts")
    assert torch.equal(teacher(x), scripted(x)) and not any(p.requires_grad for p in teacher.parameters())
    encoder = tiny_encoder().eval()
    save_encoder(
        encoder,
        tmp_path / "encoder.pt",
        encoder="swin",
        encoder_config={"in_channels": 1, "feature_size": 12, "spatial_dims": 2},
    )
    teacher = load_teacher(tmp_path / "encoder.pt")
    assert torch.equal(teacher(x), encoder(x))
    with pytest.raises(FileNotFoundError, match="teacher not found"):
        load_teacher(tmp_path / "missing.pt")


def test_distillation_loss_options():
    t, s = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert distillation_loss(t, s, "mse").item() == pytest.approx(1.0)
    assert distillation_loss(t, s, "cosine").item() == pytest.approx(1.0)
    expected = -(torch.softmax(t, -1) * torch.log_softmax(s, -1)).sum().item()
    assert distillation_loss(t, s, "cross_entropy").item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distillation_loss(t, s, "l1")
