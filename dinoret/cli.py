"""The ``dinoret`` command: one click group; each subcommand is a module in ``dinoret.commands``.

Subcommand modules import their heavy dependencies (torch, faiss) inside the command
body so that ``dinoret --help`` stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

import click

import dinoret.commands
from dinoret import __version__
from dinoret.console import shown
from dinoret.core.errors import UserError


class DinoretGroup(click.Group):
    """Finds subcommands in ``dinoret.commands`` and turns user errors into one-line messages."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [m.name for m in pkgutil.iter_modules(dinoret.commands.__path__) if not m.name.startswith("_")]
        return sorted(n.replace("_", "-") for n in names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.list_commands(ctx):
            return None
        module = importlib.import_module(f"dinoret.commands.{name.replace('-', '_')}")
        return module.command

    def _flags_hint(self, ctx: click.Context, params: tuple[str, ...]) -> str:
        """`` (see --weights)``: the options of the running subcommand that set the parameters a
        library error names (library messages never name flags themselves)."""
        cmd = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        if cmd is None or not params:
            return ""
        # A group's (dinoret curate) own subcommand is gone by now: its subcommands' options stand in.
        options = [p for c in [cmd, *getattr(cmd, "commands", {}).values()] for p in c.params
                   if isinstance(p, click.Option)]
        flags = list(dict.fromkeys(next((o for o in p.opts if o.startswith("--")), p.opts[0])
                                   for name in params for p in options if p.name == name))
        return f" (see {', '.join(flags)})" if flags else ""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {shown(str(e))}{self._flags_hint(ctx, e.params)}", err=True)
            sys.exit(e.exit_code)
        except click.UsageError as e:
            # click's own usage errors (a missing file, a bad value) are one line like every other.
            where = e.ctx.command_path if e.ctx is not None else "dinoret"
            click.echo(f"error: {shown(e.format_message())} (see `{where} --help`)", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=DinoretGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dinoret")
def main() -> None:
    """Image search and dataset hygiene on DINOv2.

    \b
    Examples:
      dinoret index ./photos                 # embed a collection into ./.dinoret
      dinoret query img.jpg -k 5             # the most similar indexed photos
      dinoret dedup --report dups.html       # near-duplicate groups
      dinoret serve                          # browser UI on http://127.0.0.1:8080

    The index directory is ./.dinoret unless --index DIR or DINORET_INDEX says otherwise.
    """
