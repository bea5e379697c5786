"""Acting on a dedup report without ever deleting: move files aside, and move them back.

``move_files`` moves each file under a destination folder, keeping its path relative to
the report's common root, and writes a manifest (src, dst, sha256 of every file) *before*
the first move, so ``undo_moves(manifest)`` can restore everything even after a crash half
way. Neither direction overwrites an existing file: the no-overwrite step is a hard link
(which fails if the name exists) followed by removing the old name.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from dinoret.core.errors import UserError
from dinoret.core.files import atomic_write, file_sha256

MANIFEST_KIND = "dinoret-dedup-moves"


def plan_moves(paths: Sequence[str], dest: str | os.PathLike, root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(src, dst) per path: ``dest / path relative to root`` (root: the paths' common folder)."""
    if not paths:
        return []
    paths = [os.path.abspath(p) for p in paths]
    root = os.path.abspath(root) if root else os.path.commonpath([os.path.dirname(p) for p in paths])
    dest = Path(dest).absolute()
    if dest == Path(root):
        raise UserError(f"{dest} is the folder the files are in: move them to another one", param="move_to")
    return [(p, str(dest / os.path.relpath(p, root))) for p in paths]


def _move_no_overwrite(src: str, dst: str) -> None:
    """Move one file; FileExistsError if ``dst`` exists (never replaced)."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        # Another filesystem (or no hard links): copy beside dst, then link the copy into place.
        tmp = dst + ".dinoret-part"
        shutil.copy2(src, tmp)
        try:
            if file_sha256(tmp) != file_sha256(src):
                raise OSError(f"copy of {src} differs from the original")
            os.link(tmp, dst)
        finally:
            os.unlink(tmp)
    os.unlink(src)


def _write_manifest(path: Path, manifest: dict) -> None:
    atomic_write(path, json.dumps(manifest, indent=1))


def _new_manifest_path(dest: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = dest / f"dinoret-moves-{stamp}{'' if n == 0 else f'-{n}'}.json"
        if not path.exists():
            return path
    raise UserError(f"too many manifests in {dest}")


def move_files(plan: list[tuple[str, str]], dest: str | os.PathLike, dry_run: bool = False, report_id: int | None = None,
               progress: bool = False) -> dict:
    """Move each (src, dst) of ``plan``; returns the manifest (with ``"manifest"``: its path,
    None on a dry run). Entries that cannot move are kept with a ``status`` saying why."""
    dest = Path(dest).absolute()
    entries = []
    for src, dst in plan:
        entry = {"src": src, "dst": dst, "sha256": None, "size": None, "status": "planned"}
        if not os.path.isfile(src):
            entry["status"] = "skipped: source missing"
        elif os.path.lexists(dst):
            entry["status"] = "skipped: destination exists"
        else:
            entry["size"] = os.path.getsize(src)
            if not dry_run:
                entry["sha256"] = file_sha256(src)
        entries.append(entry)
    manifest = {"kind": MANIFEST_KIND, "version": 1, "created": dt.datetime.now().isoformat(timespec="seconds"),
                "report_id": report_id, "dest": str(dest), "moves": entries, "manifest": None}
    if dry_run:
        return manifest
    dest.mkdir(parents=True, exist_ok=True)
    path = _new_manifest_path(dest)
    manifest["manifest"] = str(path)
    _write_manifest(path, manifest)  # written before any file moves: a crash is always undoable
    for entry in tqdm(entries, desc="moving", unit="file", disable=not progress):
        if entry["status"] != "planned":
            continue
        try:
            if file_sha256(entry["src"]) != entry["sha256"]:
                entry["status"] = "skipped: changed since planned"
                continue
            _move_no_overwrite(entry["src"], entry["dst"])
            entry["status"] = "moved"
        except FileExistsError:
            entry["status"] = "skipped: destination exists"
        except OSError as e:
            entry["status"] = f"failed: {e.strerror or e}"
    _write_manifest(path, manifest)
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise UserError(f"{path} is not a dinoret dedup move manifest")
    return manifest


def undo_moves(path: str | os.PathLike, progress: bool = False) -> dict:
    """Move every file of the manifest back, after checking its sha256; returns counts and the
    problems (a file changed or missing, or its original place taken again)."""
    manifest = read_manifest(path)
    restored, already, problems = 0, 0, []
    for entry in tqdm(manifest["moves"], desc="restoring", unit="file", disable=not progress):
        if entry["sha256"] is None or entry["status"].startswith("skipped"):
            continue
        src, dst, sha = entry["src"], entry["dst"], entry["sha256"]
        if os.path.isfile(dst) and file_sha256(dst) == sha:
            if os.path.lexists(src):
                problems.append(f"{src}: something is there again; {dst} left in place")
                continue
            _move_no_overwrite(dst, src)
            entry["status"] = "restored"
            restored += 1
        elif os.path.isfile(src) and file_sha256(src) == sha:
            entry["status"] = "restored"  # never moved (a crash before its turn) or already back
            already += 1
        else:
            problems.append(f"{dst}: missing or changed since it was moved (sha256 differs)")
    manifest["undone"] = dt.datetime.now().isoformat(timespec="seconds")
    _write_manifest(Path(path), manifest)
    return {"restored": restored, "already_in_place": already, "problems": problems}
