"""What every ``offbench`` command module shares: the console progress and errors go to, and failing with
a message."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def fail(message: str) -> None:
    # The message is plain text that may quote TOML ("[[algorithms]]"), not rich markup. Soft wrapping
    # keeps it on one line whatever the terminal's width, for logs and grep.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)
