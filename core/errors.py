"""The one error type a user sees as a one-line message (never a traceback), and its kinds.

It lives in ``core`` because that is the bottom of the dependency chain, so every layer
can raise it. Library messages speak of things (the weights file, the index directory),
never of command-line flags: ``param`` names the Python parameter the problem is about,
and the CLI adds the flag that sets it (``--weights``); the web UI picks an HTTP status
from the kind (:class:`NotFound` 404, :class:`IndexUnavailable` 503, any other 400).
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad argument, missing index, missing weights. The one base
    class of the errors the library raises (``dinoret.Error``); the CLI prints it as one line.

    ``param``: the name of the parameter that the user should change (as the library
    function and the CLI option call it), or a tuple of names; None when no single
    parameter is at fault.

    >>> try:
    ...     dinoret.open("no/such/index")
    ... except dinoret.Error as e:
    ...     print(str(e).split(":")[0])
    no index at ...
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None, param: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())


class NotFound(UserError):
    """Something named by the user does not exist: an index, a file, a report, an image id."""


class IndexUnavailable(UserError):
    """The index on disk cannot answer now (files missing or never completed); not the
    caller's fault, and fixed by running ``dinoret index`` on it again."""
