"""``torchrun --nproc_per_node=2 -m dinoret index`` on gloo: the index one process would build,
incremental re-runs, and a kill -9 of either rank followed by a re-run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dinoret.api.handle import Index
from dinoret.core.errors import NotFound, UserError
from dinoret.core.models import build_model
from dinoret.core.weights import save_backbone
from dinoret.indexer.decode import VANISHED
from dinoret.indexer.distributed_build import _check_visible, _load_embedder, _Work
from dinoret.indexer.embed import Embedder
from dinoret.indexer.file_dataset import FileItem
from dinoret.indexer.preprocess import Preprocess
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.indexer.meta import MetaStore
from dinoret.indexer.vectors import list_chunks
from dinoret.retrieval.index import open_index
from tests.conftest import REPO, make_image
from tests.test_index_crash import _check_exactly_once

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="finds the ranks' processes through /proc")


def _torchrun(photos: Path, idx: Path, weights: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dinoret", "index", str(photos), "--index", str(idx), "--weights", str(weights),
           "--device", "cpu", "--workers", "0", "-q", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # Its own process group, so a hang is ended together with the ranks torchrun started.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return output


def _run(photos: Path, idx: Path, weights: Path, *extra: str) -> str:
    proc = _torchrun(photos, idx, weights, *extra)
    output = _finish(proc)
    assert proc.returncode == 0, output[-3000:]
    return output


def _same_index(one: Path, two: Path, queries: list[Path]) -> None:
    """Same paths, same vectors within float16 rounding, same ids, same answers to queries."""
    a, b = open_index(one), open_index(two)
    try:
        ra = sorted(a.records(a.ids()), key=lambda r: r.path)
        rb = sorted(b.records(b.ids()), key=lambda r: r.path)
        assert [r.path for r in ra] == [r.path for r in rb]
        # Rank 0 commits every step's results in the order one process would: the ids agree too.
        assert [r.id for r in ra] == [r.id for r in rb]
        np.testing.assert_allclose(a.vectors([r.id for r in ra]), b.vectors([r.id for r in rb]), atol=2e-3)
        assert a.skipped() == b.skipped()
        hits_a, hits_b = Index(a).search(queries, k=5), Index(b).search(queries, k=5)
        assert [[h.path for h in q] for q in hits_a] == [[h.path for h in q] for q in hits_b]
    finally:
        a.close()
        b.close()


def test_two_ranks_build_the_index_one_process_builds(image_dir, tiny_weights, tmp_path):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    one, two = tmp_path / "one", tmp_path / "two"
    opts = BuildOptions(weights=str(tiny_weights), device="cpu", workers=0, batch_size=2, commit_every=3,
                        progress=False)
    build_index([image_dir], one, opts)
    out = _run(image_dir, two, tiny_weights, "--batch-size", "2", "--commit-every", "3")
    assert out.count("indexed 12, unchanged 0, removed 0, skipped 1") == 1, out  # rank 0 alone prints it
    queries = [image_dir / "img00.jpg", image_dir / "sub" / "b.png"]
    _same_index(one, two, queries)

    # Incremental: a changed file, a touched one (same bytes: not embedded), a removed one, a new one.
    make_image(image_dir / "img03.jpg", seed=300)
    os.utime(image_dir / "img05.jpg", (1e9, 1e9))
    (image_dir / "img07.jpg").unlink()
    make_image(image_dir / "sub" / "new.jpg", seed=301)
    build_index([image_dir], one, opts)
    out = _run(image_dir, two, tiny_weights, "--batch-size", "2", "--commit-every", "3")
    assert "indexed 2, unchanged 10, removed 1, skipped 1" in out, out
    _same_index(one, two, queries)

    # Refused by rank 0 before any file is read: every rank stops with the message, none hangs.
    proc = _torchrun(image_dir, two, tiny_weights, "--model", "dinov2_vitb14")
    out = _finish(proc, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], out[-3000:]  # rank 0's, word for word
    assert errors[0].startswith("error: the index was built with tiny, not dinov2_vitb14")


def _work(weights: Path, identity: dict, stat: tuple[int, float]) -> _Work:
    return _Work(roots=[], paths=[], known={}, total=0, batch_size=1, identity=identity, weights_path=str(weights),
                 weights_sha256=identity["weights_sha256"], weights_stat=stat)


def test_a_rank_loads_the_weights_rank_0_uses_or_says_why_not(tiny_weights, tmp_path):
    emb = Embedder.load(None, str(tiny_weights), Preprocess(), "cpu")
    st = tiny_weights.stat()
    same = _load_embedder(_work(tiny_weights, emb.identity(), (st.st_size, st.st_mtime)), "cpu")
    assert same.identity() == emb.identity()
    # A copy with another mtime (another machine) is hashed and accepted for its sha256.
    copy = tmp_path / "copy.pth"
    copy.write_bytes(tiny_weights.read_bytes())
    assert _load_embedder(_work(copy, emb.identity(), (st.st_size, st.st_mtime)), "cpu").identity() == emb.identity()
    # Other bytes at that path are refused, whatever rank 0's stat says.
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    save_backbone(other, build_model("dinov2_vits14", embed_dim=64, depth=2, num_heads=2, img_size=224), name="tiny")
    st_other = other.stat()
    with pytest.raises(UserError, match="do not match the index"):
        _load_embedder(_work(other, emb.identity(), (st_other.st_size, st_other.st_mtime + 1)), "cpu")
    with pytest.raises(NotFound, match="every machine needs it at the same path"):
        _load_embedder(_work(tmp_path / "gone.pth", emb.identity(), (0, 0.0)), "cpu")


def _rank_pid(agent: int, rank: int) -> int | None:
    """The process torchrun (pid ``agent``) started for ``rank``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            if f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def _committed_images(idx: Path) -> int:
    meta = MetaStore(idx / "meta.lmdb")
    try:
        return meta.counters()["next_id"]
    finally:
        meta.close()


def _kill_rank_mid_run(photos: Path, idx: Path, weights: Path, victim: int) -> int:
    """Start a 2-rank run, kill -9 rank ``victim`` once two more commits happened; returns the
    images committed when the job is over (it must fail as a whole)."""
    before = len(list_chunks(idx / "vectors"))
    proc = _torchrun(photos, idx, weights, "--batch-size", "1", "--commit-every", "1")
    deadline, pid = time.monotonic() + 150, None
    while proc.poll() is None and time.monotonic() < deadline:
        pid = pid or _rank_pid(proc.pid, victim)
        if pid and len(list_chunks(idx / "vectors")) >= before + 2:
            break
        time.sleep(0.005)
    assert pid is not None and proc.poll() is None, "the run finished before it could be killed"
    os.kill(pid, signal.SIGKILL)
    output = _finish(proc)
    assert proc.returncode != 0, output[-3000:]  # one dead rank fails the whole job
    return _committed_images(idx)


@pytest.mark.slow
def test_kill_9_of_any_rank_fails_the_job_and_a_rerun_finishes_it(tmp_path, vits14_weights):
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    n = 16
    for i in range(n):
        make_image(photos / f"p{i:02d}.jpg", seed=i, size=(160, 120))
    # ViT-S/14 on one thread per rank: slow enough to be cut between commits (one per step).
    first = _kill_rank_mid_run(photos, idx, vits14_weights, victim=1)
    assert 0 < first < n
    # The next run resumes where the commits stopped; this time rank 0 (the writer) dies.
    second = _kill_rank_mid_run(photos, idx, vits14_weights, victim=0)
    assert first < second < n
    summary = build_index([photos], idx, BuildOptions(weights=str(vits14_weights), device="cpu", workers=0,
                                                      progress=False))
    assert (summary.indexed, summary.unchanged, len(summary.skipped)) == (n - second, second, 0)
    _check_exactly_once(idx, photos)


def test_a_file_only_rank_0_sees_stops_the_run_instead_of_being_skipped(tmp_path):
    seen = make_image(tmp_path / "a.jpg", seed=0)
    gone = tmp_path / "gone.jpg"
    _check_visible([(1, FileItem(str(gone), reason=VANISHED), None), (2, FileItem(str(seen), reason=VANISHED), None)],
                   world=2)  # really vanished (rank 1), or read by rank 0 itself: recorded as skipped
    with pytest.raises(UserError, match=f"rank 1 cannot find {seen}, which rank 0 sees"):
        _check_visible([(3, FileItem(str(seen), reason=VANISHED), None)], world=2)
