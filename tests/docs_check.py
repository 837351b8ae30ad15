"""Every ``offbench`` command a document shows exists, with the options it shows, and the README names
every built-in suite.

Commands are read from fenced code blocks (shell lines, with ``\\`` continuations) and from inline code
spans; each is asked of the CLI itself (click's view of the typer app), so a renamed command or option
fails here before a reader finds it. Placeholders in square brackets (``[--seed S]``) are optional parts
and are checked too. Run it on any markdown file, e.g. a copy of the README being edited:

    .venv/bin/python tests/docs_check.py README.md docs/*.md
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from offbench.bench.cli import app

REPOSITORY = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # an inline span may wrap onto the next line
PROGRAM = re.compile(r"^(?:\S*/)?offbench$")  # offbench, .venv/bin/offbench


def shown_commands(markdown: str) -> list[list[str]]:
    """The ``offbench`` command lines of a document, each as the tokens after the program name."""
    lines = []
    for block in FENCE.findall(markdown):
        lines += block.replace("\\\n", " ").splitlines()
    lines += [span.replace("\n", " ") for span in INLINE.findall(FENCE.sub("", markdown))]
    commands = []
    for line in lines:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: not a shell line
            continue
        for start, token in enumerate(tokens):
            if PROGRAM.match(token):
                rest = [part.strip("[]") for part in tokens[start + 1 :]]
                commands.append([part for part in rest if part])
                break
    return commands


# Typer builds on click (vendored in newer typer): commands and groups are read by duck typing, a group
# being a command with ``commands`` and an option a parameter whose ``param_type_name`` says so.
def option_names(command: Any) -> set[str]:
    names = {"--help"}
    for parameter in command.params:
        if parameter.param_type_name == "option":
            names.update(parameter.opts, parameter.secondary_opts)
    return names


def check_command(tokens: list[str]) -> list[str]:
    """What is wrong with ``offbench <tokens>``: unknown commands and options, one message each."""
    command = typer.main.get_command(app)
    path = ["offbench"]
    problems = []
    for token in tokens:
        if token.startswith("-") and len(token) > 1 and not token[1].isdigit():
            option = token.split("=", 1)[0]
            if option not in option_names(command):
                problems.append(f"`{' '.join(path)}` has no option {option}")
        elif hasattr(command, "commands"):
            if token not in command.commands:
                problems.append(f"`{' '.join(path)}` has no command {token!r}")
                break
            command = command.commands[token]
            path.append(token)
    return problems


def check_document(path: Path) -> list[str]:
    """Problems of every ``offbench`` command shown in a markdown file, as ``file: problem`` lines."""
    problems = []
    for tokens in shown_commands(path.read_text()):
        problems += [
            f"{path}: {problem} (in `offbench {' '.join(tokens)}`)" for problem in check_command(tokens)
        ]
    return problems


def built_in_suites() -> list[str]:
    return sorted(path.stem for path in (REPOSITORY / "bench" / "suites").glob("*.toml"))


def unlisted_suites(readme: Path) -> list[str]:
    """Built-in suites the README names neither as inline code nor as the suite of an ``offbench sweep``."""
    markdown = readme.read_text()
    named = {span.strip() for span in INLINE.findall(FENCE.sub("", markdown))}
    named |= {tokens[1] for tokens in shown_commands(markdown) if tokens[:1] == ["sweep"] and len(tokens) > 1}
    return [suite for suite in built_in_suites() if suite not in named]


def main(paths: list[str]) -> int:
    problems = [problem for path in paths for problem in check_document(Path(path))]
    problems += [
        f"{path}: the built-in suite {suite!r} is not listed"
        for path in paths
        if Path(path).name.upper().startswith("README")
        for suite in unlisted_suites(Path(path))
    ]
    print("\n".join(problems) if problems else f"{len(paths)} file(s): every offbench command shown exists")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
