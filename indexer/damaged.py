"""Turning a damaged or unreadable index directory into one line for the user.

A ``catalog.db`` that is not SQLite, a ``meta.lmdb`` that is not LMDB, a vector chunk gone
missing: the libraries raise their own errors deep inside a read. Wrapped in
:func:`index_errors`, they become a ``UserError`` naming the index and what to do.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import lmdb
from sqlalchemy.exc import DatabaseError

from dinoret.core.errors import IndexUnavailable


@contextlib.contextmanager
def index_errors(root: Path) -> Iterator[None]:
    """Re-raise SQLite, LMDB and file-system failures inside the block as one-line
    ``IndexUnavailable`` errors (the web UI answers them with a 503, not a 500)."""
    try:
        yield
    except DatabaseError as e:
        raise IndexUnavailable(f"cannot use the catalog of the index at {root} ({_first_line(e.orig or e)}): "
                               f"is it damaged? {_REBUILD}") from None
    except lmdb.Error as e:
        raise IndexUnavailable(f"cannot use the metadata of the index at {root} ({_first_line(e)}): "
                               f"is it damaged? {_REBUILD}") from None
    except OSError as e:  # a full disk, a file where a folder belongs, a permission taken away
        raise IndexUnavailable(f"cannot use the index at {root}: {e.strerror or _first_line(e)}"
                               + (f": {e.filename}" if e.filename else "")) from None


_REBUILD = "Rebuild it (`dinoret index` into a new index directory)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
