"""Wiring of the self-supervised methods at method level (issue 17, item 7).

Each method runs its public ``forward`` on a batch cut from real volumes or radiographs by the bundles' own
transforms (:func:`~common.transforms.pool_transforms` + :class:`~common.transforms.MultiCropd`,
:func:`~common.transforms.coda_transforms`, :func:`~common.transforms.leader_transforms`), with forward hooks
on the real modules recording what each network received and returned. The tests then check

- which views the teacher and the student see (DINO Sec. 3.1 multi-crop: the teacher the global views, the
  student every view; iBOT / SMIT: the same global views, masked for the student only; MoCo v3: both views
  through both encoders; Coda Sec. 2: the student one global view and the crops, the teacher the other view;
  LeADER Algorithm 1: stage 1 images only, stage 2 image and patch through the student and both experts);
- masks on the student only: the student's patch embeddings hold the mask token at the masked positions,
  the teacher's are those of the patch embedding, unchanged;
- the stop-gradient where the papers put it: with the teacher's parameters set to require gradients, the
  teacher's outputs and parameters receive no gradient, while every student view gets one (both views for
  the symmetric SimCLR and for MoCo v3's query branch);
- MoCo v3's cross-view pairing ``ctr(q1, k2) + ctr(q2, k1)`` (Algorithm 1) and DINO's ``v != i`` exclusion
  (Eq. 3), recomputed by naive loops from the hooked outputs, the views identified by their content.

A failing assertion names the method, the module and what the paper says.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from monai.data import list_data_collate, load_decathlon_datalist
from monai.transforms import Compose
from test_coda_leader import TinyTeacher, tiny_encoder
from test_ssl_contrastive import naive_ctr, naive_nt_xent
from test_ssl_distillation import TINY, _cross_entropy_naive
from test_ssl_views import POOL
from torch import nn

from common.bundle import REPO_ROOT
from common.ssl import DINO, IBOT, MAE, SMIT, Coda, LeADER, MoCoV3, SimCLR, SimMIM, SwinUNETRRecipe
from common.transforms import MultiCropd, coda_transforms, leader_transforms, pool_transforms

RADIOGRAPHS = REPO_ROOT / "data_lists" / "radiograph_pretrain.json"
RADIOGRAPH_BOXES = REPO_ROOT / "data_lists" / "radiograph_boxes.json"
GLOBAL_CROP = dict(global_size=32, global_scale=(0.4, 1.0))  # DINO bundle scales, reduced size: 8 mask cells


# ---------------------------------------------------------------- recording and naming


class Trace:
    """Records the calls of named modules during a forward: ``calls[name]`` lists ``(input, output)`` per
    call (the first positional input). Outputs keep their graph and retain their gradient, so that after
    ``backward`` the gradient reaching each one can be read. ``inputs[name]`` lists what the modules given
    as ``inputs`` received (a forward pre-hook: after every hook of the module before had run)."""

    def __init__(self, outputs: dict[str, nn.Module], inputs: dict[str, nn.Module] | None = None) -> None:
        self.calls: dict[str, list] = {name: [] for name in outputs}
        self.inputs: dict[str, list] = {name: [] for name in inputs or {}}
        self.handles = [m.register_forward_hook(self._output_hook(n)) for n, m in outputs.items()]
        self.handles += [m.register_forward_pre_hook(self._input_hook(n)) for n, m in (inputs or {}).items()]

    def _output_hook(self, name):
        def hook(module, args, output):
            if output.requires_grad:
                output.retain_grad()
            self.calls[name].append((args[0], output))

        return hook

    def _input_hook(self, name):
        def hook(module, args):
            self.inputs[name].append(args[0])

        return hook

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def traced_step(method: nn.Module, batch: dict, outputs: dict, inputs: dict | None = None):
    """One forward and backward of ``method`` on ``batch`` under a :class:`Trace`: ``(trace, losses)``."""
    with Trace(outputs, inputs) as trace:
        losses = method(batch)
    losses["loss"].backward()
    return trace, losses


def image_views(batch: dict) -> dict[str, torch.Tensor]:
    """The batch's image tensors (views, image, patch) by key."""
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim >= 4}


def block_names(x: torch.Tensor, named: dict[str, torch.Tensor]) -> list[str]:
    """The names of the entries of ``named`` that ``x`` is stacked from, block by block (every entry has the
    same number of rows); each block must equal exactly one entry."""
    rows = len(next(iter(named.values())))
    names = []
    for block in x.split(rows):
        found = [k for k, v in named.items() if v.shape == block.shape and torch.equal(v, block)]
        assert len(found) == 1, f"a block {tuple(block.shape)} is {found or 'none'} of {sorted(named)}"
        names += found
    return names


def seen(calls: list, named: dict[str, torch.Tensor]) -> list[str]:
    """The names of the inputs of every recorded call, in call order."""
    return [name for x, _ in calls for name in block_names(x, named)]


def outputs_by_name(calls: list, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each recorded call's output rows, by the name of the input rows they come from."""
    out = {}
    for x, y in calls:
        names = block_names(x, named)
        out.update(zip(names, y.split(len(y) // len(names)), strict=True))
    return out


def require_grad(*modules: nn.Module) -> None:
    """Perturb the teacher branch: its parameters require gradients, so that any path from the loss into
    it would give them one."""
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


def ema_teachers(method: nn.Module) -> list[nn.Module]:
    """The EMA teachers (momentum encoders, teacher heads and projections) of ``method``."""
    return [teacher for teacher, _ in method.teacher_pairs()]


def assert_detached(method: str, trace: Trace, names: list[str], teachers: list[nn.Module]) -> None:
    """No gradient flows into the teacher branch: its recorded outputs receive none (whether they were
    computed under ``no_grad`` or detached later) and its parameters, made to require gradients, get none."""
    for name in names:
        assert trace.calls[name], f"{method}: {name} was never called"
        for _, y in trace.calls[name]:
            assert y.grad is None or not y.grad.any(), (
                f"{method}: a gradient flows into {name} (no stop-gradient)"
            )
    for teacher in teachers:
        for key, p in teacher.named_parameters():
            assert p.grad is None or not p.grad.any(), f"{method}: teacher parameter {key} got a gradient"


def has_grad(t: torch.Tensor) -> bool:
    return t.grad is not None and bool(t.grad.abs().sum() > 0)


# ---------------------------------------------------------------- batches as the bundles build them


@pytest.fixture(scope="module")
def volumes(prepared_data):
    """Two real CT volumes of the pool after the deterministic part of ``ssl_transforms`` (what a bundle's
    CacheDataset holds), at 6 mm for speed."""
    items = [
        i
        for i in load_decathlon_datalist(POOL, True, "training", str(prepared_data))
        if i["modality"] == "CT"
    ]
    pre = Compose(pool_transforms(pixdim=6.0))
    return [pre(item) for item in items[:2]]


def ssl_batch(volumes: list[dict], seed: int, **views) -> dict:
    """A collated batch of :class:`MultiCropd` views (the random part of ``ssl_transforms``)."""
    crop = MultiCropd("image", **views)
    crop.set_random_state(seed)
    return list_data_collate([crop(v) for v in volumes])


# ---------------------------------------------------------------- DINO


@pytest.fixture(scope="module")
def dino(volumes):
    """One traced DINO step: 2 global and 1 local view, the teacher's parameters made to require grad."""
    torch.manual_seed(0)
    method = DINO(**TINY)
    method.teacher_temp = 0.04
    require_grad(*ema_teachers(method))
    center = method.criterion.center.clone()
    batch = ssl_batch(
        volumes, 0, num_global=2, num_local=1, local_size=32, local_scale=(0.05, 0.4), **GLOBAL_CROP
    )
    modules = {
        "student_embed": method.encoder.patch_embed,
        "teacher_embed": method.teacher_encoder.patch_embed,
        "student_encoder": method.encoder,
        "teacher_encoder": method.teacher_encoder,
        "student_head": method.head,
        "teacher_head": method.teacher_head,
    }
    trace, losses = traced_step(method, batch, modules)
    return SimpleNamespace(method=method, batch=batch, trace=trace, losses=losses, center=center)


def head_outputs_by_view(trace: Trace, batch: dict, side: str) -> dict[str, torch.Tensor]:
    """``side``'s head outputs by view: head input rows -> encoder output rows -> encoder input view."""
    embeddings = outputs_by_name(trace.calls[f"{side}_encoder"], image_views(batch))
    return outputs_by_name(trace.calls[f"{side}_head"], embeddings)


def test_dino_teacher_sees_the_global_views_and_the_student_every_view(dino):
    views = image_views(dino.batch)
    teacher = seen(dino.trace.calls["teacher_embed"], views)
    student = seen(dino.trace.calls["student_embed"], views)
    assert sorted(teacher) == ["global_0", "global_1"], (
        "DINO Sec. 3.1: the teacher sees the global views only"
    )
    assert sorted(student) == ["global_0", "global_1", "local_0"], (
        "DINO Sec. 3.1: the student sees every crop"
    )


def test_dino_loss_leaves_out_the_pairs_of_one_view(dino):
    """Eq. 3: the sum runs over teacher global view ``i`` and student view ``v != i``, recomputed from the
    hooked head outputs with the views named by their content, not by their position in the lists."""
    student = head_outputs_by_view(dino.trace, dino.batch, "student")
    teacher = head_outputs_by_view(dino.trace, dino.batch, "teacher")
    center, t_temp, s_temp = (
        dino.center.tolist(),
        dino.method.teacher_temp,
        dino.method.criterion.student_temp,
    )

    def pair_loss(i: str, v: str) -> float:
        rows = zip(teacher[i].tolist(), student[v].tolist(), strict=True)
        per_sample = [_cross_entropy_naive(t, center, t_temp, s, s_temp) for t, s in rows]
        return sum(per_sample) / len(per_sample)

    kept = [pair_loss(i, v) for i in teacher for v in student if v != i]
    every = [pair_loss(i, v) for i in teacher for v in student]
    assert len(kept) == 2 * (3 - 1)
    loss = dino.losses["loss"].item()
    tolerance = 1e-6 * loss  # float32 against the float64 loops; the pairs v == i shift the mean by ~1e-3
    assert loss == pytest.approx(sum(kept) / len(kept), abs=tolerance), (
        "DINO's loss is not the mean over v != i"
    )
    assert abs(loss - sum(every) / len(every)) > 100 * tolerance


def test_dino_gradient_stops_at_the_teacher_and_reaches_every_student_view(dino):
    assert_detached(
        "DINO",
        dino.trace,
        ["teacher_encoder", "teacher_head"],
        ema_teachers(dino.method),
    )
    student = head_outputs_by_view(dino.trace, dino.batch, "student")
    assert all(has_grad(out) for _, out in dino.trace.calls["student_head"])
    assert sorted(student) == ["global_0", "global_1", "local_0"]


# ---------------------------------------------------------------- masked methods


def masked_modules(encoder: nn.Module, prefix: str) -> tuple[dict, dict]:
    """The patch embedding's own output (forward hook registered before the method's masking hook) and the
    input of the module after it (the embedding the encoder goes on with, after every hook ran)."""
    return {f"{prefix}_embed": encoder.patch_embed}, {f"{prefix}_tokens": encoder.pos_drop}


def masked_positions(trace: Trace, prefix: str, call: int) -> torch.Tensor:
    """``(B, *grid)``: where the embedding the encoder used differs from its patch embedding's output."""
    raw = trace.calls[f"{prefix}_embed"][call][1]
    used = trace.inputs[f"{prefix}_tokens"][call]
    assert used.shape == raw.shape
    return (used != raw).any(1)


def assert_mask_token_at(trace: Trace, prefix: str, call: int, token: torch.Tensor) -> torch.Tensor:
    """The masked positions of one call hold the mask token; returns the positions."""
    where = masked_positions(trace, prefix, call)
    used = trace.inputs[f"{prefix}_tokens"][call].movedim(1, -1)[where]
    assert torch.equal(used, token.detach().expand_as(used)), f"{prefix}: masked cells are not the mask token"
    return where


MASKED = {
    "ibot": (lambda: IBOT(**TINY, mask_ratio=(0.5, 0.5), mask_probability=1.0), 1),
    "smit": (lambda: SMIT(**TINY, mask_ratio=0.5), 0),
}


@pytest.fixture(scope="module", params=sorted(MASKED))
def distilled_masked(request, volumes):
    """One traced iBOT / SMIT step (two masked global views; iBOT also one local view), the teacher's
    parameters made to require grad."""
    build, num_local = MASKED[request.param]
    torch.manual_seed(0)
    method = build()
    method.teacher_temp = 0.04
    require_grad(*ema_teachers(method))
    batch = ssl_batch(volumes, 1, num_global=2, num_local=num_local, local_size=32, **GLOBAL_CROP)
    outputs, inputs = masked_modules(method.encoder, "student")
    t_outputs, t_inputs = masked_modules(method.teacher_encoder, "teacher")
    outputs = {**outputs, **t_outputs, "teacher_head": method.teacher_head}
    trace, losses = traced_step(method, batch, outputs, {**inputs, **t_inputs})
    return SimpleNamespace(name=request.param, method=method, batch=batch, trace=trace, num_local=num_local)


def test_ibot_smit_teacher_sees_the_unmasked_global_views(distilled_masked):
    run, views = distilled_masked, image_views(distilled_masked.batch)
    teacher = seen(run.trace.calls["teacher_embed"], views)
    student = seen(run.trace.calls["student_embed"], views)
    assert sorted(teacher) == ["global_0", "global_1"], f"{run.name}: the teacher sees the global views"
    locals_ = [f"local_{i}" for i in range(run.num_local)]
    assert sorted(student) == ["global_0", "global_1", *locals_], f"{run.name}: student views"
    for call in range(len(run.trace.calls["teacher_embed"])):
        assert not masked_positions(run.trace, "teacher", call).any(), (
            f"{run.name}: the teacher's input is masked"
        )


def test_ibot_smit_mask_the_student_global_views_only(distilled_masked):
    run, views = distilled_masked, image_views(distilled_masked.batch)
    for call, (x, _) in enumerate(run.trace.calls["student_embed"]):
        names = block_names(x, views)
        if names[0].startswith("global"):
            where = assert_mask_token_at(run.trace, "student", call, run.method.mask_token)
            per_image = where.flatten(1).float().mean(1)
            assert torch.all(per_image > 0) and torch.all(per_image < 1), f"{run.name}: ratio 0.5 not drawn"
        else:
            assert not masked_positions(run.trace, "student", call).any(), (
                f"{run.name}: a local view is masked"
            )


def test_ibot_smit_gradient_stops_at_the_teacher(distilled_masked):
    run = distilled_masked
    assert_detached(
        run.name,
        run.trace,
        ["teacher_embed", "teacher_head"],
        ema_teachers(run.method),
    )
    assert has_grad(run.method.mask_token), f"{run.name}: the mask token gets no gradient"
    for _, raw in run.trace.calls["student_embed"]:
        assert has_grad(raw), f"{run.name}: a student view gets no gradient"


@pytest.mark.parametrize(
    "build",
    [
        lambda: MAE(
            feature_size=12, mask_ratio=0.5, decoder_dim=16, decoder_depth=1, decoder_num_heads=2, img_size=32
        ),
        lambda: SimMIM(feature_size=12),
    ],
    ids=["mae", "simmim"],
)
def test_mae_simmim_mask_the_one_global_view(build, volumes):
    torch.manual_seed(0)
    method = build()
    batch = ssl_batch(volumes, 2, num_global=1, **GLOBAL_CROP)
    outputs, inputs = masked_modules(method.encoder, "student")
    with Trace(outputs, inputs) as trace:
        method(batch)
    assert seen(trace.calls["student_embed"], image_views(batch)) == ["global_0"]
    where = assert_mask_token_at(trace, "student", 0, method.mask_token)
    assert where.flatten(1).any(1).all(), f"{type(method).__name__}: an image has no masked patch embedding"
    assert not where.flatten(1).all(1).any(), f"{type(method).__name__}: an image is masked entirely"


# ---------------------------------------------------------------- contrastive


@pytest.fixture(scope="module")
def mocov3(volumes):
    torch.manual_seed(0)
    method = MoCoV3(feature_size=12, mlp_hidden_dim=64, projection_dim=32, temperature=0.2)
    require_grad(*ema_teachers(method))
    batch = ssl_batch(volumes, 3, num_global=2, **GLOBAL_CROP)
    modules = {
        "encoder": method.encoder,
        "projector": method.projector,
        "predictor": method.predictor,
        "momentum_encoder": method.momentum_encoder,
        "momentum_projector": method.momentum_projector,
    }
    trace, losses = traced_step(method, batch, modules)
    views = image_views(batch)
    h = outputs_by_name(trace.calls["encoder"], views)
    queries = outputs_by_name(trace.calls["predictor"], outputs_by_name(trace.calls["projector"], h))
    keys = outputs_by_name(
        trace.calls["momentum_projector"], outputs_by_name(trace.calls["momentum_encoder"], views)
    )
    return SimpleNamespace(method=method, trace=trace, losses=losses, queries=queries, keys=keys, views=views)


def test_mocov3_both_encoders_see_both_views(mocov3):
    assert sorted(seen(mocov3.trace.calls["encoder"], mocov3.views)) == ["global_0", "global_1"]
    assert sorted(seen(mocov3.trace.calls["momentum_encoder"], mocov3.views)) == ["global_0", "global_1"]
    assert sorted(mocov3.queries) == sorted(mocov3.keys) == ["global_0", "global_1"]


def test_mocov3_query_of_one_view_meets_the_key_of_the_other(mocov3):
    """Algorithm 1: ``loss = ctr(q1, k2) + ctr(q2, k1)``, from the hooked predictor and momentum projector
    outputs of the views named by content."""
    q, k, tau = mocov3.queries, mocov3.keys, mocov3.method.temperature
    crossed = naive_ctr(q["global_0"], k["global_1"], 0, tau) + naive_ctr(
        q["global_1"], k["global_0"], 0, tau
    )
    same = naive_ctr(q["global_0"], k["global_0"], 0, tau) + naive_ctr(q["global_1"], k["global_1"], 0, tau)
    loss = mocov3.losses["loss"].item()
    assert loss == pytest.approx(crossed, rel=1e-5), "MoCo v3 must contrast q1 with k2 and q2 with k1"
    assert loss != pytest.approx(same, rel=1e-3)


def test_mocov3_gradient_flows_through_the_queries_only(mocov3):
    m = mocov3.method
    assert_detached(
        "MoCo v3",
        mocov3.trace,
        ["momentum_encoder", "momentum_projector"],
        ema_teachers(m),
    )
    assert all(has_grad(q) for _, q in mocov3.trace.calls["predictor"]), "each view's query gets a gradient"
    ((_, h),) = mocov3.trace.calls["encoder"]
    assert all(bool(g.abs().sum() > 0) for g in h.grad.chunk(2)), "both views reach the query encoder"


def test_simclr_is_symmetric_and_pairs_the_views_of_one_sample(volumes):
    """Sec. 2.1: both views go through one encoder and head, and the gradient flows through both (no
    stop-gradient); the positive of a view is the other view of its sample."""
    torch.manual_seed(0)
    method = SimCLR(feature_size=12, projection_hidden_dim=64, projection_dim=32, temperature=0.5)
    batch = ssl_batch(volumes, 4, num_global=2, **GLOBAL_CROP)
    trace, losses = traced_step(method, batch, {"encoder": method.encoder, "projector": method.projector})
    views = image_views(batch)
    assert sorted(seen(trace.calls["encoder"], views)) == ["global_0", "global_1"]
    z = outputs_by_name(trace.calls["projector"], outputs_by_name(trace.calls["encoder"], views))
    tau, loss = method.temperature, losses["loss"].item()
    assert loss == pytest.approx(naive_nt_xent(z["global_0"], z["global_1"], tau), rel=1e-5)
    assert loss != pytest.approx(naive_nt_xent(z["global_0"], z["global_1"].flip(0), tau), rel=1e-3)
    ((_, out),) = trace.calls["projector"]
    assert all(bool(g.abs().sum() > 0) for g in out.grad.chunk(2)), "SimCLR: a view gets no gradient"


def test_swinunetr_recipe_contrasts_the_two_views_of_each_sample_symmetrically(volumes):
    """Tang et al. 2022, Eq. 3: NT-Xent between the two (rotated, cut-out) views of every sample, stacked
    view-major through one encoder and head; the gradient flows through both views."""
    torch.manual_seed(0)
    method = SwinUNETRRecipe(feature_size=12, contrastive_dim=32)
    batch = ssl_batch(volumes, 5, num_global=2, **GLOBAL_CROP)
    trace, losses = traced_step(
        method, batch, {"embed": method.encoder.patch_embed, "head": method.contrastive_head}
    )
    ((x, _),) = trace.calls["embed"]
    assert x.shape == (2 * len(batch["global_0"]), *batch["global_0"].shape[1:]), "two views per sample"
    ((_, z),) = trace.calls["head"]
    first, second = z.detach().chunk(2)
    expected = naive_nt_xent(first, second, method.temperature)
    assert losses["contrastive"].item() == pytest.approx(expected, rel=1e-5), "rows n and n + B are positives"
    assert all(bool(g.abs().sum() > 0) for g in z.grad.chunk(2)), "SwinUNETR recipe: a view gets no gradient"


# ---------------------------------------------------------------- Coda and LeADER (radiographs)


def radiograph_items(path, prepared_data, pick) -> list[dict]:
    items = load_decathlon_datalist(str(path), True, "training", str(prepared_data))
    return [items[i] for i in pick(json.loads(path.read_text())["training"])]


def test_coda_views_and_stop_gradient(prepared_data):
    """Sec. 2: inter-organ, one augmented view through the student and ``h_org``, the other through the
    teacher and ``h'_org``; intra-organ, the crops through the student and ``h_ins``, the augmented full
    image (``full``) through the teacher and ``h'_ins``; no gradient into the teacher branch."""

    def two_organs(entries):
        first = next(i for i, e in enumerate(entries) if e["region_label"] == 0)
        return [first, next(i for i, e in enumerate(entries) if e["region_label"] != 0)]

    items = radiograph_items(RADIOGRAPHS, prepared_data, two_organs)
    pipeline = coda_transforms(global_size=64, num_local=2, local_size=32)
    pipeline.set_random_state(5)
    batch = list_data_collate([pipeline(i) for i in items])
    torch.manual_seed(0)
    method = Coda(tiny_encoder(), out_dim=32, hidden_dim=16, bottleneck_dim=8)
    require_grad(*ema_teachers(method))
    names = ("encoder", "teacher_encoder", "org_head", "teacher_org_head", "ins_head", "teacher_ins_head")
    trace, losses = traced_step(method, batch, {n: getattr(method, n) for n in names})
    views = image_views(batch)
    student = outputs_by_name(trace.calls["encoder"], views)
    teacher = outputs_by_name(trace.calls["teacher_encoder"], views)
    org_student = seen(trace.calls["org_head"], student)
    org_teacher = seen(trace.calls["teacher_org_head"], teacher)
    assert len(org_student) == len(org_teacher) == 1, (
        "Coda Eq. 1: one view for the student, one for the teacher"
    )
    assert org_student != org_teacher, "Coda Eq. 1: the student and the teacher see different augmented views"
    assert {*org_student, *org_teacher} == {"global_0", "global_1"}, "Coda Eq. 1: two augmented views"
    assert sorted(seen(trace.calls["ins_head"], student)) == ["local_0", "local_1"], (
        "Eq. 2: crops to the student"
    )
    assert seen(trace.calls["teacher_ins_head"], teacher) == ["full"], (
        "Coda Eq. 2: the teacher sees the augmented full image"
    )
    assert_detached(
        "Coda", trace, ["teacher_encoder", "teacher_org_head", "teacher_ins_head"], ema_teachers(method)
    )
    assert all(has_grad(y) for n in ("org_head", "ins_head") for _, y in trace.calls[n])


@pytest.fixture(scope="module")
def leader_batches(prepared_data):
    """Batches as the LeADER bundle builds them with ``leader_transforms``: stage 2's (image, patch) pairs of
    a diseased and a healthy radiograph of the box datalist, and stage 1's images of the image-only
    datalist (Algorithm 1's D_IP and D_I)."""

    def diseased_and_healthy(entries):
        return [next(i for i, e in enumerate(entries) if e.get("diseased")), 0]

    sources = {
        "pairs": (RADIOGRAPH_BOXES, diseased_and_healthy, True),
        "images": (RADIOGRAPHS, lambda entries: [0, 1], False),
    }
    batches = {}
    for name, (datalist, pick, with_patch) in sources.items():
        pipeline = leader_transforms(image_size=64, patch_size=64, with_patch=with_patch)
        pipeline.set_random_state(6)
        batches[name] = list_data_collate(
            [pipeline(i) for i in radiograph_items(datalist, prepared_data, pick)]
        )
    return batches


def traced_leader(batch: dict, stage: int):
    torch.manual_seed(0)
    method = LeADER(
        tiny_encoder(), TinyTeacher(5), TinyTeacher(7), input_shape=(1, 64, 64), head_hidden_dim=16
    )
    method.stage = stage
    require_grad(method.disease_teacher, method.anatomy_teacher)
    names = ("encoder", "disease_teacher", "anatomy_teacher", "disease_head", "anatomy_head")
    trace, losses = traced_step(method, batch, {n: getattr(method, n) for n in names})
    return method, trace, losses


def test_leader_stage_1_trains_the_disease_branch_on_images_only(leader_batches):
    """Algorithm 1, lines 9-14: ``E_D, E'_D = T_D(I), h_D(S(I))``, on an image-only batch, and on an
    (image, patch) batch (rounds alternating the stages) without using the patch."""
    assert "patch" not in leader_batches["images"]
    for batch in leader_batches.values():
        views = image_views(batch)
        method, trace, _ = traced_leader(batch, 1)
        assert seen(trace.calls["encoder"], views) == ["image"], "LeADER stage 1: the student sees I only"
        assert seen(trace.calls["disease_teacher"], views) == ["image"], "LeADER stage 1: T_D sees I only"
        assert not trace.calls["anatomy_teacher"] and not trace.calls["anatomy_head"], "stage 1: no L_A"
        assert_detached("LeADER", trace, ["disease_teacher"], [method.disease_teacher])


def test_leader_stage_2_passes_image_and_patch_to_the_student_and_both_experts(leader_batches):
    """Algorithm 1, lines 19-26: the student, ``T_D`` and ``T_A`` each see ``I`` and ``P``; each loss pairs
    a teacher's embedding of an input with the head's output for the student's embedding of the same
    input."""
    method, trace, losses = traced_leader(leader_batches["pairs"], 2)
    views = image_views(leader_batches["pairs"])
    for name in ("encoder", "disease_teacher", "anatomy_teacher"):
        assert sorted(seen(trace.calls[name], views)) == ["image", "patch"], (
            f"LeADER stage 2: {name}'s inputs"
        )
    student = outputs_by_name(trace.calls["encoder"], views)
    for branch in ("disease", "anatomy"):
        heads = outputs_by_name(trace.calls[f"{branch}_head"], student)
        experts = outputs_by_name(trace.calls[f"{branch}_teacher"], views)
        assert sorted(heads) == ["image", "patch"]
        expected = sum(F.mse_loss(heads[k], experts[k].flatten(2).mean(-1)) for k in heads)
        assert losses[branch].item() == pytest.approx(expected.item(), rel=1e-5), f"{branch}: L(I) + L(P)"
    assert_detached(
        "LeADER",
        trace,
        ["disease_teacher", "anatomy_teacher"],
        [method.disease_teacher, method.anatomy_teacher],
    )
    assert all(has_grad(y) for _, y in trace.calls["encoder"])
