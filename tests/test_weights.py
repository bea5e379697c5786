"""Where weights come from, which formats load, and the refusal to run without them."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from dinoret.cli import main
from dinoret.core.errors import UserError
from dinoret.core.models import build_model
from dinoret.core.weights import (
    hub_cache_path,
    load_backbone,
    official_filename,
    official_url,
    read_checkpoint,
    save_backbone,
    write_sidecar,
)


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model("dinov2_vits14", embed_dim=64, depth=2, num_heads=2, img_size=56, **kw)


def test_official_names() -> None:
    assert official_filename("dinov2_vitb14") == "dinov2_vitb14_pretrain.pth"
    assert official_filename("dinov2_vitg14_reg") == "dinov2_vitg14_reg4_pretrain.pth"
    assert official_url("dinov2_vitl14_reg").endswith("/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth")


def test_no_weights_offline_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setenv("DINORET_OFFLINE", "1")
    with pytest.raises(UserError, match="no weights for dinov2_vits14") as e:
        load_backbone("dinov2_vits14")
    assert e.value.exit_code == 2 and e.value.params == ("weights",)
    message = str(e.value)
    # It says where to put the file (the torch hub cache) and where to get it, and names no CLI flag.
    assert str(hub_cache_path("dinov2_vits14")) in message and official_url("dinov2_vits14") in message
    assert "--" not in message


def test_new_user_line_offline_says_where_to_put_the_weights_then_works(tmp_path, monkeypatch, vits14_weights) -> None:
    """`dinoret index ./photos` with nothing else: offline it names the hub cache path in one
    line; with the official file placed there it indexes."""
    from tests.conftest import make_image

    monkeypatch.chdir(tmp_path)
    for i in range(2):
        make_image(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    r = CliRunner().invoke(main, ["index", "./photos", "-q", "--workers", "0"])
    cached = hub_cache_path("dinov2_vits14")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: no weights for dinov2_vits14") and f"put it at {cached}" in r.output
    assert r.output.rstrip().endswith("(see --weights)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(vits14_weights.read_bytes())
    r = CliRunner().invoke(main, ["index", "./photos", "-q", "--workers", "0"])
    assert r.exit_code == 0 and "indexed 2" in r.output, r.output
    assert (tmp_path / ".dinoret" / "catalog.db").is_file()


def test_unknown_model_and_missing_file() -> None:
    with pytest.raises(UserError, match="unknown model"):
        load_backbone("dinov2_vitx14")
    with pytest.raises(UserError, match="weights file not found"):
        load_backbone("dinov2_vits14", weights="/nonexistent/w.pth")


def test_official_state_dict_loads_strict_and_infers_the_name(vits14_weights) -> None:
    bb = load_backbone(weights=vits14_weights)
    assert bb.name == "dinov2_vits14" and bb.dim == 384
    sd = torch.load(vits14_weights, weights_only=True)
    assert torch.equal(bb.model.cls_token, sd["cls_token"])
    assert len(bb.weights_sha256) == 64
    assert not bb.model.training


def test_wrong_keys_or_shapes_fail_loudly(tmp_path, vits14_weights) -> None:
    sd = torch.load(vits14_weights, weights_only=True)
    bad = dict(sd)
    del bad["blocks.3.attn.qkv.weight"]
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="do not fit the model.*blocks.3.attn.qkv.weight"):
        load_backbone("dinov2_vits14", weights=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="do not fit the model"):
        load_backbone("dinov2_vitb14", weights=vits14_weights)  # ViT-S weights into a ViT-B
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        load_backbone("dinov2_vits14", weights=tmp_path / "junk.pth")


def test_hub_cache_is_used(vits14_weights) -> None:
    cached = hub_cache_path("dinov2_vits14")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(vits14_weights.read_bytes())
    try:
        assert load_backbone("dinov2_vits14").weights_path == str(cached.resolve())
    finally:
        cached.unlink()


def test_download_into_hub_cache(tmp_path, monkeypatch) -> None:
    """The real download code, against a local server directory laid out like the official one."""
    remote = tmp_path / "remote" / "dinov2_vits14"
    remote.mkdir(parents=True)
    torch.save(build_model("dinov2_vits14_reg").state_dict(), remote / "dinov2_vits14_reg4_pretrain.pth")
    monkeypatch.setenv("DINORET_OFFLINE", "0")
    monkeypatch.setenv("DINORET_WEIGHTS_URL", (tmp_path / "remote").as_uri())
    bb = load_backbone("dinov2_vits14_reg")
    assert bb.weights_path == str(hub_cache_path("dinov2_vits14_reg").resolve())
    assert bb.config.num_register_tokens == 4
    assert not list(hub_cache_path("dinov2_vits14_reg").parent.glob("*.part"))
    hub_cache_path("dinov2_vits14_reg").unlink()


def test_dinoret_backbone_file_roundtrip(tmp_path) -> None:
    model = _tiny()
    save_backbone(tmp_path / "b.pth", model, name="tiny")
    bb = load_backbone(weights=tmp_path / "b.pth")
    assert bb.name == "tiny" and bb.config == model.cfg
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(bb.model(x), model.eval()(x))
    with pytest.raises(UserError, match="holds tiny, not dinov2_vits14"):
        load_backbone("dinov2_vits14", weights=tmp_path / "b.pth")


def test_training_checkpoint_and_inferred_small_official_layout(tmp_path) -> None:
    model = _tiny()
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save({"dinoret": "train", "backbone_name": "tiny", "backbone_config": model.cfg.to_dict(),
                "teacher": teacher}, tmp_path / "ckpt.pth")
    name, cfg, sd = read_checkpoint(tmp_path / "ckpt.pth")
    assert name == "tiny" and cfg == model.cfg and "dino_head.mlp.0.weight" not in sd
    assert load_backbone(weights=tmp_path / "ckpt.pth").config == model.cfg
    # A bare state dict of a non-official size: described by its sidecar ...
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    write_sidecar(tmp_path / "bare.pth", model.cfg, "tiny")
    bb = load_backbone(weights=tmp_path / "bare.pth")
    assert bb.name == "tiny" and bb.config == model.cfg
    # ... or, without one, inferred from the shapes with 64-dim heads (the DINOv2 convention).
    (tmp_path / "bare.json").unlink()
    bb = load_backbone(weights=tmp_path / "bare.pth")
    assert (bb.config.embed_dim, bb.config.depth, bb.config.num_heads, bb.config.img_size) == (64, 2, 1, 56)


def test_cli_reports_missing_weights_in_one_line() -> None:
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0 and "dinov2_vitg14_reg" in result.output
    help_result = CliRunner().invoke(main, ["--help"])
    assert help_result.exit_code == 0 and "Examples" in help_result.output


def test_loaded_weights_are_the_files_in_fp32_whatever_their_dtype(tmp_path) -> None:
    """The model is built on the meta device and takes the file's tensors (no random init):
    every parameter is a real fp32 CPU tensor equal to the file's, also for a half-precision
    file and for a file in torch's legacy (not memory-mappable) format."""
    model = _tiny()
    for name, sd, legacy in [("fp32", model.state_dict(), False), ("fp16", model.half().state_dict(), False),
                             ("legacy", model.float().state_dict(), True)]:
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        write_sidecar(path, model.cfg, "tiny")
        bb = load_backbone(weights=path)
        loaded = bb.model.state_dict()
        assert loaded.keys() == sd.keys()
        for key, value in loaded.items():
            assert value.device.type == "cpu" and value.dtype == torch.float32, key
            assert torch.equal(value, sd[key].float()), key
