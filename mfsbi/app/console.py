"""The terminal side of the CLI: where output goes, and how bad input ends a command.

Every refusal is one line on stderr and a non-zero exit (2 for bad input, 1 for a failure), also
for a command line that click cannot parse (no such option, a value of the wrong type).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand

from mfsbi.app.config_file import one_line

__all__ = ["USAGE_ERROR", "OneLineCommand", "console", "errors", "fail", "usage_line"]

console = Console(stderr=False)
errors = Console(stderr=True)

# Exit code of bad input: the convention of argparse and click.
USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    # A Text is printed as is: a message quoting user input ("[/x]", ":smile:") is not rich markup.
    errors.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# typer re-exports only BadParameter; its base is click's UsageError (typer vendors click lately).
_ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


def usage_line(error: Exception) -> str:
    """One line for a command line click could not parse: the option first, then the problem."""
    param = getattr(error, "param", None)
    option = getattr(error, "option_name", None)
    if param is not None and getattr(param, "opts", None):
        return f"{param.opts[0]}: {getattr(error, 'message', error)}"
    if option is not None:
        possible = getattr(error, "possibilities", None)
        if possible is not None:
            hint = f"; did you mean {sorted(possible)[0]}?" if possible else ""
            return f"{option}: no such option of `mfsbi run`{hint} (see `mfsbi run --help`)"
        return f"{option}: {getattr(error, 'message', error)}"
    return f"{error.format_message() if hasattr(error, 'format_message') else error} (see `mfsbi run --help`)"


class OneLineCommand(TyperCommand):
    """``mfsbi run`` refuses a malformed command line (no such option, a value of the wrong type)
    with one line and exit code 2, like every other bad input, instead of a usage box."""

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: ANN001, ANN201 -- click's signature
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _ClickUsageError as error:
            fail(usage_line(error))
