"""One-shot query speed: a fresh ``dinoret query img.jpg`` process, imports included.

Builds (once, kept with ``--work``) an index of the 56 UKBench photos of
``../shared/data/ukbench_first56`` with a ViT-S/14 of random weights saved as a bare
state dict in the official key layout (what ``dinoret_vits14_pretrain.pth`` holds), then
times ``--runs`` fresh processes of

    python -X importtime? -c <launcher> query PHOTO --index IDX -k 5

where the launcher makes the checkout under test the ``dinoret`` package (its setup.cfg
``package_dir`` mapping, as the editable install does) and runs ``dinoret.cli``. With
``--repo-before PATH`` an older checkout is timed too, alternately with this one in the
same rounds (the fair way on a machine shared with other jobs), and the same index serves
both. Reported: median and min wall time per checkout, the bare Python start for
reference, the load average, the heaviest imports of one run (``-X importtime``, each
package's own modules), where one run spends its time (cProfile, top functions), and
loading the index's model alone in processes that have imported torch already (less
noisy than whole runs on a shared machine).

    python benchmarks/query_oneshot.py --runs 10
    git worktree add --detach /tmp/before HEAD~3
    python benchmarks/query_oneshot.py --repo-before /tmp/before --runs 10 --work /tmp/q1
"""
from __future__ import annotations

import argparse
import configparser
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DINORET_SHARED_DATA", REPO.parent / "shared" / "data"))

# Makes REPO (argv[1]) the `dinoret` package, whatever the environment's install points at
# (argv[2]: its package_dir mapping); the remaining arguments are left in sys.argv[1:].
FINDER = r"""
import sys
from importlib.util import spec_from_file_location
repo, sys.argv = sys.argv[1], ["dinoret", *sys.argv[2:]]
mapping = dict(m.split("=") for m in sys.argv.pop(1).split(","))
class Finder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in mapping:
            root = repo + "/" + mapping[name]
            return spec_from_file_location(name, root + "/__init__.py", submodule_search_locations=[root])
        return None
sys.meta_path.insert(0, Finder)
"""
# ... then runs the CLI with the remaining arguments. The same launcher runs every checkout.
LAUNCHER = FINDER + "from dinoret.cli import main\nmain()\n"
# ... or times loading the index's model in-process, imports done first (argv: INDEX N):
# what the checkout does between "the process has torch" and "the model can embed".
LOAD_TIMER = FINDER + r"""
import statistics, time
import torch
from dinoret.indexer.catalog import open_catalog
from dinoret.indexer.index_embedder import load_index_embedder
from dinoret.indexer.layout import IndexPaths
engine = open_catalog(IndexPaths.of(sys.argv[1]).catalog)
load_index_embedder(engine, device="cpu")  # the first: warms the file cache and lazy imports
times = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    load_index_embedder(engine, device="cpu")
    times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def package_dirs(repo: Path) -> str:
    """``dinoret=dinoret,dinoret.core=core,...`` from the checkout's setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    pairs = [line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines()]
    return ",".join(f"{k.strip()}={v.strip()}" for k, v in pairs)


def command(repo: Path, *args: str, importtime: bool = False) -> list[str]:
    return [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", LAUNCHER, str(repo),
            package_dirs(repo), *args]


def child_env(pycache: Path | None) -> dict:
    """The environment of a timed process: Python's bytecode cached under ``pycache`` (what a
    pip install gives: it compiles every module once), or, with None, no bytecode written or
    read from a cache (``PYTHONDONTWRITEBYTECODE=1`` over a tree without .pyc files, as this
    machine's environments are: every module is compiled from source in every process)."""
    env = dict(os.environ)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


ENV: dict = dict(os.environ)  # the environment timed processes get (set per mode in main)


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    return time.perf_counter() - t0, r


def build(work: Path) -> tuple[Path, Path]:
    """(index, a query photo): the 56 UKBench photos indexed with a random ViT-S/14."""
    import torch

    from dinoret.core.models import build_model

    photos = SHARED / "ukbench_first56" / "images"
    if not photos.is_dir():
        raise SystemExit(f"real photos not found at {photos} (set DINORET_SHARED_DATA)")
    index = work / "index"
    if not index.exists():
        weights = work / "dinov2_vits14_pretrain.pth"
        torch.manual_seed(0)
        torch.save(build_model("dinov2_vits14").state_dict(), weights)
        t, r = timed(command(REPO, "index", str(photos), "--index", str(index), "--weights", str(weights),
                             "--model", "dinov2_vits14", "-q"))
        if r.returncode:
            raise SystemExit(f"index build failed:\n{r.stdout}{r.stderr}")
        print(f"built the index of {photos} in {t:.1f} s: {r.stdout.strip().splitlines()[0]}")
    return index, sorted(photos.glob("*.jpg"))[5]


def importtime_top(cmd: list[str], n: int) -> tuple[float, list[tuple[float, str]]]:
    """(all imports, the ``n`` packages whose own modules took longest to import) of one run, in s:
    each module's self time counted for its top-level package (torch, faiss, dinoret, ...)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    total: dict[str, float] = {}
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        root = name.strip().split(".")[0]
        total[root] = total.get(root, 0.0) + int(own) / 1e6
    return sum(total.values()), sorted(((t, name) for name, t in total.items()), reverse=True)[:n]


# Frames left out of the profile listing: the launcher, click's dispatch and the import machinery
# (each would head the list with the whole run's time and say nothing).
SKIPPED = r"^(?!.*(launcher|site-packages/click/|frozen importlib|built-in method builtins\.exec|__import__))"


def profile(repo: Path, args: list[str], n: int) -> str:
    """cProfile of one query run in a fresh process (imports included), top ``n`` by cumulative time."""
    code = ("import cProfile, pstats, io, sys, runpy\n"
            "pr = cProfile.Profile(); pr.enable()\n"
            "try:\n"
            f"    exec(compile({LAUNCHER!r}, 'launcher', 'exec'), {{'__name__': '__main__'}})\n"
            "except SystemExit:\n"
            "    pass\n"
            "pr.disable(); s = io.StringIO()\n"
            f"pstats.Stats(pr, stream=s).sort_stats('cumulative').print_stats({SKIPPED!r}, {n}); "
            "print(s.getvalue(), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(repo), package_dirs(repo), *args], capture_output=True, text=True,
                       env=ENV)
    lines = r.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start : start + n + 1])


def measure(repos: dict[str, Path], query: list[str], photo: Path, runs: int, top: int, mode: str) -> None:
    """Time ``runs`` fresh query processes of each checkout, alternating; then one run's imports and profile."""
    outputs = {}
    for name, repo in repos.items():  # a first run each: writes the bytecode cache, warms the file cache
        _, r = timed(command(repo, *query))
        if r.returncode:
            raise SystemExit(f"{name} ({repo}) query failed:\n{r.stdout}{r.stderr}")
        outputs[name] = r.stdout
    if len(set(outputs.values())) > 1:
        print("warning: the checkouts print different results:\n" + "\n".join(f"{k}:\n{v}" for k, v in outputs.items()))
    walls: dict[str, list[float]] = {name: [] for name in [*repos, "python -c pass"]}
    loads = [os.getloadavg()[0]]
    for _ in range(runs):
        for name, repo in repos.items():
            walls[name].append(timed(command(repo, *query))[0])
        walls["python -c pass"].append(timed([sys.executable, "-c", "pass"])[0])
        loads.append(os.getloadavg()[0])
    what = "bytecode cached" if mode == "cached" else "no bytecode cache: every module compiled in every process"
    print(f"\n`dinoret query {photo.name} -k 5` on a 56-image index (random ViT-S/14), {what}; "
          f"{runs} fresh processes each, alternating; load average {min(loads):.1f}-{max(loads):.1f}")
    for name, values in walls.items():
        where = f" ({repos[name]})" if name in repos else ""
        print(f"  {name:15s} median {statistics.median(values):.2f} s, min {min(values):.2f} s, "
              f"max {max(values):.2f} s{where}")
    if "before" in walls:
        print(f"  before / this: {statistics.median(walls['before']) / statistics.median(walls['this']):.2f}x "
              f"(medians), {min(walls['before']) / min(walls['this']):.2f}x (mins)")
    for name, repo in repos.items():
        everything, heaviest = importtime_top(command(repo, *query, importtime=True), top)
        print(f"\n{name} ({mode}): imports of one run (-X importtime): {everything:.2f} s in all; "
              "by package (its own modules' time):")
        for t, pkg in heaviest:
            print(f"  {t:6.3f}  {pkg}")
        print(f"\n{name} ({mode}): one run under cProfile (top {top} by cumulative time):")
        print(profile(repo, query, top))


def model_load(repos: dict[str, Path], index: Path, rounds: int, per_process: int = 3) -> None:
    """Loading the index's model (weights checked against the catalog, backbone built, weights
    read), imports excluded: ``rounds`` processes per checkout, alternating."""
    medians: dict[str, list[float]] = {name: [] for name in repos}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, repo in repos.items():
            _, r = timed([sys.executable, "-c", LOAD_TIMER, str(repo), package_dirs(repo), str(index), str(per_process)])
            if r.returncode:
                raise SystemExit(f"{name}: model load timing failed:\n{r.stderr[-2000:]}")
            medians[name].append(float(r.stdout.strip().splitlines()[-1]))
        loads.append(os.getloadavg()[0])
    print(f"\nloading the index's model in a process that has imported torch already ({rounds} processes each, "
          f"median of {per_process} loads in each; load average {min(loads):.1f}-{max(loads):.1f}):")
    for name, values in medians.items():
        print(f"  {name:15s} median {statistics.median(values):.3f} s, min {min(values):.3f} s")
    if "before" in medians:
        print(f"  before / this: {statistics.median(medians['before']) / statistics.median(medians['this']):.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="fresh query processes per checkout")
    ap.add_argument("--repo-before", type=Path, default=None, help="an older checkout, timed alternately with this one")
    ap.add_argument("--work", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("--top", type=int, default=12, help="imports and profile lines shown")
    ap.add_argument("--bytecode", choices=["cached", "none", "both"], default="both",
                    help="cached: .pyc files cached (as after pip install); none: every module compiled in every "
                         "process (PYTHONDONTWRITEBYTECODE=1 with no .pyc, this machine's setting)")
    ap.add_argument("--load-rounds", type=int, default=5, help="processes per checkout timing the model load alone")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="dinoret-query-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; work {work}")
    try:
        index, photo = build(work)
        query = ["query", str(photo), "--index", str(index), "-k", "5"]
        repos = {"this": REPO} | ({"before": args.repo_before.resolve()} if args.repo_before else {})
        modes = ["cached", "none"] if args.bytecode == "both" else [args.bytecode]
        for mode in modes:
            ENV.clear()
            ENV.update(child_env(work / "pycache" if mode == "cached" else None))
            measure(repos, query, photo, args.runs, args.top, mode)
        if args.load_rounds:
            model_load(repos, index, args.load_rounds)
        print(f"\nload average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
