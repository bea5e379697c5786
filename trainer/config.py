"""Training hyper-parameters: the official DINOv2 defaults, a YAML/TOML file, ``--set a.b=c``.

The keys and defaults follow ``dinov2/configs/ssl_default_config.yaml`` so that the
official training configs (``dinov2/configs/train/vitl14.yaml`` ...) load unchanged;
the few keys added here are marked ``dinoret:``. The only deliberate departures from
the official defaults are patch size 14 and 98-px local crops, which is what the
official /14 configs use (the backbone family here is /14).
"""
from __future__ import annotations

import copy
import logging
import tomllib
from pathlib import Path
from typing import Any

import yaml

from dinoret.core.errors import UserError

log = logging.getLogger("dinoret.train")

DEFAULTS: dict[str, Any] = {
    "dino": {
        "loss_weight": 1.0,
        "head_n_prototypes": 65536,
        "head_bottleneck_dim": 256,
        "head_nlayers": 3,
        "head_hidden_dim": 2048,
        "koleo_loss_weight": 0.1,
    },
    "ibot": {
        "loss_weight": 1.0,
        "mask_sample_probability": 0.5,
        "mask_ratio_min_max": [0.1, 0.5],
        "separate_head": False,
        "head_n_prototypes": 65536,
        "head_bottleneck_dim": 256,
        "head_nlayers": 3,
        "head_hidden_dim": 2048,
    },
    "train": {
        "batch_size_per_gpu": 64,
        "seed": 0,
        "num_workers": 10,
        "OFFICIAL_EPOCH_LENGTH": 1250,
        "centering": "centering",  # or "sinkhorn_knopp"
        "checkpoint_every": 3750,  # dinoret: steps between checkpoints (official: 3 epochs)
        "keep_checkpoints": 3,  # dinoret: the official PeriodicCheckpointer keeps 3
        "distributed": "auto",  # dinoret: ddp | fsdp | auto (fsdp for vit_large and vit_giant2)
        "device": "auto",  # dinoret: auto | cpu | cuda
        "precision": "auto",  # dinoret: auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
        "high_res_iterations": 0,  # dinoret: the last N iterations use the high-resolution crops
    },
    "student": {
        "arch": "vit_large",
        "patch_size": 14,
        "drop_path_rate": 0.3,
        "layerscale": 1.0e-05,
        "drop_path_uniform": True,
        "pretrained_weights": "",
        "ffn_layer": "mlp",
        "num_register_tokens": 0,
        "interpolate_antialias": False,
        "interpolate_offset": 0.1,
        # dinoret: override the arch's size (null keeps it), for small models
        "embed_dim": None,
        "depth": None,
        "num_heads": None,
        "mlp_ratio": None,
    },
    "teacher": {
        "momentum_teacher": 0.992,
        "final_momentum_teacher": 1.0,
        "warmup_teacher_temp": 0.04,
        "teacher_temp": 0.07,
        "warmup_teacher_temp_epochs": 30,
    },
    "optim": {
        "epochs": 100,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "base_lr": 0.004,  # for a total batch size of 1024
        "lr": 0.0,  # set from base_lr by the scaling rule
        "warmup_epochs": 10,
        "min_lr": 1.0e-06,
        "clip_grad": 3.0,
        "freeze_last_layer_epochs": 1,
        "scaling_rule": "sqrt_wrt_1024",  # or "none": lr = base_lr
        "patch_embed_lr_mult": 0.2,
        "layerwise_decay": 0.9,
        "adamw_beta1": 0.9,
        "adamw_beta2": 0.999,
    },
    "crops": {
        "global_crops_scale": [0.32, 1.0],
        "local_crops_number": 8,
        "local_crops_scale": [0.05, 0.32],
        "global_crops_size": 224,
        "local_crops_size": 98,
        "high_res_global_crops_size": 518,  # dinoret: used for train.high_res_iterations
        "high_res_local_crops_size": 98,
    },
}

# Keys of the official configs that have no effect here (data paths come from the
# command line; FSDP precision is replaced by autocast); accepted so those files load.
IGNORED_OFFICIAL = (
    "MODEL",
    "compute_precision",
    "evaluation",
    "train.dataset_path",
    "train.output_dir",
    "train.saveckp_freq",
    "train.cache_dataset",
    "student.block_chunks",
    "student.qkv_bias",
    "student.proj_bias",
    "student.ffn_bias",
)


def _merge(base: dict, update: dict, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if any(path == ig or path.startswith(ig + ".") for ig in IGNORED_OFFICIAL):
            log.info("config: ignoring %s (no effect in dinoret)", path)
            continue
        if key not in base:
            raise UserError(f"unknown config key {path!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} is a section, not a value")
            _merge(base[key], value, path + ".")
        else:
            base[key] = _same_kind(path, base[key], value)


def _same_kind(path: str, default, value):
    """``value`` checked against the kind of the default it replaces (a number for a number, ...),
    so a typo is one line now rather than a TypeError deep inside training."""
    number = isinstance(default, (int, float)) and not isinstance(default, bool)
    if number and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" as a string
            value = float(value) if any(c in value for c in ".eEnN") else int(value)
        except ValueError:
            pass
    if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UserError(f"config key {path!r} must be a number, not {value!r}")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise UserError(f"config key {path!r} must be true or false, not {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise UserError(f"config key {path!r} must be a string, not {value!r}")
    if isinstance(default, list) and not isinstance(value, list):
        raise UserError(f"config key {path!r} must be a list, not {value!r}")
    return value


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not a text file (YAML or TOML)") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"config {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of sections")
    return data


def parse_override(text: str) -> dict:
    """``"optim.base_lr=1e-3"`` -> ``{"optim": {"base_lr": 0.001}}`` (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"a config override is key=value, got {text!r}", param="sets")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-3" as a string; a number is meant.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def make_config(files: list[str | Path] = (), overrides: list[str] = (), base: dict | None = None) -> dict:
    """Defaults (or ``base``, a saved config), then each file, then each ``key=value``."""
    cfg = copy.deepcopy(base if base is not None else DEFAULTS)
    for f in files:
        _merge(cfg, read_config_file(f))
    for o in overrides:
        _merge(cfg, parse_override(o))
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    c, t = cfg["crops"], cfg["train"]
    p = cfg["student"]["patch_size"]
    for key in ("global_crops_size", "local_crops_size", "high_res_global_crops_size", "high_res_local_crops_size"):
        if c[key] % p:
            raise UserError(f"crops.{key}={c[key]} must be a multiple of the patch size {p}")
    if t["centering"] not in ("centering", "sinkhorn_knopp"):
        raise UserError("train.centering must be 'centering' or 'sinkhorn_knopp'")
    if t["distributed"] not in ("auto", "ddp", "fsdp"):
        raise UserError("train.distributed must be auto, ddp or fsdp")
    if t["precision"] not in ("auto", "bf16", "fp32"):
        raise UserError("train.precision must be auto, bf16 or fp32")
    if cfg["optim"]["scaling_rule"] not in ("sqrt_wrt_1024", "none"):
        raise UserError("optim.scaling_rule must be sqrt_wrt_1024 or none")
    if t["batch_size_per_gpu"] < 2:
        raise UserError("train.batch_size_per_gpu must be at least 2 (KoLeo needs a nearest neighbour)")
    if cfg["optim"]["epochs"] * t["OFFICIAL_EPOCH_LENGTH"] < 1:
        raise UserError("optim.epochs * train.OFFICIAL_EPOCH_LENGTH must be at least 1 iteration")
    if cfg["dino"]["loss_weight"] <= 0:
        raise UserError("dino.loss_weight must be positive (the DINO head is the backbone's training signal)")


def total_iterations(cfg: dict) -> int:
    return int(cfg["optim"]["epochs"] * cfg["train"]["OFFICIAL_EPOCH_LENGTH"])


def scaled_lr(cfg: dict, world_size: int) -> float:
    """The official ``sqrt_wrt_1024`` rule: lr = base_lr * sqrt(total batch / 1024)."""
    base = cfg["optim"]["base_lr"]
    if cfg["optim"]["scaling_rule"] == "none":
        return base
    return base * (cfg["train"]["batch_size_per_gpu"] * world_size / 1024.0) ** 0.5


def to_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def largest_crop(cfg: dict) -> int:
    """The largest crop side the run makes (to decode images no smaller than needed)."""
    c = cfg["crops"]
    sizes = [c["global_crops_size"], c["local_crops_size"]]
    if cfg["train"]["high_res_iterations"]:
        sizes += [c["high_res_global_crops_size"], c["high_res_local_crops_size"]]
    return max(sizes)
