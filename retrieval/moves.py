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
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from dinoret.core.errors import UserError
from dinoret.core.files import atomic_write, file_sha256

MANIFEST_KIND = "dinoret-dedup-moves"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def enclosing_root(dest: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> str | None:
    """The first of ``roots`` (indexed folders) that ``dest`` is inside, symlinks resolved; None if none."""
    real = os.path.realpath(dest)
    for root in roots:
        if _inside(real, os.path.realpath(root)):
            return str(root)
    return None


def _move_no_overwrite(src: str, dst: str, follow_symlinks: bool = True) -> None:
    """Move one file; FileExistsError if ``dst`` exists (never replaced)."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=follow_symlinks)
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
    try:
        dest.mkdir(parents=True, exist_ok=True)
        path = _new_manifest_path(dest)
        manifest["manifest"] = str(path)
        _write_manifest(path, manifest)  # written before any file moves: a crash is always undoable
    except OSError as e:
        raise UserError(f"cannot write the move manifest in {dest}: {e.strerror or e}") from None
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
    try:
        _write_manifest(path, manifest)
    except OSError:
        pass  # the manifest written before the moves already lets --undo restore every file
    return manifest


def _entry_problem(entry) -> str | None:
    """What is wrong with the types of one manifest entry, or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    for key in ("src", "dst", "status"):
        if not isinstance(entry.get(key), str) or not entry[key] or "\0" in entry[key]:
            return f"'{key}' must be a non-empty string"
    sha = entry.get("sha256", ...)
    if sha is ...:
        return "has no 'sha256'"
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        return "'sha256' must be 64 hex digits or null"
    return None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_paths(manifest: dict, folder: str, path) -> None:
    """Refuse a manifest whose entries could move a file from or to anywhere but where dinoret
    put it: every destination inside the manifest's own folder (symlinked folders resolved),
    written without ``..``, and every source the same relative path under one common root."""
    roots = set()
    for n, entry in enumerate(manifest["moves"], 1):
        src, dst = entry["src"], entry["dst"]
        for p in (src, dst):
            if not os.path.isabs(p) or os.path.normpath(p) != p:
                raise UserError(f"manifest {path}: entry {n}: {p!r} is not a plain absolute path: refusing the manifest")
        parent = os.path.realpath(os.path.dirname(dst))
        if not _inside(parent, folder) or os.path.basename(dst) in ("", ".", ".."):
            raise UserError(f"manifest {path}: entry {n}: {dst} is outside the manifest's folder {folder}: "
                            "refusing the manifest")
        rel = os.path.join(os.path.relpath(parent, folder), os.path.basename(dst))
        rel = os.path.normpath(rel)
        if not src.endswith(os.sep + rel):
            raise UserError(f"manifest {path}: entry {n}: {src} is not where {dst} was moved from: refusing the manifest")
        roots.add(src[: -len(rel)])
    if len(roots) > 1:
        raise UserError(f"manifest {path}: its files come from {len(roots)} different folders: refusing the manifest")


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest at ``path``, checked: UserError (one line) if it is not one dinoret wrote,
    or if it names a destination outside its own folder or a source that does not match it."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"cannot read manifest {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise UserError(f"{path} is not a dinoret dedup move manifest")
    if not isinstance(manifest.get("moves"), list):
        raise UserError(f"manifest {path}: 'moves' must be a list")
    for n, entry in enumerate(manifest["moves"], 1):
        problem = _entry_problem(entry)
        if problem:
            raise UserError(f"manifest {path}: entry {n} {problem}")
    _check_paths(manifest, os.path.realpath(os.path.dirname(os.path.abspath(path))), path)
    return manifest


def _restore(src: str, dst: str, sha: str) -> str | None:
    """Move ``dst`` back to ``src`` if it is a regular file (not a symlink) with this sha256;
    returns why not, or None once it is back."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return f"{dst}: missing"
    if not stat.S_ISREG(st.st_mode):
        return f"{dst}: not a regular file (a symlink?); left alone"
    if file_sha256(dst) != sha:
        return f"{dst}: changed since it was moved (sha256 differs); left in place"
    if os.path.lexists(src):
        return f"{src}: something is there again; {dst} left in place"
    _move_no_overwrite(dst, src, follow_symlinks=False)
    back = os.lstat(src)
    if (back.st_dev, back.st_ino) != (st.st_dev, st.st_ino) and file_sha256(src) != sha:
        # Swapped between the check and the move: undo the move of whatever that was.
        _move_no_overwrite(src, dst, follow_symlinks=False)
        return f"{dst}: replaced while it was being restored; left in place"
    return None


def undo_moves(path: str | os.PathLike, progress: bool = False) -> dict:
    """Move every file of the manifest back, after checking its sha256; returns counts and the
    problems (a file changed or missing, or its original place taken again).

    Raises UserError, before anything moves, if the manifest is malformed or names a place
    outside its own folder (see ``read_manifest``)."""
    manifest = read_manifest(path)
    restored, already, problems = 0, 0, []
    for entry in tqdm(manifest["moves"], desc="restoring", unit="file", disable=not progress):
        if entry["sha256"] is None or entry["status"].startswith("skipped"):
            continue
        src, dst, sha = entry["src"], entry["dst"], entry["sha256"]
        try:
            if os.path.lexists(dst):
                problem = _restore(src, dst, sha)
                if problem is None:
                    entry["status"] = "restored"
                    restored += 1
                else:
                    problems.append(problem)
            elif os.path.isfile(src) and not os.path.islink(src) and file_sha256(src) == sha:
                entry["status"] = "restored"  # never moved (a crash before its turn) or already back
                already += 1
            else:
                problems.append(f"{dst}: missing or changed since it was moved (sha256 differs)")
        except FileExistsError:
            problems.append(f"{src}: something is there again; {dst} left in place")
        except OSError as e:
            problems.append(f"{dst}: not restored: {e.strerror or e}")
    manifest["undone"] = dt.datetime.now().isoformat(timespec="seconds")
    try:
        _write_manifest(Path(path), manifest)
    except OSError as e:
        problems.append(f"{path}: could not record the undo in the manifest: {e.strerror or e}")
    return {"restored": restored, "already_in_place": already, "problems": problems}
