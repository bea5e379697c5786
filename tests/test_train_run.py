"""Training end to end on a tiny ViT (depth 2, dim 64): steps, overfitting, resume, export, CLI, torchrun."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dinoret.cli import main
from tests.conftest import REPO, make_image, run_in_own_group
from tests.test_train_parts import TINY, _pil, one_thread  # noqa: F401 (autouse fixture)
from dinoret.trainer.config import make_config
from dinoret.trainer.data import SSLBatches
from dinoret.trainer.optim import apply_schedules, build_optimizer
from dinoret.trainer.ssl import SSLMetaArch
from dinoret.trainer.train import train
from dinoret.core.weights import load_backbone

RUN = TINY + ["optim.epochs=2", "train.OFFICIAL_EPOCH_LENGTH=3", "train.checkpoint_every=2", "optim.warmup_epochs=1",
              "teacher.warmup_teacher_temp_epochs=1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("train_photos")
    return [str(make_image(d / f"{i:02d}.jpg", seed=i, size=(120, 96))) for i in range(8)]


def _steps(metrics: Path) -> list[dict]:
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if r["event"] == "step"]


def test_resume_continues_bit_for_bit(photos, tmp_path) -> None:
    full = train(photos, _pil, tmp_path / "full", overrides=RUN, progress=False)
    assert full["iterations"] == 6
    out = tmp_path / "cut"
    cut = train(photos, _pil, out, overrides=RUN, stop_after=3, progress=False)
    assert cut["iterations"] == 3
    # Interrupted after iteration 3: the newest checkpoint is from iteration 2, as after a crash.
    assert sorted(p.name for p in out.glob("checkpoint_*.pth")) == ["checkpoint_0000002.pth"]
    resumed = train(None, _pil, out, resume=True, progress=False)
    a, b = _steps(tmp_path / "full" / "metrics.jsonl"), _steps(out / "metrics.jsonl")
    assert [r["iteration"] for r in b] == list(range(6))  # the redone iteration replaced, not duplicated
    assert b[2]["total_loss"] == a[2]["total_loss"]  # the next loss after the checkpoint
    assert [r["total_loss"] for r in b] == [r["total_loss"] for r in a]
    assert resumed["weights_sha256"] == full["weights_sha256"]
    # The metrics carry the recipe's schedules.
    assert a[0]["lr"] == 0.0 and a[0]["last_layer_lr"] == 0.0 and a[0]["mom"] == pytest.approx(0.992)
    assert a[0]["teacher_temp"] == pytest.approx(0.04) and a[-1]["teacher_temp"] == pytest.approx(0.07)

    # The outputs load as weights, the checkpoint and the exported teacher alike.
    ckpt = torch.load(out / "checkpoint_0000006.pth", weights_only=True)
    assert ckpt["config"]["student"]["embed_dim"] == 64 and ckpt["iteration"] == 6
    exported = load_backbone(weights=out / "teacher_backbone.pth")
    from_ckpt = load_backbone(weights=out / "checkpoint_0000006.pth")
    assert exported.config.num_heads == 1 and exported.config.img_size == 56
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(exported.model(x), from_ckpt.model(x))
    assert set(torch.load(out / "teacher_backbone.pth", weights_only=True)) == set(exported.model.state_dict())


def test_loss_falls_when_overfitting_one_batch(photos) -> None:
    """With the teacher held still (momentum 1, Sinkhorn-Knopp targets) the student fits its targets."""
    cfg = make_config(overrides=TINY + ["student.drop_path_rate=0.0", "dino.koleo_loss_weight=0.0",
                                        "train.centering=sinkhorn_knopp"])
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).train()
    batch = SSLBatches(photos, _pil, make_config(overrides=RUN))[0]
    opt = build_optimizer([meta.student.backbone, meta.student.dino_head], cfg)
    losses = []
    for _ in range(25):
        apply_schedules(opt, lr=1e-3, wd=0.04, last_layer_lr=1e-3)
        opt.zero_grad(set_to_none=True)
        losses.append(meta.forward_backward(batch, teacher_temp=0.04)["total_loss"].item())
        opt.step()
        meta.update_ema(1.0)
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def _cli(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)], catch_exceptions=False)


def test_cli_trains_and_the_index_command_uses_the_backbone(photos, tmp_path) -> None:
    data = Path(photos[0]).parent
    out = tmp_path / "run"
    sets = [a for s in RUN for a in ("--set", s)]
    res = _cli(data, "--output", out, *sets, "--quiet")
    assert res.exit_code == 0, res.output
    assert "6/6 iterations" in res.output
    assert (out / "teacher_backbone.pth").is_file() and (out / "config.yaml").is_file()
    again = _cli(data, "--output", out, *sets)
    assert again.exit_code == 2 and "--resume" in again.output
    assert _cli("--output", tmp_path / "empty", "--resume").exit_code == 2
    # A finished run trained further: --set on --resume, recorded in config.yaml.
    longer = _cli("--output", out, "--resume", "--set", "optim.epochs=3", "--quiet")
    assert longer.exit_code == 0 and "9/9 iterations" in longer.output, longer.output
    assert "epochs: 3" in (out / "config.yaml").read_text()
    idx = CliRunner().invoke(main, ["index", str(data), "--index", str(tmp_path / "idx"),
                                    "--weights", str(out / "teacher_backbone.pth"), "--device", "cpu", "-q"])
    assert idx.exit_code == 0, idx.output
    assert "indexed 8" in idx.output


def torchrun_ddp_and_fsdp(command: str, data: Path, out: Path, *args: str) -> None:
    """``dinoret COMMAND`` in two gloo processes, DDP then FSDP (tests/torchrun_ddp_fsdp.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "torchrun_ddp_fsdp.py"), command, str(data), str(out), *args]
    returncode, output = run_in_own_group(cmd, env, timeout=240)
    assert returncode == 0, output[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_ddp_and_fsdp(photos, tmp_path) -> None:
    """DDP keeps identical weights on both ranks; FSDP computes exactly what DDP computes.

    Without gradient clipping: clipping is exact too, but its norm is summed in another
    order under FSDP, and Adam turns such last-bit differences in tiny gradients into
    visible ones within a few steps."""
    sets = [a for s in RUN + ["optim.clip_grad=0"] for a in ("--set", s)]
    torchrun_ddp_and_fsdp("train", Path(photos[0]).parent, tmp_path, *sets)
    losses, teachers = {}, {}
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        start = next(r for r in records if r["event"] == "start")
        end = next(r for r in records if r["event"] == "end")
        assert start["world_size"] == 2 and start["mode"] == mode and start["global_batch"] == 8
        assert len(end["weights_sha256"]) == 2 and len(set(end["weights_sha256"])) == 1
        losses[mode] = [r["total_loss"] for r in records if r["event"] == "step"]
        teachers[mode] = torch.load(out / "teacher_backbone.pth", weights_only=True)
    assert len(losses["ddp"]) == 6 and losses["fsdp"] == losses["ddp"]
    assert all(torch.equal(teachers["fsdp"][k], v) for k, v in teachers["ddp"].items())
