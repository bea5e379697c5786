"""The pieces of the recipe: config, schedules, parameter groups, masking, crops, batches."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_image
from dinoret.trainer.config import DEFAULTS, make_config, parse_override, scaled_lr
from dinoret.trainer.data import SSLBatches
from dinoret.core.errors import UserError
from dinoret.trainer.export import check_exportable
from dinoret.trainer.masking import MaskingGenerator, collate, mask_generator_for
from dinoret.trainer.optim import apply_schedules, build_optimizer
from dinoret.trainer.schedules import build_schedules
from dinoret.trainer.ssl import Student, backbone_config

TINY = [
    "student.arch=vit_small", "student.embed_dim=64", "student.depth=2", "student.num_heads=1",
    "crops.global_crops_size=56", "crops.local_crops_size=28", "crops.local_crops_number=2",
    "train.batch_size_per_gpu=4", "train.num_workers=0",
    "dino.head_n_prototypes=32", "dino.head_hidden_dim=32", "dino.head_bottleneck_dim=16",
    "ibot.head_n_prototypes=32", "ibot.head_hidden_dim=32", "ibot.head_bottleneck_dim=16",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_config_defaults_follow_the_official_file() -> None:
    assert DEFAULTS["teacher"]["momentum_teacher"] == 0.992 and DEFAULTS["teacher"]["final_momentum_teacher"] == 1
    assert DEFAULTS["crops"]["global_crops_scale"] == [0.32, 1.0] and DEFAULTS["crops"]["local_crops_scale"] == [0.05, 0.32]
    assert DEFAULTS["optim"]["layerwise_decay"] == 0.9 and DEFAULTS["optim"]["clip_grad"] == 3.0
    cfg = make_config()
    assert scaled_lr(cfg, world_size=16) == pytest.approx(0.004)  # 64 x 16 = 1024 images: base lr


def test_config_files_and_overrides(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("optim:\n  epochs: 3\ntrain:\n  dataset_path: ImageNet22k\n  centering: sinkhorn_knopp\n")
    (tmp_path / "b.toml").write_text("[optim]\nbase_lr = 0.001\n[crops]\nlocal_crops_number = 2\n")
    cfg = make_config([tmp_path / "a.yaml", tmp_path / "b.toml"], ["optim.base_lr=2e-4", "ibot.separate_head=true",
                                                                  "crops.global_crops_scale=[0.4, 1.0]"])
    assert cfg["optim"]["epochs"] == 3 and cfg["train"]["centering"] == "sinkhorn_knopp"
    assert cfg["optim"]["base_lr"] == 2e-4 and cfg["ibot"]["separate_head"] is True
    assert cfg["crops"]["local_crops_number"] == 2 and cfg["crops"]["global_crops_scale"] == [0.4, 1.0]
    assert parse_override("a.b=1e-3") == {"a": {"b": 0.001}}
    with pytest.raises(UserError, match="unknown config key 'optim.lrr'"):
        make_config(overrides=["optim.lrr=1"])
    with pytest.raises(UserError, match="multiple of the patch size"):
        make_config(overrides=["crops.local_crops_size=96"])


def test_schedules_warmup_cosine_and_frozen_last_layer() -> None:
    cfg = make_config(overrides=["optim.epochs=10", "train.OFFICIAL_EPOCH_LENGTH=10", "optim.warmup_epochs=2",
                                 "teacher.warmup_teacher_temp_epochs=3", "optim.min_lr=0.0"])
    s = build_schedules(cfg, lr=1.0)
    assert s.lr[0] == 0 and s.lr[19] == pytest.approx(1.0) and s.lr[99] < 1e-3 and s.lr[500] == 0.0
    assert s.lr[20 + 40] == pytest.approx(0.5, abs=0.02)  # half-way through the cosine
    assert all(s.last_layer_lr[i] == 0 for i in range(10)) and s.last_layer_lr[10] == s.lr[10]
    assert s.momentum[0] == pytest.approx(0.992) and s.momentum[99] == pytest.approx(1.0, abs=1e-5)
    assert s.wd[0] == pytest.approx(0.04) and s.wd[99] == pytest.approx(0.4, abs=1e-3)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[29] == pytest.approx(0.07)
    assert s.teacher_temp[80] == pytest.approx(0.07)


def test_param_groups_layerwise_decay_and_no_decay() -> None:
    cfg = make_config(overrides=TINY)
    student = Student.from_config(cfg)
    opt = build_optimizer([student.backbone, student.dino_head], cfg)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(student.named_parameters())

    def mult(name):
        g = group_of[id(named[name])]
        return g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]

    assert mult("backbone.blocks.0.attn.qkv.weight") == (pytest.approx(0.9**2), 1.0, False)
    assert mult("backbone.blocks.1.mlp.fc1.weight") == (pytest.approx(0.9), 1.0, False)
    assert mult("backbone.blocks.1.mlp.fc1.bias")[1] == 0.0
    assert mult("backbone.blocks.0.ls1.gamma")[1] == 0.0 and mult("backbone.norm.weight") == (1.0, 0.0, False)
    assert mult("backbone.pos_embed")[0] == pytest.approx(0.9**3)
    assert mult("backbone.patch_embed.proj.weight")[0] == pytest.approx(0.9**3 * 0.2)
    assert mult("dino_head.mlp.0.weight") == (1.0, 1.0, False)
    assert mult("dino_head.last_layer.parametrizations.weight.original1")[2] is True
    with_registers = Student.from_config(make_config(overrides=TINY + ["student.num_register_tokens=2"])).backbone
    reg_group = next(g for g in build_optimizer([with_registers], cfg).param_groups
                     if any(p is with_registers.register_tokens for p in g["params"]))
    assert reg_group["lr_multiplier"] == pytest.approx(0.9**3)  # an embedding, like cls_token
    apply_schedules(opt, lr=0.1, wd=0.5, last_layer_lr=0.0)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.0 if g["is_last_layer"] else 0.1 * g["lr_multiplier"])
        assert g["weight_decay"] == pytest.approx(0.5 * g["wd_multiplier"])


def test_drop_path_uniform_and_teacher_without() -> None:
    cfg = make_config(overrides=TINY + ["student.drop_path_rate=0.2"])
    assert [b.drop_path for b in Student.from_config(cfg, 0.2, drop_path_uniform=True).backbone.blocks] == [0.2, 0.2]
    assert [b.drop_path for b in Student.from_config(cfg, 0.2, drop_path_uniform=False).backbone.blocks] == [0.0, 0.2]


def test_masking_ratios_and_weights() -> None:
    gen = mask_generator_for(224, 14)  # 16 x 16 patches
    rng = random.Random(0)
    crops = [{"global_crops": [torch.zeros(3, 4, 4)] * 2, "local_crops": []} for _ in range(32)]
    batch = collate(crops, (0.1, 0.5), 0.5, gen, rng)
    masks = batch["masks"]
    assert masks.shape == (64, 256)
    counts = masks.sum(1)
    masked = counts[counts > 0]
    assert len(masked) <= 32 and len(masked) >= 28  # half the crops (a rare draw may mask nothing)
    ratios = masked.float() / 256
    assert ratios.min() >= 0.0 and ratios.max() <= 0.5 + 1e-6
    assert ratios.max() > 0.4 and ratios.min() < 0.2  # the sub-intervals cover the whole range
    assert torch.equal(batch["mask_indices"], masks.flatten().nonzero().flatten())
    # Every masked image weighs 1 in total.
    assert batch["masks_weight"].sum().item() == pytest.approx(len(masked), rel=1e-5)
    again = collate(crops, (0.1, 0.5), 0.5, gen, random.Random(0))
    assert torch.equal(again["masks"], masks)


def test_mask_generator_draws_blocks_within_the_limit() -> None:
    gen = MaskingGenerator((14, 14), max_num_patches=0.5 * 14 * 14)
    rng = random.Random(3)
    for target in (10, 40, 98):
        m = gen(target, rng)
        assert 0 < m.sum() <= target
    assert gen(0, rng).sum() == 0


def _files(tmp_path, n=6):
    return [str(make_image(tmp_path / f"{i}.jpg", seed=i, size=(96, 80))) for i in range(n)]


def _pil(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def test_batches_are_a_function_of_the_iteration(tmp_path) -> None:
    cfg = make_config(overrides=TINY + ["optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=4"])
    files = _files(tmp_path)
    a = SSLBatches(files, _pil, cfg)
    b = SSLBatches(files, _pil, cfg)
    torch.manual_seed(123)  # the global generator does not matter
    x2 = b[2]
    x1 = a[1]
    y2 = a[2]
    assert torch.equal(x2["global_crops"], y2["global_crops"]) and torch.equal(x2["masks"], y2["masks"])
    assert not torch.equal(x1["global_crops"], y2["global_crops"])
    assert x1["global_crops"].shape == (8, 3, 56, 56) and x1["local_crops"].shape == (8, 3, 28, 28)
    # Two ranks train on different images of the same permutation.
    r1 = SSLBatches(files, _pil, cfg, rank=1, world_size=2)
    assert not torch.equal(r1[1]["global_crops"], SSLBatches(files, _pil, cfg, rank=0, world_size=2)[1]["global_crops"])


def test_bad_files_are_skipped_and_reported(tmp_path) -> None:
    files = _files(tmp_path, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    cfg = make_config(overrides=TINY + ["optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=2"])
    ds = SSLBatches(files + [str(bad)], _pil, cfg)
    skipped = ds[0]["skipped"] + ds[1]["skipped"]
    assert [p for p, _ in skipped] == [str(bad)]  # reported once, then known
    assert ds[0]["global_crops"].shape[0] == 8
    with pytest.raises(UserError, match="none of the 1"):
        SSLBatches([str(bad)], _pil, cfg)[0]


def test_high_resolution_phase_uses_larger_crops(tmp_path) -> None:
    cfg = make_config(overrides=TINY + ["optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=4", "train.high_res_iterations=1",
                                        "crops.high_res_global_crops_size=84", "crops.high_res_local_crops_size=42"])
    ds = SSLBatches(_files(tmp_path), _pil, cfg)
    assert ds[2]["global_crops"].shape[-1] == 56
    hi = ds[3]
    assert hi["global_crops"].shape[-1] == 84 and hi["local_crops"].shape[-1] == 42 and hi["masks"].shape[1] == 36


def test_export_refuses_architectures_the_official_layout_cannot_describe() -> None:
    assert check_exportable(backbone_config(make_config(overrides=TINY))) == "custom"
    assert check_exportable(backbone_config(make_config(overrides=["student.arch=vit_small"]))) == "dinov2_vits14"
    with pytest.raises(UserError, match="num_heads=2"):
        check_exportable(backbone_config(make_config(overrides=TINY + ["student.num_heads=2"])))
    with pytest.raises(UserError, match="interpolate_offset"):
        check_exportable(backbone_config(make_config(overrides=["student.arch=vit_small", "student.num_register_tokens=4"])))


def test_augmentation_crops_are_normalised(tmp_path) -> None:
    from dinoret.trainer.augment import DataAugmentationDINO

    torch.manual_seed(0)
    out = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 3, 56, 28)(Image.open(_files(tmp_path, 1)[0]))
    assert [t.shape for t in out["global_crops"]] == [(3, 56, 56)] * 2
    assert [t.shape for t in out["local_crops"]] == [(3, 28, 28)] * 3
    assert np.isfinite(torch.stack(out["global_crops"]).numpy()).all()
