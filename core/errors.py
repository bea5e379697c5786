"""The one error type a user sees as a one-line message (never a traceback).

It lives in ``trainer`` because that is the bottom of the dependency chain, so every
layer can raise it; the CLI and the web UI turn it into a message and an exit code.
"""


class UserError(Exception):
    """A problem the user can fix: bad argument, missing index, missing weights. The one base
    class of the errors the library raises (``dinoret.Error``); the CLI prints it as one line.

    >>> try:
    ...     dinoret.open("no/such/index")
    ... except dinoret.Error as e:
    ...     print(str(e).split(":")[0])
    no index at ...
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
