"""The int8 CPU path: the backbone's transformer trunk run by ONNX Runtime with int8 weights.

Why this route: ``benchmarks/int8_speed.py`` measured torch dynamic int8, ONNX Runtime fp32,
dynamic and static int8, and OpenVINO side by side on real photos; ONNX Runtime with
dynamic int8 quantisation (weights int8 per output channel, activations quantised on the
fly) was the fastest route that kept the features (2.9x torch fp32, cosine >= 0.99 to fp32,
recall@10 of the fp32 neighbours >= 0.95; OpenVINO on a static int8 model tied it), and it
needs no calibration images. See the README's benchmark table.

Split of the work: the patch embedding and the position embedding (bicubic interpolation
for any input size) stay in torch, in fp32, exactly as in the fp32 path; the blocks and the
final norm (~97% of the FLOPs) run in ONNX Runtime on tokens ``[B, T, D]`` whose batch and
token count are free, so ``--preprocess whole`` (images of many shapes) works unchanged.

Exporting and quantising take seconds, so the quantised model is cached under
``$XDG_CACHE_HOME/dinoret/int8/`` (default ``~/.cache``), named by the weights' sha256, the
architecture and the library versions; the quantisation is deterministic, so a cache miss
rebuilds the same model.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dinoret.core.errors import UserError

PRECISIONS = ("fp32", "int8")
ROUTE = "onnxruntime-dynamic-int8"  # recorded with the precision: what made the vectors
_FORMAT = 1  # bump when the export or quantisation settings change
OPSET = 17


class _Trunk(nn.Module):
    """Blocks + final norm of a DINOv2 backbone: tokens in, normalised class token out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.blocks, self.norm = model.blocks, model.norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("int8 precision needs onnxruntime and onnx: pip install 'dinoret[cpu]' "
                        "(or pip install onnxruntime onnx)", param="precision") from None
    return onnxruntime


def export_trunk(model: nn.Module) -> bytes:
    """The trunk as an fp32 ONNX model with free batch and token axes."""
    trunk = _Trunk(model).eval()
    dim = model.cfg.embed_dim
    example = torch.zeros(1, 1 + model.num_register_tokens + 4, dim)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(trunk, (example,), buf, input_names=["tokens"], output_names=["cls"],
                          dynamic_axes={"tokens": {0: "batch", 1: "tokens"}, "cls": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def quantize_dynamic_int8(fp32_model: bytes) -> bytes:
    """ONNX Runtime dynamic quantisation: int8 weights per output channel for every MatMul."""
    _require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="dinoret-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_model)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        return dst.read_bytes()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dinoret" / "int8"


def _cache_key(weights_sha256: str, config: dict) -> str:
    ort = _require_onnxruntime()
    import onnx

    text = json.dumps({"weights": weights_sha256, "config": config, "format": _FORMAT, "torch": torch.__version__,
                       "onnxruntime": ort.__version__, "onnx": onnx.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def int8_model_bytes(model: nn.Module, weights_sha256: str) -> bytes:
    """The quantised trunk of ``model``, from the cache or made now (and cached if possible)."""
    path = cache_dir() / f"trunk-{_cache_key(weights_sha256, model.cfg.to_dict())}.onnx"
    if path.is_file():
        return path.read_bytes()
    data = quantize_dynamic_int8(export_trunk(model))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: rebuilt next time, same bytes
    return data


def ort_session(model_bytes: bytes, threads: int | None = None):
    ort = _require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


class OnnxTrunkForward:
    """``model(x)`` with the trunk in ONNX Runtime: images [B, 3, H, W] in, class tokens [B, D] out."""

    def __init__(self, model: nn.Module, session) -> None:
        self.model = model  # for prepare_tokens (patch + position embedding), in torch fp32
        self.session = session

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.prepare_tokens(x.float().cpu())
        out = self.session.run(None, {"tokens": np.ascontiguousarray(tokens.numpy())})[0]
        return torch.from_numpy(out)


def int8_forward(model: nn.Module, weights_sha256: str) -> OnnxTrunkForward:
    """The int8 forward of ``model`` (an fp32 DINOv2 backbone on the CPU)."""
    return OnnxTrunkForward(model, ort_session(int8_model_bytes(model, weights_sha256)))


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}", param="precision")
    return precision
