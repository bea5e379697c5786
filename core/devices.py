"""Device choice and mixed precision: fp32 on CPU (bf16 is slower there without AMX), bf16 on CUDA."""
from __future__ import annotations

import contextlib

import torch

from dinoret.core.errors import UserError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but no CUDA GPU is available", param="device")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda", param="device")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
