"""The shared base in core/: one atomic-write helper, one byte-size formatter, one error type;
and the dependency direction of the packages (DESIGN.md)."""
from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from dinoret.core.files import TMP_SUFFIX, atomic_path, atomic_write
from dinoret.core.units import human_size
from tests.conftest import REPO


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write(target, "old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["f.json"]
    atomic_write(target, b"new", durable=False)
    assert target.read_bytes() == b"new"


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "thumb.jpg"
    seen: list[Path] = []
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        with atomic_path(target, durable=False) as tmp:
            seen.append(tmp)
            barrier.wait()  # all four hold their temporary file at once
            tmp.write_bytes(bytes([n]) * 1000)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4 and all(p.name.endswith(TMP_SUFFIX) for p in seen)
    data = target.read_bytes()
    assert len(data) == 1000 and len(set(data)) == 1 and not list(tmp_path.glob("*" + TMP_SUFFIX))


def test_human_size_uses_binary_units():
    assert [human_size(n) for n in (0, 1023, 1536, 20 * 2**20, 3 * 2**30)] == ["0 B", "1023 B", "1.5 KiB", "20.0 MiB", "3.0 GiB"]


# Which of dinoret's packages each may import (DESIGN.md, "Dependencies"). The Python API
# (dinoret/api, ``dinoret.api``) sits between the CLI and web UI above it and the rest below.
ALLOWED = {
    "core": {"core"},
    "trainer": {"core", "trainer"},
    "indexer": {"core", "indexer"},
    "retrieval": {"core", "indexer", "retrieval"},
    "webui": {"api", "core", "indexer", "retrieval", "webui"},
}
API_ALLOWED = {"api", "core", "indexer", "retrieval", "trainer"}


def _dinoret_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "dinoret" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_dependencies_point_one_way():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for imported in _dinoret_imports(path) - allowed:
                if imported in ALLOWED or imported in ("commands", "api"):
                    wrong.append(f"{path.relative_to(REPO)} imports dinoret.{imported}")
    for path in sorted((REPO / "dinoret" / "api").rglob("*.py")):
        for imported in _dinoret_imports(path) - API_ALLOWED:
            if imported in ALLOWED or imported == "commands":
                wrong.append(f"{path.relative_to(REPO)} imports dinoret.{imported}")
    assert not wrong, wrong
    # Nothing below the CLI imports the web UI, and only `dinoret serve` does.
    cli_users = [p.name for p in (REPO / "dinoret").rglob("*.py") if "webui" in _dinoret_imports(p)]
    assert cli_users == ["serve.py"]


def test_library_errors_name_no_command_line_flags():
    """The CLI adds the flag (``UserError.params``); library code is called from Python too."""
    import re

    flagged = []
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    text = " ".join(c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str))
                    if re.search(r"(^|\s|`)--[a-z]", text):
                        flagged.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:80]}")
    assert not flagged, flagged
