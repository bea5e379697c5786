"""Finding and loading backbone weights; never falls back to random weights.

Weights come from, in order: an explicit file, the torch hub cache, the official
download URL (when online). A file may be

* an official DINOv2 checkpoint (a bare state dict in the official key layout),
* a dinoret backbone file (``save_backbone``): ``{"dinoret": "backbone", "name", "config", "state_dict"}``,
* a dinoret training checkpoint: ``{"dinoret": "train", "backbone_name", "backbone_config", "teacher"}``
  where ``teacher`` holds the teacher's modules and its backbone keys start with ``backbone.``
  (a ``dinoret distill`` checkpoint names its result entry in ``"final"``: the student's EMA).

A bare state dict of a non-official size says nothing of its head count; a sidecar
``<file>.json`` (``{"name", "config"}``, written by :func:`write_sidecar`) does. Without one
the architecture is inferred from the shapes with DINOv2's 64-dimensional heads.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dinoret.core.errors import NotFound, UserError
from dinoret.core.files import atomic_path, file_sha256
from dinoret.core.models import MODELS, BackboneConfig, DinoVisionTransformer, model_config

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass
class Backbone:
    model: DinoVisionTransformer
    name: str
    config: BackboneConfig
    weights_path: str
    weights_sha256: str

    @property
    def dim(self) -> int:
        return self.config.embed_dim


def official_filename(name: str) -> str:
    """``dinov2_vits14_reg`` -> ``dinov2_vits14_reg4_pretrain.pth`` (the official file names)."""
    base = name.removesuffix("_reg")
    return f"{base}_reg4_pretrain.pth" if name.endswith("_reg") else f"{base}_pretrain.pth"


def official_url(name: str) -> str:
    base_url = os.environ.get("DINORET_WEIGHTS_URL", OFFICIAL_BASE_URL).rstrip("/")
    return f"{base_url}/{name.removesuffix('_reg')}/{official_filename(name)}"


def hub_cache_path(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / official_filename(name)


def _download(url: str, dest: Path, timeout: float = 20.0) -> None:
    """Download to a temporary name beside ``dest`` and rename, so a cut leaves no partial file."""
    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 22)


def resolve_weights(name: str | None, weights: str | Path | None) -> Path:
    """The weights file to use, downloading the official one into the hub cache if needed."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise NotFound(f"weights file not found: {path}", param="weights")
        return path
    if name is None:
        raise UserError("no model given: name a model or give a weights file", param=("model", "weights"))
    model_config(name)  # unknown names fail here, before any download
    cached = hub_cache_path(name)
    if cached.is_file():
        return cached
    if os.environ.get("DINORET_OFFLINE") != "1":
        try:
            _download(official_url(name), cached)
            return cached
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
    raise NotFound(
        f"no weights for {name} and no download possible: fetch {official_url(name)} and put it at {cached} "
        f"(or give the file's path as the weights)",
        param="weights",
    )


def infer_config(state_dict: dict) -> tuple[str | None, BackboneConfig]:
    """Architecture of an official-layout state dict, by its shapes (and its name if official)."""
    try:
        dim = state_dict["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        n_reg = state_dict["register_tokens"].shape[1] if "register_tokens" in state_dict else 0
        patch = state_dict["patch_embed.proj.weight"].shape[-1]
        grid = state_dict["pos_embed"].shape[1] - 1
    except (KeyError, ValueError, AttributeError, IndexError):
        raise UserError("weights file is not a DINOv2 backbone (missing cls_token/blocks/pos_embed)",
                        param="weights") from None
    img_size = int(round(grid**0.5)) * patch
    for name, cfg in MODELS.items():
        if (cfg.embed_dim, cfg.depth, cfg.num_register_tokens, cfg.patch_size) == (dim, depth, n_reg, patch):
            # An official architecture trained at another resolution (dinoret train) has a smaller grid.
            return name, cfg if cfg.img_size == img_size else replace(cfg, img_size=img_size)
    # A non-official size (for example a small model trained by dinoret): follow the conventions.
    heads = max(1, dim // 64)
    swiglu = any(k.endswith("mlp.w12.weight") for k in state_dict)
    hidden = state_dict["blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    cfg = BackboneConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim if not swiglu else 4.0,
        patch_size=patch,
        img_size=img_size,
        ffn_layer="swiglu" if swiglu else "mlp",
        num_register_tokens=n_reg,
        init_values=1.0 if "blocks.0.ls1.gamma" in state_dict else None,
        interpolate_antialias=bool(n_reg),
        interpolate_offset=0.0 if n_reg else 0.1,
    )
    return None, cfg


def read_checkpoint(path: str | Path) -> tuple[str | None, BackboneConfig | None, dict]:
    """(name, config, backbone state dict) of any supported weights file.

    A zip-format file (what ``torch.save`` writes) is memory-mapped: its tensors are read
    when used, and a training checkpoint's optimizer state and other modules never are."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch raises many types for a bad file
        raise UserError(f"cannot read weights file {path}: {str(e).splitlines()[0]}", param="weights") from None
    if not isinstance(obj, dict):
        raise UserError(f"weights file {path} does not hold a state dict", param="weights")
    kind = obj.get("dinoret")
    sidecar = Path(path).with_suffix(".json")
    if kind is None and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        return meta.get("name"), BackboneConfig.from_dict(meta["config"]), obj
    if kind == "backbone":
        return obj.get("name"), BackboneConfig.from_dict(obj["config"]), obj["state_dict"]
    if kind == "train":
        result = obj[obj.get("final", "teacher")]
        sd = {k.removeprefix("backbone."): v for k, v in result.items() if k.startswith("backbone.")}
        return obj.get("backbone_name"), BackboneConfig.from_dict(obj["backbone_config"]), sd
    return None, None, obj


def load_state_strict(model: DinoVisionTransformer, state_dict: dict, source: str, assign: bool = False) -> None:
    """Load with ``strict=True`` and turn key/shape mismatches into a clear error. ``assign``:
    the model takes the state dict's tensors themselves (for a model built on the meta device)."""
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise UserError(f"weights in {source} do not fit the model: {detail}", param="weights") from None


def load_backbone(
    name: str | None = None, weights: str | Path | None = None, device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> Backbone:
    """A backbone with real weights, in eval mode, on ``device``.

    ``sha256``: the weights file's sha256 when the caller already knows it (the index
    catalog records it), which saves hashing a file of up to gigabytes again."""
    path = resolve_weights(name, weights)
    file_name, file_cfg, sd = read_checkpoint(path)
    if file_cfg is not None:
        if name and file_name and name != file_name:
            raise UserError(f"weights file {path} holds {file_name}, not {name}", param=("model", "weights"))
        cfg, name = file_cfg, name or file_name or "custom"
    else:
        inferred_name, inferred_cfg = infer_config(sd)
        cfg = model_config(name) if name else inferred_cfg
        name = name or inferred_name or "custom"
    # Built on the meta device, with no random initialisation (on a CPU it took longer than the
    # forward pass of a one-shot query), then given the file's tensors.
    model = DinoVisionTransformer(cfg, device="meta")
    load_state_strict(model, sd, str(path), assign=True)
    model.float().eval().to(device)  # float(): fp32 as a copy into the model's own parameters would give
    return Backbone(model, name, cfg, str(Path(path).resolve()), sha256 or file_sha256(path))


def write_sidecar(weights_path: str | Path, cfg: BackboneConfig, name: str) -> Path:
    """Describe a bare official-layout state dict, so a non-official size loads exactly."""
    sidecar = Path(weights_path).with_suffix(".json")
    sidecar.write_text(json.dumps({"name": name, "config": cfg.to_dict()}, indent=2))
    return sidecar


def save_backbone(path: str | Path, model: DinoVisionTransformer, name: str = "custom") -> None:
    """Write a self-describing backbone file (architecture + weights), atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"dinoret": "backbone", "name": name, "config": model.cfg.to_dict(), "state_dict": state}, tmp)
