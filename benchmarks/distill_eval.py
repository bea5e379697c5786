"""Teacher/student study: does `dinoret distill` give a small ViT most of a bigger ViT's quality,
and more than training the small ViT from scratch for the same wall time?

Arms, each trained with the same compute budget on the images of ../shared/data (all
but the 55 Oxford5k queries; no label used), run side by side with one thread each:

* ``heads``: `dinoret distill` against the teacher run's frozen DINO/iBOT heads;
* ``feature``: `dinoret distill --method feature` (what an official checkpoint allows);
* ``hybrid``: `dinoret distill --method hybrid` (``feature`` plus the student's own DINO loss);
* ``scratch``: `dinoret train` of the same student architecture (``--scratch-config``,
  configs/cpu_small.yaml, with the student's size).

The budget is CPU time (``--cpu-seconds``, the arm's data-loader worker included): on an
idle machine that is wall time, and on a shared one it is what each arm actually got.
The iteration count of each arm is set from its own CPU cost per iteration, measured
first by two short runs (their difference leaves start-up out); the schedules (warm-up,
cosine) keep their shape. Then every backbone (teacher, each arm) is evaluated as
``benchmarks/train_eval.py`` does (UKBench N-S, Oxford leave-one-out kNN; class token,
cosine) and its embedding speed measured (round-robin, one thread).

\b
Examples:
  .venv/bin/python benchmarks/distill_eval.py --teacher runs/teacher --output runs/distill_study --cpu-seconds 230
  .venv/bin/python benchmarks/distill_eval.py --teacher runs/teacher --output runs/distill_study --skip-train
  .venv/bin/python benchmarks/distill_eval.py --teacher runs/teacher --output runs/distill_study --skip-train --speed-only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_eval import evaluate, training_files  # noqa: E402

from dinoret.api.training import load_training_image  # noqa: E402
from dinoret.core.weights import load_backbone  # noqa: E402
from dinoret.trainer.config import largest_crop, make_config, read_config_file  # noqa: E402
from dinoret.trainer.distill import distill, make_distill_config  # noqa: E402
from dinoret.trainer.train import train  # noqa: E402

ARMS = ("heads", "feature", "hybrid", "scratch")


def _arm_config(args, arm: str) -> tuple[list[str], list[str]]:
    """(config files, overrides) of an arm, before its iteration count is set. The scratch arm
    trains the distillation config's student architecture with the scratch config's recipe."""
    if arm == "scratch":
        student = read_config_file(args.config).get("student", {})
        same = [f"student.{k}={student[k]}" for k in ("arch", "embed_dim", "depth", "num_heads", "layerscale") if k in student]
        return [args.scratch_config], same + list(args.scratch_sets)
    return [args.config], [f"distill.method={arm}", *args.sets]


def run_arm(args, arm: str, out: Path, iterations: int | None, stop_after: int | None) -> dict:
    """Train one arm in this process (the parent starts one process per arm)."""
    torch.set_num_threads(1)
    files = training_files(args.data)
    configs, sets = _arm_config(args, arm)
    base = make_config(configs, sets) if arm == "scratch" else make_distill_config(configs, sets)
    if iterations is not None:  # keep the schedules' shape: the run is optim.epochs "epochs" long
        sets.append(f"train.OFFICIAL_EPOCH_LENGTH={max(1, round(iterations / base['optim']['epochs']))}")
    load = partial(load_training_image, draft_size=largest_crop(base))
    if arm == "scratch":
        return train(files, load, out, configs, sets, stop_after=stop_after, progress=False)
    return distill(files, load, out, str(args.teacher), configs, sets, stop_after=stop_after, progress=False)


def _spawn(args, arm: str, out: Path, iterations: int | None, stop_after: int | None) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--teacher", str(args.teacher), "--output", str(args.output), "--data", str(args.data),
           "--config", args.config, "--scratch-config", args.scratch_config, "--_arm", arm, "--_out", str(out)]
    cmd += [a for s in args.sets for a in ("--set", s)] + [a for s in args.scratch_sets for a in ("--scratch-set", s)]
    cmd += ["--_iterations", str(iterations)] if iterations else []
    cmd += ["--_stop-after", str(stop_after)] if stop_after else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=open(out.with_suffix(".log"), "w"), stderr=subprocess.STDOUT)


def _wait(procs: dict[str, subprocess.Popen], what: str, outs: dict[str, Path]) -> dict[str, float]:
    """Wait for every process; CPU seconds of each (user + system, its waited-for children,
    the data-loader worker, included)."""
    cpu = {}
    for arm, p in procs.items():
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            raise SystemExit(f"{what} {arm} failed: see {outs[arm].with_suffix('.log')}")
        cpu[arm] = usage.ru_utime + usage.ru_stime
    return cpu


def _total_iterations(metrics: Path) -> int:
    return next(r["total_iterations"] for r in map(json.loads, metrics.read_text().splitlines()) if r["event"] == "start")


def embed_speed(backbone, seconds: float = 10.0, batch: int = 16) -> float:
    """Images/s of the class-token forward at 224 px, one thread."""
    model = backbone.model.eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - t0)


def embed_speeds(backbones: dict, rounds: int = 5, seconds: float = 3.0) -> dict[str, float]:
    """Median images/s of each backbone over ``rounds`` round-robin rounds, so that the
    machine's load (shared with other jobs) falls on every backbone alike."""
    torch.set_num_threads(1)
    runs = {name: [] for name in backbones}
    for _ in range(rounds):
        for name, b in backbones.items():
            runs[name].append(embed_speed(b, seconds))
    return {name: round(sorted(v)[len(v) // 2], 2) for name, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--teacher", type=Path, required=True, help="a `dinoret train` run folder")
    ap.add_argument("--output", type=Path, default=REPO / "runs" / "distill_study")
    ap.add_argument("--config", default=str(REPO / "configs" / "distill_cpu_small.yaml"))
    ap.add_argument("--scratch-config", default=str(REPO / "configs" / "cpu_small.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="distillation arms")
    ap.add_argument("--scratch-set", dest="scratch_sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--cpu-seconds", type=float, default=230.0, help="CPU-time budget of every arm")
    ap.add_argument("--timing-steps", type=int, default=12,
                    help="iterations the timing runs differ by (4 misjudged the cost by up to 20%%)")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the arms already in --output")
    ap.add_argument("--speed-only", action="store_true", help="with --skip-train: embedding speeds only")
    ap.add_argument("--eval-crops", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--threads", type=int, default=2, help="threads for the evaluation")
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    ap.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_iterations", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_stop-after", dest="_stop_after", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._arm:
        summary = run_arm(args, args._arm, args._out, args._iterations, args._stop_after)
        print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}))
        return

    args.output.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    cpu: dict[str, float] = {}
    iterations: dict[str, int] = {}
    if not args.skip_train:
        short = {arm: args.output / f"timing_{arm}_short" for arm in args.arms}
        long = {arm: args.output / f"timing_{arm}_long" for arm in args.arms}
        procs = {**{("s", a): _spawn(args, a, o, None, 2) for a, o in short.items()},
                 **{("l", a): _spawn(args, a, o, None, 2 + args.timing_steps) for a, o in long.items()}}
        used = _wait(procs, "timing run", {k: (short if k[0] == "s" else long)[k[1]] for k in procs})
        for arm in args.arms:
            per_step = (used[("l", arm)] - used[("s", arm)]) / args.timing_steps
            startup = used[("s", arm)] - 2 * per_step
            iterations[arm] = max(10, int((args.cpu_seconds - startup) / per_step))
            print(f"{arm}: {per_step:.2f} CPU-s/iteration, start-up {startup:.0f} CPU-s -> {iterations[arm]} iterations",
                  flush=True)
        outs = {arm: args.output / arm for arm in args.arms}
        procs = {arm: _spawn(args, arm, outs[arm], iterations[arm], None) for arm in args.arms}
        cpu = {arm: round(v, 1) for arm, v in _wait(procs, "arm", outs).items()}
        for arm in args.arms:
            records = [json.loads(x) for x in (outs[arm] / "metrics.jsonl").read_text().splitlines()]
            start = next(r["time"] for r in records if r["event"] == "start")
            end = next(r["time"] for r in records if r["event"] == "end")
            walls[arm] = round(end - start, 1)

    torch.set_num_threads(args.threads)
    backbones = {"teacher": load_backbone(weights=args.teacher / "teacher_backbone.pth")}
    for arm in args.arms:
        name = "teacher_backbone.pth" if arm == "scratch" else "student_backbone.pth"
        backbones[arm] = load_backbone(weights=args.output / arm / name)
    speed = embed_speeds(backbones)
    ratio = {name: round(speed[name] / speed["teacher"], 2) for name in args.arms}
    if args.speed_only:
        print(json.dumps({"embed_images_per_s_224px_1thread": speed, "speed_vs_teacher": ratio}, indent=2))
        return
    torch.set_num_threads(args.threads)
    results = {f"crop{c}": {name: evaluate(b, args.data, c) for name, b in backbones.items()} for c in args.eval_crops}
    result = {
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "teacher": str(args.teacher),
        "architectures": {name: {k: b.config.to_dict()[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")}
                          for name, b in backbones.items()},
        "embed_images_per_s_224px_1thread": speed,
        "speed_vs_teacher": ratio,
        "budget_cpu_s": args.cpu_seconds,
        "iterations": {arm: _total_iterations(args.output / arm / "metrics.jsonl") for arm in args.arms},
        "train_cpu_s": cpu,
        "train_wall_s": walls,
        "results": results,
    }
    (args.output / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
