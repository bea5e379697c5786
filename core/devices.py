"""Device choice and mixed precision: fp32 on CPU (bf16 is slower there without AMX), bf16 on CUDA.

torch is imported only where a torch device is asked for: ``device_type`` answers "cpu"
without it on a machine with no GPU driver, so work that needs no model (dedup of stored
vectors) does not pay torch's import (about 0.5 GiB resident, 2 s).
"""
from __future__ import annotations

import contextlib
import glob
import os
import sys
from typing import TYPE_CHECKING

from dinoret.core.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but no CUDA GPU is available", param="device")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda", param="device")
    return torch.device(name)


def device_type(name: str | torch.device = "auto") -> str:
    """``"cpu"`` or ``"cuda"``: what ``resolve_device(name).type`` would be, without importing
    torch when ``name`` is ``cpu``, or ``auto`` on a Linux machine with no GPU device node
    (torch could not reach a GPU there)."""
    if not isinstance(name, str):
        return name.type
    if name == "cpu" or (name == "auto" and not _gpu_driver_present()):
        return "cpu"
    return resolve_device(name).type


def _gpu_driver_present() -> bool:
    if not sys.platform.startswith("linux"):
        return True  # no cheap test elsewhere: torch decides
    # NVIDIA (/dev/nvidia0, ...), ROCm (/dev/kfd, which torch.cuda also drives), WSL2 (/dev/dxg)
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
