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

from dinoret.core.errors import UserError


@contextlib.contextmanager
def index_errors(root: Path) -> Iterator[None]:
    """Re-raise SQLite and LMDB failures inside the block as a one-line ``UserError``."""
    try:
        yield
    except DatabaseError as e:
        raise UserError(f"cannot use the catalog of the index at {root} ({_first_line(e.orig or e)}): "
                        "is it damaged? Rebuild it with `dinoret index` into a new --index DIR") from None
    except lmdb.Error as e:
        raise UserError(f"cannot use the metadata of the index at {root} ({_first_line(e)}): "
                        "is it damaged? Rebuild it with `dinoret index` into a new --index DIR") from None
    except OSError as e:  # a full disk, a file where a folder belongs, a permission taken away
        raise UserError(f"cannot use the index at {root}: {e.strerror or _first_line(e)}"
                        + (f": {e.filename}" if e.filename else "")) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
