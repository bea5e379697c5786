"""`dinoret distill`: frozen teacher, student gradients, EMA, export, resume, CLI, torchrun."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dinoret.cli import main
from dinoret.core.errors import UserError
from dinoret.core.weights import load_backbone
from dinoret.trainer.distill import DistillMetaArch, distill, load_teacher, make_distill_config
from dinoret.trainer.config import read_config_file, to_yaml
from dinoret.trainer.optim import apply_schedules, build_optimizer
from dinoret.trainer.train import train
from tests.conftest import make_image
from tests.test_train_parts import TINY, _pil, one_thread  # noqa: F401 (autouse fixture)
from tests.test_train_run import torchrun_ddp_and_fsdp

TEACHER_RUN = TINY + ["optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=2", "optim.warmup_epochs=0",
                      "teacher.warmup_teacher_temp_epochs=0"]
# A smaller student (depth 1) than the teacher (depth 2), same patch size and crops.
STUDENT = [s for s in TINY if not s.startswith(("dino.", "ibot."))] + [
    "student.depth=1", "optim.epochs=2", "train.OFFICIAL_EPOCH_LENGTH=3", "train.checkpoint_every=2",
    "optim.warmup_epochs=1", "teacher.warmup_teacher_temp_epochs=1"]
PATCH16 = ["student.patch_size=16", "crops.global_crops_size=64", "crops.local_crops_size=32",
           "crops.high_res_global_crops_size=512", "crops.high_res_local_crops_size=96"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("distill_photos")
    return [str(make_image(d / f"{i:02d}.jpg", seed=i, size=(120, 96))) for i in range(8)]


@pytest.fixture(scope="module")
def teacher_run(photos, tmp_path_factory) -> Path:
    """A `dinoret train` run (ViT dim 64, depth 2, with DINO and iBOT heads) to distil from."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(photos, _pil, out, overrides=TEACHER_RUN, progress=False)
    return out


def _steps(metrics: Path) -> list[dict]:
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if r["event"] == "step"]


def _meta(teacher_run: Path, *extra: str) -> DistillMetaArch:
    teacher = load_teacher(str(teacher_run))
    cfg = make_distill_config(overrides=STUDENT + list(extra),
                              base={**make_distill_config(), **{k: teacher.config[k] for k in ("dino", "ibot")}})
    torch.manual_seed(0)
    return DistillMetaArch(cfg, teacher).train()


@pytest.mark.parametrize("method", ["heads", "feature", "hybrid"])
def test_teacher_stays_frozen_and_only_the_student_learns(teacher_run, photos, method) -> None:
    from dinoret.trainer.data import SSLBatches

    meta = _meta(teacher_run, f"distill.method={method}")
    assert meta.method == method
    before = {k: v.clone() for k, v in meta.teacher.state_dict().items()}
    ema_before = {k: v.clone() for k, v in meta.student_ema.state_dict().items()}
    opt = build_optimizer(meta.trainable_parts(), meta.cfg)
    batches = SSLBatches(photos, _pil, meta.cfg)
    for it in range(2):
        apply_schedules(opt, lr=1e-3, wd=0.04, last_layer_lr=1e-3)
        opt.zero_grad(set_to_none=True)
        losses = meta.forward_backward(batches[it], teacher_temp=0.04)
        assert torch.isfinite(losses["total_loss"])
        assert all(p.grad is None for p in meta.teacher.parameters())
        assert all(p.grad is None for p in meta.student_ema.parameters())
        # Every trainable student parameter gets a gradient (the mask token is trained only with masking).
        assert all(p.grad is not None for p in meta.student.parameters() if p.requires_grad), method
        assert not meta.student.backbone.mask_token.requires_grad
        opt.step()
        meta.update_ema(0.9)
    assert all(torch.equal(v, before[k]) for k, v in meta.teacher.state_dict().items())
    assert not all(torch.equal(v, ema_before[k]) for k, v in meta.student_ema.state_dict().items())
    if method == "heads":
        assert {"dino_local_crops_loss", "dino_global_crops_loss", "ibot_loss", "koleo_loss"} <= set(losses)
    elif method == "hybrid":  # its own DINO loss on class tokens, the teacher's features on class and patch tokens
        assert {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "feature_cls_loss",
                "feature_patch_loss"} <= set(losses) and "ibot_loss" not in losses
        assert meta.student.dino_head is not None and meta.student.ibot_head is None
    else:
        assert {"feature_cls_loss", "feature_patch_loss", "koleo_loss"} <= set(losses)


def test_hybrid_learns_from_its_own_ema_and_from_the_teacher(teacher_run, photos) -> None:
    """The own DINO targets come from the student's EMA and the feature targets from the
    teacher: changing either changes the loss; with feature_weight 0 the teacher is unused."""
    from dinoret.trainer.data import SSLBatches

    def loss(meta: DistillMetaArch, batch: dict) -> dict[str, float]:
        meta.student.zero_grad(set_to_none=True)
        return {k: float(v) for k, v in meta.forward_backward(batch, teacher_temp=0.04).items()}

    # LayerScale 0.1: with 1e-5 a new student's class tokens, hence its own targets, are the same for every image.
    own = ["distill.method=hybrid", "train.centering=sinkhorn_knopp", "student.layerscale=0.1"]
    meta = _meta(teacher_run, *own)
    batch = SSLBatches(photos, _pil, meta.cfg)[0]
    base = loss(meta, batch)
    with torch.no_grad():
        for p in meta.teacher.parameters():
            p.add_(0.5 * torch.randn_like(p))
    moved_teacher = loss(meta, batch)
    assert moved_teacher["feature_cls_loss"] != base["feature_cls_loss"]
    assert moved_teacher["dino_global_crops_loss"] == base["dino_global_crops_loss"]
    with torch.no_grad():
        for p in meta.student_ema.dino_head.parameters():
            p.add_(0.5 * torch.randn_like(p))
    moved_ema = loss(meta, batch)
    assert moved_ema["dino_global_crops_loss"] != base["dino_global_crops_loss"]
    assert moved_ema["feature_cls_loss"] == moved_teacher["feature_cls_loss"]
    # The own targets are made from the EMA's view of the two global crops (no local crops, no projectors).
    seen = []
    make_targets = meta.objective.own.targets
    meta.objective.own.targets = lambda out, *a: seen.append(out) or make_targets(out, *a)
    loss(meta, batch)
    with torch.no_grad():
        expected = meta.student_ema.dino_head(meta.student_ema.backbone(batch["global_crops"]))
    assert torch.allclose(seen[0]["global_cls_head"], expected, atol=1e-6)
    assert seen[0]["local_cls"] is None and "global_cls_proj" not in seen[0]
    own_only = _meta(teacher_run, *own, "distill.feature_weight=0")
    own_only.student_ema.load_state_dict(meta.student_ema.state_dict())
    own_only.student.load_state_dict(meta.student.state_dict())
    total = loss(own_only, batch)["total_loss"]
    assert total == pytest.approx(moved_ema["dino_local_crops_loss"] + moved_ema["dino_global_crops_loss"]
                                  + moved_ema["koleo_loss"] * 2, rel=1e-5)


def test_ema_update_is_the_moving_average(teacher_run) -> None:
    meta = _meta(teacher_run)
    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in meta.student_ema.parameters()]
    meta.update_ema(0.75)
    for e, o, s in zip(meta.student_ema.parameters(), old, meta.student.parameters()):
        assert torch.allclose(e, 0.75 * o + 0.25 * s, atol=1e-6)


def test_heads_come_from_the_run_and_mismatches_are_one_line_errors(teacher_run, tmp_path, photos) -> None:
    teacher = load_teacher(str(teacher_run))
    assert teacher.has_heads and teacher.config["dino"]["head_n_prototypes"] == 32
    bare = load_teacher(str(teacher_run / "teacher_backbone.pth"))
    assert not bare.has_heads
    with pytest.raises(UserError, match="no DINO/iBOT heads"):
        DistillMetaArch(make_distill_config(overrides=STUDENT + ["distill.method=heads"]), bare)
    with pytest.raises(UserError, match="patch size is 14 and the student's 16"):
        distill(photos, _pil, tmp_path / "p16", str(teacher_run), overrides=STUDENT + PATCH16, progress=False)
    with pytest.raises(UserError, match="dino.head_n_prototypes"):
        distill(photos, _pil, tmp_path / "k", str(teacher_run), overrides=STUDENT + ["dino.head_n_prototypes=64"],
                progress=False)
    with pytest.raises(UserError, match="neither a file"):
        load_teacher(str(tmp_path / "nothing-here"))


def test_resume_continues_bit_for_bit(teacher_run, photos, tmp_path, monkeypatch) -> None:
    full = distill(photos, _pil, tmp_path / "full", str(teacher_run), overrides=STUDENT, progress=False)
    out = tmp_path / "cut"
    monkeypatch.chdir(teacher_run.parent)  # a relative --teacher ...
    distill(photos, _pil, out, teacher_run.name, overrides=STUDENT, stop_after=3, progress=False)
    monkeypatch.chdir(tmp_path)  # ... and a resume from another folder
    # The run records the file it read (the run folder's newest checkpoint, absolute), and resumes from it.
    assert read_config_file(out / "config.yaml")["distill"]["teacher"] == str(teacher_run / "checkpoint_0000002.pth")
    with pytest.raises(UserError, match="distils"):
        distill(None, _pil, out, str(teacher_run / "teacher_backbone.pth"), resume=True, progress=False)
    resumed = distill(None, _pil, out, str(teacher_run), resume=True, progress=False)
    a, b = _steps(tmp_path / "full" / "metrics.jsonl"), _steps(out / "metrics.jsonl")
    assert [r["iteration"] for r in b] == list(range(6))
    assert [r["total_loss"] for r in b] == [r["total_loss"] for r in a]
    assert resumed["weights_sha256"] == full["weights_sha256"]
    ckpt = torch.load(out / "checkpoint_0000006.pth", weights_only=True)
    assert ckpt["task"] == "distill" and ckpt["final"] == "student_ema" and ckpt["distill_method"] == "heads"
    assert any(k.startswith("dino_head.") for k in ckpt["student_ema"])  # heads kept in the checkpoint
    # The exported student is the EMA's backbone, in the official layout; the checkpoint reads as the same weights.
    exported = load_backbone(weights=out / "student_backbone.pth")
    from_ckpt = load_backbone(weights=out / "checkpoint_0000006.pth")
    assert exported.config.depth == 1 and exported.config.embed_dim == 64
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(exported.model(x), from_ckpt.model(x))
    ema_backbone = {k.removeprefix("backbone."): v for k, v in ckpt["student_ema"].items() if k.startswith("backbone.")}
    assert all(torch.equal(exported.model.state_dict()[k], v) for k, v in ema_backbone.items())
    # A train run cannot resume a distill run.
    with pytest.raises(UserError, match="`dinoret distill` run"):
        train(None, _pil, out, resume=True, progress=False)


def test_hybrid_resumes_bit_for_bit_with_its_loss_centres(teacher_run, photos, tmp_path) -> None:
    sets = STUDENT + ["distill.method=hybrid", "train.centering=centering"]
    full = distill(photos, _pil, tmp_path / "full", str(teacher_run), overrides=sets, progress=False)
    out = tmp_path / "cut"
    distill(photos, _pil, out, str(teacher_run), overrides=sets, stop_after=3, progress=False)
    resumed = distill(None, _pil, out, resume=True, progress=False)
    a, b = _steps(tmp_path / "full" / "metrics.jsonl"), _steps(out / "metrics.jsonl")
    assert [r["total_loss"] for r in b] == [r["total_loss"] for r in a] and len(b) == 6
    assert resumed["weights_sha256"] == full["weights_sha256"]
    ckpt = torch.load(out / "checkpoint_0000006.pth", weights_only=True)
    assert ckpt["distill_method"] == "hybrid" and ckpt["dino_center"].abs().sum() > 0
    assert load_backbone(weights=out / "student_backbone.pth").config.depth == 1


def test_a_run_started_before_hybrid_resumes_with_the_method_it_chose(teacher_run, photos, tmp_path) -> None:
    """A bare teacher's `auto` run of an older version chose feature; its config says auto and
    has no distill.feature_weight. It resumes as feature, exactly as an uninterrupted run."""
    bare = str(teacher_run / "teacher_backbone.pth")
    sets = STUDENT + ["distill.method=feature"]
    full = distill(photos, _pil, tmp_path / "full", bare, overrides=sets, progress=False)
    out = tmp_path / "old"
    distill(photos, _pil, out, bare, overrides=sets, stop_after=4, progress=False)
    path = out / "checkpoint_0000004.pth"
    state = torch.load(path, weights_only=False)
    state["config"]["distill"]["method"] = "auto"
    del state["config"]["distill"]["feature_weight"]
    torch.save(state, path)
    (out / "config.yaml").write_text(to_yaml(state["config"]))
    resumed = distill(None, _pil, out, resume=True, progress=False)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert [r["total_loss"] for r in _steps(out / "metrics.jsonl")] == [r["total_loss"] for r in _steps(tmp_path / "full" / "metrics.jsonl")]


def test_masking_is_for_the_heads_method_only(teacher_run) -> None:
    with pytest.raises(UserError, match="distill.masking applies to the heads method only"):
        _meta(teacher_run, "distill.method=hybrid", "distill.masking=true")
    assert _meta(teacher_run, "distill.method=heads", "distill.masking=true").student.backbone.mask_token.requires_grad


def _cli(*args):
    return CliRunner().invoke(main, ["distill", *map(str, args)], catch_exceptions=False)


def test_cli_distils_and_the_index_command_uses_the_student(teacher_run, photos, tmp_path) -> None:
    data = Path(photos[0]).parent
    out = tmp_path / "run"
    sets = [a for s in STUDENT for a in ("--set", s)]
    res = _cli(data, "--teacher", teacher_run / "teacher_backbone.pth", "--output", out, *sets, "--quiet")
    assert res.exit_code == 0, res.output
    assert "6/6 iterations" in res.output and (out / "student_backbone.pth").is_file()
    # A bare backbone (the official layout, no heads): the hybrid method is chosen.
    assert torch.load(out / "checkpoint_0000006.pth", weights_only=True)["distill_method"] == "hybrid"
    assert _cli(data, "--output", tmp_path / "x", *sets).exit_code == 2  # no teacher
    bad = _cli(data, "--teacher", teacher_run, "--output", tmp_path / "p", *sets, *[a for s in PATCH16 for a in ("--set", s)])
    assert bad.exit_code == 2 and bad.output.splitlines()[-1].startswith("error: the teacher's patch size is 14")
    assert "Traceback" not in bad.output
    idx = CliRunner().invoke(main, ["index", str(data), "--index", str(tmp_path / "idx"),
                                    "--weights", str(out / "student_backbone.pth"), "--device", "cpu", "-q"])
    assert idx.exit_code == 0, idx.output
    assert "indexed 8" in idx.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "hybrid"])
def test_torchrun_two_processes_ddp_and_fsdp(teacher_run, photos, tmp_path, method) -> None:
    """Two gloo processes: DDP ranks end with the same weights; FSDP (student and EMA sharded,
    the teacher whole on each rank) computes bit for bit what DDP computes. ``hybrid`` also
    runs the sharded EMA forward (its own targets)."""
    sets = [a for s in STUDENT + ["optim.clip_grad=0", f"distill.method={method}"] for a in ("--set", s)]
    torchrun_ddp_and_fsdp("distill", Path(photos[0]).parent, tmp_path, "--teacher", str(teacher_run), *sets)
    losses, students = {}, {}
    for mode in ("ddp", "fsdp"):
        records = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        start = next(r for r in records if r["event"] == "start")
        end = next(r for r in records if r["event"] == "end")
        assert start["world_size"] == 2 and start["mode"] == mode and start["global_batch"] == 8
        assert len(end["weights_sha256"]) == 2 and len(set(end["weights_sha256"])) == 1
        losses[mode] = [r["total_loss"] for r in records if r["event"] == "step"]
        students[mode] = torch.load(tmp_path / mode / "student_backbone.pth", weights_only=True)
    assert len(losses["ddp"]) == 6 and losses["fsdp"] == losses["ddp"]
    assert all(torch.equal(students["fsdp"][k], v) for k, v in students["ddp"].items())
    assert load_backbone(weights=tmp_path / "ddp" / "student_backbone.pth").config.depth == 1
