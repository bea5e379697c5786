"""Fixtures shared by all tests: small random backbones saved as weight files, generated
images, and the real photos in ../shared/data (tests using them skip where it is absent)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DINORET_SHARED_DATA", REPO.parent / "shared" / "data"))

# Tests never touch the network or the user's hub cache.
os.environ["DINORET_OFFLINE"] = "1"
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))
    torch.hub.set_dir(str(tmp_path_factory.getbasetemp() / "torch_home" / "hub"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test photos not found at {SHARED_DATA} (set DINORET_SHARED_DATA)")
    return SHARED_DATA


def _save_random(path: Path, name: str, seed: int, **overrides) -> Path:
    from dinoret.core.models import build_model
    from dinoret.core.weights import save_backbone

    torch.manual_seed(seed)
    save_backbone(path, build_model(name, **overrides), name=name if not overrides else "tiny")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A dinoret backbone file: ViT depth 2, dim 64, patch 14 (fast on CPU)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    return _save_random(path, "dinov2_vits14", 0, embed_dim=64, depth=2, num_heads=2, img_size=224)


@pytest.fixture(scope="session")
def vits14_weights(tmp_path_factory) -> Path:
    """ViT-S/14 with random weights in the official key layout (a bare state dict)."""
    from dinoret.core.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_pretrain.pth"
    torch.save(build_model("dinov2_vits14").state_dict(), path)
    return path


def make_image(path: Path, seed: int, size: tuple[int, int] = (320, 240), fmt: str | None = None) -> Path:
    """A random smooth colour image (distinct per seed) written to ``path``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-20, 20, size=(size[1], size[0], 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int32) + noise, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """A folder of 12 generated photos (JPEG and PNG, one in a subfolder)."""
    d = tmp_path / "photos"
    for i in range(10):
        make_image(d / f"img{i:02d}.jpg", seed=i)
    make_image(d / "sub" / "a.png", seed=100)
    make_image(d / "sub" / "b.png", seed=101, size=(200, 300))
    return d


def run_in_own_group(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` (e.g. torchrun) in its own process group, so that a hang is ended together
    with every worker it started; returns (exit status, stdout and stderr)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, output
