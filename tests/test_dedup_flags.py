"""`dinoret dedup` does six jobs through flags: every pair of flags that belong to different jobs
is refused with one line (before the index is even opened), and every pair that goes together
is let through."""
from __future__ import annotations

import itertools

import pytest
from click.testing import CliRunner

from dinoret.cli import main

# The jobs as the README documents them, written out here independently of the code's table.
# Each job is named by the flag that selects it ("search" has none: the default job).
COMMON = {"--index", "-q"}
REPORT = {"--report", "--format"}
MOVE = {"--move-to", "--dry-run", "--allow-inside"}
ACCEPTS = {
    "--undo": {"-q"},
    "--list": {"--index", "-q"},
    "--from-report": COMMON | REPORT | MOVE,
    "--against": COMMON | REPORT | MOVE | {"--threshold", "--method", "--weights", "--device"},
    None: COMMON | REPORT | MOVE | {"--threshold", "-k", "--keep", "--split", "--no-split", "--method", "--device"},
}
NEEDS = {"--dry-run": "--move-to", "--allow-inside": "--move-to"}
SELECTORS = [s for s in ACCEPTS if s is not None]


@pytest.fixture(scope="module")
def values(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    (d / "other").mkdir()
    (d / "m.json").write_text("{}")
    return {
        "--threshold": ["0.9"], "-k": ["5"], "--against": [str(d / "other")], "--report": [str(d / "r.html")],
        "--format": ["csv"], "--keep": ["oldest"], "--split": [], "--no-split": [], "--method": ["exact"],
        "--move-to": [str(d / "dups")], "--dry-run": [], "--allow-inside": [], "--from-report": ["1"], "--list": [],
        "--undo": [str(d / "m.json")], "--weights": [str(d / "w.pth")], "--device": ["cpu"], "-q": [],
        "--index": [str(d / "no-index")],
    }


def _expected_ok(flags: set[str]) -> bool:
    selectors = [f for f in flags if f in SELECTORS]
    if len(selectors) > 1 or {"--split", "--no-split"} <= flags:
        return False
    job = selectors[0] if selectors else None
    if any(f not in ACCEPTS[job] for f in flags - {job}):
        return False
    return all(NEEDS[f] in flags for f in flags if f in NEEDS)


def _run(values, flags):
    args = [a for f in flags for a in (f, *values[f])]
    r = CliRunner().invoke(main, ["dedup", *args])
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    return r


def _refused(r) -> bool:
    """Refused for the flags themselves (not for what happened after: there is no index)."""
    return r.exit_code == 2 and any(s in r.stderr for s in ("does not go with", "goes with", "one job at a time"))


ALL_FLAGS = ["--threshold", "-k", "--against", "--report", "--format", "--keep", "--split", "--no-split", "--method",
             "--move-to", "--dry-run", "--allow-inside", "--from-report", "--list", "--undo", "--weights", "--device",
             "-q", "--index"]


@pytest.mark.parametrize("a, b", list(itertools.combinations(ALL_FLAGS, 2)))
def test_every_pair_of_flags(values, a, b):
    if {a, b} == {"--split", "--no-split"}:
        pytest.skip("the two spellings of one switch: click keeps the last")
    r = _run(values, [a, b])
    if _expected_ok({a, b}):
        assert not _refused(r), (a, b, r.stderr)  # it fails later, for want of an index or manifest
        return
    assert _refused(r), (a, b, r.output)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (a, b, r.stderr)
    assert any(f.replace("--no-", "--") in r.stderr.replace("--no-", "--") for f in (a, b)), (a, b, r.stderr)


@pytest.mark.parametrize("flag", ["--weights", "--dry-run", "--allow-inside"])
def test_a_flag_alone_that_needs_another_is_refused(values, flag):
    r = _run(values, [flag])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and flag in r.stderr, r.output


@pytest.mark.parametrize("flags", [["--undo", "--move-to"], ["--list", "--report"], ["--from-report", "--against"],
                                   ["--dry-run"], ["--undo", "--list"], ["--against", "-k"], ["--list", "--index", "-k"],
                                   ["--from-report", "--threshold"], ["--undo", "--index"]])
def test_the_conflicts_named_in_the_issue(values, flags):
    r = _run(values, flags)
    assert r.exit_code == 2 and _refused(r) and r.stderr.count("\n") == 1, (flags, r.output)


def test_index_from_the_environment_is_not_a_flag_given(values, monkeypatch):
    monkeypatch.setenv("DINORET_INDEX", values["--index"][0])
    r = _run(values, ["--undo"])
    assert r.exit_code == 2 and not _refused(r) and "manifest" in r.stderr, r.output
