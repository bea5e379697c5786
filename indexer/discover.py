"""Finding the image files under some paths: by content (magic bytes), not by file name.

The walk is depth-first with each folder's entries sorted by name, so the order is the
same on every run. Directories are identified by (device, inode): a directory reached
twice (symlinks) is walked once, and a symlink back to an ancestor is reported as a loop.
A file reached through two paths (symlink, hard link) is yielded once, under the first.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dinoret.indexer.decode import sniff_file

# Only used to decide whether a file that does NOT sniff as an image is worth reporting.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

OnSkip = Callable[[Path, str], None]
Unchanged = Callable[[Path, os.stat_result], bool]


def _utf8_safe(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes in the name became surrogates
        return False


def _stat_reason(e: OSError, path: Path) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.ENOENT:
        return "broken symlink" if os.path.islink(path) else "not found"
    return f"unreadable: {e.strerror or e}"


def _looks_like_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _sniff(path: Path) -> tuple[str | None, str | None]:
    """(format, None) for an image, (None, reason) for a file that cannot be read."""
    try:
        return sniff_file(path), None
    except OSError as e:
        return None, _stat_reason(e, path)


class _Walker:
    def __init__(self, exclude: Iterable[str | os.PathLike], on_skip: OnSkip | None,
                 unchanged: Unchanged | None = None) -> None:
        self.on_skip = on_skip or (lambda path, reason: None)
        self.unchanged = unchanged
        self.excluded: set[tuple[int, int]] = set()
        for p in exclude:
            try:
                st = os.stat(p)
                self.excluded.add((st.st_dev, st.st_ino))
            except OSError:
                pass  # an exclude that does not exist excludes nothing
        self.seen_dirs: set[tuple[int, int]] = set()
        self.seen_files: set[tuple[int, int]] = set()

    def file(self, path: Path, st: os.stat_result) -> Iterator[Path]:
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or key in self.seen_files:
            return  # FIFOs, sockets, devices (opening a FIFO would block), or already yielded
        if self.unchanged is not None and self.unchanged(path, st):
            self.seen_files.add(key)  # an image the index already holds, as it was: not opened
            yield path
            return
        fmt, reason = _sniff(path)
        named_like_image = _looks_like_image_name(path)
        if reason is not None:
            if named_like_image:
                self.on_skip(path, reason)
            return
        if fmt is None:
            if named_like_image:
                self.on_skip(path, "empty file" if st.st_size == 0 else "not an image")
            return
        if not _utf8_safe(str(path)):
            self.on_skip(path, "non-UTF-8 file name")
            return
        self.seen_files.add(key)
        yield path

    def directory(self, path: Path, st: os.stat_result, ancestors: frozenset) -> Iterator[Path]:
        key = (st.st_dev, st.st_ino)
        if key in self.excluded:
            return
        if key in ancestors:
            self.on_skip(path, "symlink loop")
            return
        if key in self.seen_dirs:
            return
        self.seen_dirs.add(key)
        if not _utf8_safe(path.name):
            self.on_skip(path, "non-UTF-8 file name")
            return
        try:
            with os.scandir(path) as it:
                names = sorted(entry.name for entry in it)
        except OSError as e:
            self.on_skip(path, _stat_reason(e, path))
            return
        inner = ancestors | {key}
        for name in names:
            yield from self.entry(path / name, inner)

    def entry(self, path: Path, ancestors: frozenset = frozenset()) -> Iterator[Path]:
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as e:
            self.on_skip(path, _stat_reason(e, path))
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.directory(path, st, ancestors)
        else:
            yield from self.file(path, st)


def find_images(
    paths: Iterable[str | os.PathLike],
    exclude: Iterable[str | os.PathLike] = (),
    on_skip: OnSkip | None = None,
    unchanged: Unchanged | None = None,
) -> Iterator[Path]:
    """Absolute paths of the image files under ``paths`` (files or folders, recursively).

    A file is an image when its first bytes say so (``sniff_format``), whatever its name.
    Everything under ``exclude`` (the index directory) is left out. Files that cannot be
    used are reported through ``on_skip(path, reason)``, never raised: unreadable folders,
    broken symlinks, symlink loops, non-UTF-8 names, and files named like images that are
    empty, unreadable or not images. Files with other names that are not images are ignored.
    ``unchanged(path, stat)``: True for a file already known to be an image that has not
    changed since (an index's record says so); it is yielded without being opened.
    """
    walker = _Walker(exclude, on_skip, unchanged)
    for p in sorted(Path(os.path.abspath(p)) for p in paths):
        yield from walker.entry(p)
