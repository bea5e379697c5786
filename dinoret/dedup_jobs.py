"""The six jobs of ``dinoret dedup`` and the flags each one takes, as one table.

A job is chosen by the flag that names it (``--undo``, ``--list``, ``--from-report``,
``--against``; none: a search of the index with itself); moving (``--move-to``) goes with the
three that produce a report. A flag given on the command line that the chosen job does not
use is refused, never silently ignored. Values that come from the environment
(``DINORET_INDEX``) or defaults are not "given".
"""
from __future__ import annotations

import click
from click.core import ParameterSource

from dinoret.core.errors import UserError

SEARCH = "search"  # the default job: no selector flag
_COMMON = {"index_dir", "quiet"}
_REPORT = {"report_path", "fmt"}
_MOVE = {"move_to", "dry_run", "allow_inside"}

# job (the parameter that selects it) -> the parameters it takes
JOBS: dict[str, set[str]] = {
    "undo": {"quiet"},
    "list_only": {"index_dir", "quiet"},
    "from_report": _COMMON | _REPORT | _MOVE,
    "against": _COMMON | _REPORT | _MOVE | {"threshold", "method", "weights", "device"},
    SEARCH: _COMMON | _REPORT | _MOVE | {"threshold", "k", "keep", "split", "method", "device"},
}
# parameter -> the parameter it is meaningless without, and why
NEEDS = {
    "dry_run": ("move_to", "without it nothing moves anyway"),
    "allow_inside": ("move_to", "it allows a move target inside the indexed folders"),
}
_SEARCH_NAME = "a search of the index (no --undo, --list, --from-report or --against)"


def _flag(ctx: click.Context, name: str) -> str:
    param = next(p for p in ctx.command.params if p.name == name)
    opts = [*param.opts, *param.secondary_opts]
    return "/".join(opts) if param.secondary_opts else max(opts, key=len)


def check_flags(ctx: click.Context) -> str:
    """The job the command line asks for; UserError (one line) for flags that do not go together."""
    given = [p.name for p in ctx.command.params
             if p.name and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    selectors = [name for name in given if name in JOBS]
    if len(selectors) > 1:
        flags = " and ".join(_flag(ctx, s) for s in selectors)
        raise UserError(f"{flags} are different jobs of dinoret dedup: one job at a time")
    job = selectors[0] if selectors else SEARCH
    where = _SEARCH_NAME if job == SEARCH else _flag(ctx, job)
    for name in given:
        if name != job and name not in JOBS[job]:
            users = [_flag(ctx, j) for j, takes in JOBS.items() if name in takes and j != SEARCH]
            hint = f" (it is for {' or '.join(users)})" if users and job == SEARCH else ""
            raise UserError(f"{_flag(ctx, name)} does not go with {where}{hint}")
    for name in given:
        if name in NEEDS and NEEDS[name][0] not in given:
            other, why = NEEDS[name]
            raise UserError(f"{_flag(ctx, name)} goes with {_flag(ctx, other)} ({why})")
    return job
