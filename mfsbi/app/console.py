"""The terminal side of the CLI: where output goes, and how bad input ends a command.

Every refusal is one line on stderr and a non-zero exit (2 for bad input, 1 for a failure), also
for a command line that click cannot parse (no such option, a value of the wrong type). Tables
keep names whole (:func:`name_column`, :func:`print_table`); ``--json`` output is one document on
stdout (:func:`print_json`, :func:`stdout_to_stderr`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperCommand

from mfsbi.app.config_file import one_line

__all__ = ["PIPE_WIDTH", "USAGE_ERROR", "Choices", "OneLineCommand", "console", "errors", "fail", "name_column",
           "print_json", "print_table", "stdout_to_stderr", "usage_line"]

# Output that goes to a pipe or a file is as wide as its lines: rich would assume 80 columns (or
# $COLUMNS, a terminal's) and wrap or cut, and `mfsbi tasks | grep NAME` would miss split names.
PIPE_WIDTH = 1000


def _stdout_console() -> Console:
    out = Console(stderr=False)
    if not out.is_terminal:
        out.width = PIPE_WIDTH
    return out


console = _stdout_console()
errors = Console(stderr=True)

# Exit code of bad input: the convention of argparse and click.
USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    # A Text is printed as is: a message quoting user input ("[/x]", ":smile:") is not rich markup.
    errors.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ------------------------------------------------------------------ tables and --json

def name_column(table: Table, header: str, **options: Any) -> None:
    """Adds a column of names (tasks, runs, ids, paths): never wrapped, never cut (see print_table)."""
    table.add_column(header, no_wrap=True, overflow="ignore", **options)


# Fewest cells a wrapped column keeps: a number's digits and a unit, folded at most once or twice.
MIN_WRAPPED = 5


def _longest(column: Column) -> int:
    """The widest unbreakable piece of a column: a whole line if it does not wrap, else a word."""
    texts = [str(cell) for cell in (column.header, *column.cells)]
    pieces = [piece for text in texts for piece in (text.splitlines() if column.no_wrap else text.split())]
    return max(map(cell_len, pieces), default=0)


def _needed_width(table: Table) -> int:
    """The narrowest the table can be with its names whole and no column crushed."""
    _, right, _, left = table.padding
    borders = len(table.columns) + 1 if table.box else 0
    cells = sum(_longest(c) if c.no_wrap else min(_longest(c), MIN_WRAPPED) for c in table.columns)
    return cells + (left + right) * len(table.columns) + borders


def print_table(table: Table, out: Console | None = None) -> None:
    """Prints a table; its unwrapped columns keep their longest cell whole, also on a narrow terminal.

    To fit a table rich shrinks every column evenly, names too, and some down to nothing: a
    minimum width keeps names whole, and a table that cannot fit so is printed wider than the
    terminal (whose lines then wrap) rather than with names broken or columns dropped.
    """
    out = out or console
    for column in table.columns:
        if column.no_wrap:
            column.min_width = _longest(column)
    needed = _needed_width(table)
    if needed > out.width:  # rich renders no wider than its console: a wider one for this table
        out = Console(file=out.file, width=needed, color_system=out.color_system, force_terminal=out.is_terminal)
    out.print(table, crop=False)


def print_json(document: Any) -> None:
    """Writes ``document`` to stdout as one JSON document: what ``--json`` prints, and nothing else."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Sends whatever the block writes to stdout to stderr, so that stdout holds only ``--json``'s document.

    Python's prints and rich's output, and at the file-descriptor level what processes started in
    the block write (Dask workers, simulators that print banners).
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptor 1 (a daemon): Python's stdout is all there is
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


# ------------------------------------------------------------------ the command line

class Choices:
    """An option's choices, read when the command line is parsed and when ``--help`` shows them.

    Not fixed at import: a method that a plugin (or a test) registers later is accepted and listed.
    Give ``callback=choices.check`` to a ``typer.Option`` of a :class:`OneLineCommand`.

    Arguments:
        read: the choices now.
        describe: the option's help text now (default: "one of A, B, C").
    """

    def __init__(self, read: Callable[[], Sequence[str]], describe: Callable[[], str] | None = None) -> None:
        self.read = read
        self.describe = describe or (lambda: f"one of {', '.join(self.read())}")

    def check(self, value: str) -> str:
        """The value, if it is one of the choices; else a BadParameter that names them."""
        choices = list(self.read())
        if value not in choices:
            raise typer.BadParameter(f"unknown value {value!r}: choose one of {', '.join(choices)}")
        return value


# typer re-exports only BadParameter; its base is click's UsageError (typer vendors click lately).
_ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


def usage_line(error: Exception) -> str:
    """One line for a command line click could not parse: the option first, then the problem."""
    param = getattr(error, "param", None)
    option = getattr(error, "option_name", None)
    command = f"mfsbi {getattr(getattr(error, 'ctx', None), 'info_name', None) or 'run'}"
    if type(error).__name__ == "MissingParameter" and param is not None and getattr(param, "opts", None):
        return f"{param.opts[0]}: required (see `{command} --help`)"
    if param is not None and getattr(param, "opts", None):
        # typer checks a Literal with pydantic, whose message starts with the error's kind.
        return f"{param.opts[0]}: {str(getattr(error, 'message', error)).removeprefix('Value error, ')}"
    if option is not None:
        possible = getattr(error, "possibilities", None)
        if possible is not None:
            hint = f"; did you mean {sorted(possible)[0]}?" if possible else ""
            return f"{option}: no such option of `{command}`{hint} (see `{command} --help`)"
        return f"{option}: {getattr(error, 'message', error)}"
    return f"{error.format_message() if hasattr(error, 'format_message') else error} (see `{command} --help`)"


def _choices_of(param: object) -> Choices | None:
    # typer wraps an option's callback (functools.update_wrapper): the bound Choices.check is under it.
    check = getattr(getattr(param, "callback", None), "__wrapped__", None)
    owner = getattr(check, "__self__", None)
    return owner if isinstance(owner, Choices) else None


class OneLineCommand(TyperCommand):
    """``mfsbi run`` refuses a malformed command line (no such option, a value of the wrong type)
    with one line and exit code 2, like every other bad input, instead of a usage box; options
    with :class:`Choices` show the current choices in ``--help``."""

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: ANN001, ANN201 -- click's signature
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _ClickUsageError as error:
            fail(usage_line(error))

    def get_params(self, ctx):  # noqa: ANN001, ANN201 -- click's signature
        params = super().get_params(ctx)
        for param in params:
            choices = _choices_of(param)
            if choices is not None:  # --help reads the help text now, not at import
                param.help = choices.describe()
        return params
