"""int8 routes for the CPU, side by side: speed, fidelity to fp32 and recall of fp32 neighbours.

Every route embeds the same real photos from ``../shared/data`` (decoded and preprocessed as
``dinoret index`` does) with the same random-weight ViT-S/14 (no pretrained weights here;
LayerScale 1, so features depend on the image):

* ``torch-fp32``: the fp32 model, what ``dinoret index`` runs today (the reference);
* ``torch-int8-dynamic``: torch dynamic quantisation of every Linear layer (qint8);
* ``ort-fp32``: the transformer trunk exported to ONNX, run by ONNX Runtime;
* ``ort-int8-dynamic``: that model with ONNX Runtime dynamic int8 quantisation (int8 weights
  per channel, activations quantised on the fly): ``dinoret index --precision int8``;
* ``ort-int8-static``: QDQ static int8 (activations calibrated on other photos);
* ``openvino-fp32`` / ``openvino-int8-static``: the ONNX models compiled by OpenVINO.

The patch and position embedding of every ONNX/OpenVINO route stay in torch fp32 (as in
the product path). Fidelity: cosine of each image's feature to its fp32 feature (min and
mean). Recall@10: each photo queries the others; overlap of its 10 nearest neighbours with
those under fp32. Speed: images/s of the model forward on one batch at ``--threads``
threads, routes measured in turns (round robin, median of the rounds), so load from other
jobs falls on all routes alike; read the ratio to ``torch-fp32``.

    python benchmarks/int8_speed.py                  # 160 photos, batch 16, 2 threads
    python benchmarks/int8_speed.py --images 300 --rounds 5 --routes torch-fp32 ort-int8-dynamic
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dinoret.core.models import build_model  # noqa: E402
from dinoret.indexer import int8  # noqa: E402
from dinoret.indexer.decode import open_image  # noqa: E402
from dinoret.indexer.discover import find_images  # noqa: E402
from dinoret.indexer.preprocess import Preprocess  # noqa: E402

DATA = REPO.parent / "shared" / "data"
ROUTES = ["torch-fp32", "torch-int8-dynamic", "ort-fp32", "ort-int8-dynamic", "ort-int8-static",
          "openvino-fp32", "openvino-int8-static"]


def photos(n: int, offset: int = 0) -> torch.Tensor:
    """``n`` preprocessed photos (crop 224) from the shared data, in a fixed order."""
    folders = [DATA / "ukbench_first56", DATA / "perception_testimages", DATA / "oxford5k_gt_subset" / "images_512"]
    paths = sorted(str(p) for f in folders if f.is_dir() for p in find_images([f]))
    if len(paths) < offset + n:
        raise SystemExit(f"need {offset + n} photos under {DATA}, found {len(paths)}")
    pre = Preprocess()
    return torch.stack([pre(open_image(p, draft_size=pre.draft_size()).image) for p in paths[offset : offset + n]])


class _Calibration:
    """Token batches for ONNX Runtime's static quantisation calibrator."""

    def __init__(self, tokens: torch.Tensor, batch: int = 8) -> None:
        self.batches = [{"tokens": tokens[i : i + batch].numpy()} for i in range(0, len(tokens), batch)]

    def get_next(self):
        return self.batches.pop(0) if self.batches else None


def static_int8(fp32_bytes: bytes, calib_tokens: torch.Tensor) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_bytes)
        quantize_static(src, dst, _Calibration(calib_tokens), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax)
        return dst.read_bytes()


def openvino_forward(model, onnx_bytes: bytes, threads: int):
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(onnx_bytes)
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                       "INFERENCE_PRECISION_HINT": "f32"})

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        tokens = model.prepare_tokens(x)
        return torch.from_numpy(np.asarray(compiled(tokens.numpy())[0]))

    return forward


def make_routes(names: list[str], model, calib: torch.Tensor, threads: int) -> dict:
    """name -> forward(images [B,3,224,224]) -> [B, D]; a route that cannot be built is reported and left out."""
    routes = {}
    fp32_onnx = int8_onnx = static_onnx = None
    for name in names:
        t = time.perf_counter()
        try:
            if name == "torch-fp32":
                routes[name] = model
            elif name == "torch-int8-dynamic":
                from torch.ao.quantization import quantize_dynamic

                routes[name] = quantize_dynamic(_copy(model), {torch.nn.Linear}, dtype=torch.qint8)
            elif name.startswith(("ort", "openvino")):
                fp32_onnx = fp32_onnx or int8.export_trunk(model)
                if name.endswith("int8-dynamic"):
                    int8_onnx = int8_onnx or int8.quantize_dynamic_int8(fp32_onnx)
                    onnx_bytes = int8_onnx
                elif name.endswith("int8-static"):
                    if static_onnx is None:
                        with torch.inference_mode():
                            static_onnx = static_int8(fp32_onnx, model.prepare_tokens(calib))
                    onnx_bytes = static_onnx
                else:
                    onnx_bytes = fp32_onnx
                if name.startswith("ort"):
                    routes[name] = int8.OnnxTrunkForward(model, int8.ort_session(onnx_bytes, threads))
                else:
                    routes[name] = openvino_forward(model, onnx_bytes, threads)
            print(f"  built {name} in {time.perf_counter() - t:.1f} s", flush=True)
        except Exception as e:  # a route missing its package is reported, the others still run
            print(f"  {name}: not measured ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)
    return routes


def _copy(model):
    clone = build_model(model.cfg).eval()
    clone.load_state_dict(model.state_dict())
    return clone


@torch.inference_mode()
def features(forward, images: torch.Tensor, batch: int) -> np.ndarray:
    out = [torch.nn.functional.normalize(forward(images[i : i + batch]).float(), dim=-1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def neighbours(f: np.ndarray, k: int) -> np.ndarray:
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


@torch.inference_mode()
def images_per_second(forward, x: torch.Tensor, batches: int) -> float:
    t = time.perf_counter()
    for _ in range(batches):
        forward(x)
    return batches * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160, help="photos embedded by every route (fidelity, recall)")
    ap.add_argument("--calibration", type=int, default=32, help="other photos for static int8 calibration")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="speed rounds (routes in turns)")
    ap.add_argument("--batches", type=int, default=2, help="batches timed per route per round")
    ap.add_argument("--routes", nargs="+", default=ROUTES, choices=ROUTES)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("dinov2_vits14").eval()  # random weights, LayerScale 1
    print(f"{platform.processor() or platform.machine()} CPU, {args.threads} threads; torch {torch.__version__}; "
          f"ViT-S/14 random weights, 224 px, batch {args.batch}", flush=True)
    images = photos(args.images)
    calib = photos(args.calibration, offset=args.images)
    print(f"{len(images)} photos for fidelity/recall, {len(calib)} for calibration; building routes", flush=True)
    routes = make_routes(["torch-fp32"] + [r for r in args.routes if r != "torch-fp32"], model, calib, args.threads)

    feats = {}
    for name, fwd in routes.items():
        t = time.perf_counter()
        feats[name] = features(fwd, images, args.batch)
        print(f"  embedded with {name} in {time.perf_counter() - t:.1f} s", flush=True)
    ref = feats["torch-fp32"]
    ref_nn = neighbours(ref, 10)

    x = images[: args.batch]
    speed: dict[str, list[float]] = {name: [] for name in routes}
    for name, fwd in routes.items():
        fwd(x)  # warm-up
    for r in range(args.rounds):
        for name, fwd in routes.items():
            # One untimed batch first: the previous route's runtime (OpenMP, ONNX Runtime's pool)
            # leaves its threads spinning for a while, which would be charged to this one.
            fwd(x)
            speed[name].append(images_per_second(fwd, x, args.batches))
        print(f"  speed round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in speed.items()), flush=True)

    base = statistics.median(speed["torch-fp32"])
    print(f"\n{'route':22s} {'images/s':>9s} {'x fp32':>7s} {'min cos':>8s} {'mean cos':>9s} {'recall@10':>9s}")
    for name in routes:
        cos = np.einsum("nd,nd->n", feats[name], ref)
        rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbours(feats[name], 10), ref_nn)])
        ips = statistics.median(speed[name])
        print(f"{name:22s} {ips:9.1f} {ips / base:7.2f} {cos.min():8.4f} {cos.mean():9.4f} {rec:9.3f}")


if __name__ == "__main__":
    main()
