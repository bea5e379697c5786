"""Text from the disk (file names above all) made safe to print on a terminal.

A file may be named ``"a\\nb.jpg"`` or carry terminal escape sequences or right-to-left
overrides; printed raw it breaks a table into two rows or rewrites the screen. Every path the
CLI prints goes through :func:`shown`.
"""
from __future__ import annotations

import os
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_KEEP = {"\u200c", "\u200d"}  # zero-width (non-)joiners: parts of emoji and of some scripts
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: str | os.PathLike) -> str:
    """``text`` on one line, control and format characters and undecodable bytes written as
    backslash escapes (``\\n``, ``\\x1b``, ``\\u202e``, ``\\xff``); everything else unchanged."""
    s = os.fspath(text)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if s.isprintable():
        return s
    return "".join(_escape(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES and ch not in _KEEP else ch
                   for ch in s)
