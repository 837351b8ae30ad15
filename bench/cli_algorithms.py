"""``offbench algorithms``: list the algorithms, check one against the contract, start a new one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from offbench.bench.cli_common import console, fail

algorithms_app = typer.Typer(
    no_args_is_help=False,
    invoke_without_command=True,
    help="List the algorithms (built-ins and installed plug-ins), check one, or start a new one.",
)

# The starting modules ``new`` copies: self-contained versions of built-ins, written against the public
# contract only, that pass the check.
STARTERS = {"td3bc": "offbench.algorithms.starter_td3bc"}
STARTER_NAME = re.compile(r'^NAME = "[^"]*"', re.M)


@algorithms_app.callback()
def list_algorithms(context: typer.Context) -> None:
    """List every algorithm usable by name, with its origin (builtin, or the installed package)."""
    from offbench.algorithms.registry import UnknownAlgorithmError, listing

    if context.invoked_subcommand is not None:
        return
    try:
        rows = listing()
    except UnknownAlgorithmError as error:
        fail(str(error))
    width = max(len(name) for name, _ in rows)
    for name, origin in rows:
        print(f"{name:{width}s}  {origin}")


@algorithms_app.command("check")
def check(
    algorithm: Annotated[str, typer.Argument(help="A .py file, a module, or a built-in or plug-in name.")],
    hparam: Annotated[
        list[str],
        typer.Option("--hparam", "-p", help="Set a config field for the check, name=value (repeatable)."),
    ] = [],  # noqa: B006
) -> None:
    """Check an algorithm against the contract on a tiny generated dataset: one line per failed rule with
    its fix (exit 2), or a summary (exit 0)."""
    import jax

    from offbench.algorithms.config import coerce, config_fields, owner
    from offbench.algorithms.registry import UnknownAlgorithmError, resolve
    from offbench.bench import conformance

    # The check runs a few updates once: XLA's optimisation passes would cost more than they save.
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        declared, source = resolve(algorithm)
        fields = config_fields(declared.Config)
        overrides = {}
        for item in hparam:
            name, _, value = item.partition("=")
            if name not in fields:
                raise ValueError(f"{owner(declared.Config)} has no hyper-parameter {name!r}.")
            overrides[name] = coerce(value, fields[name], name)
        with console.status(f"checking {declared.name}"):
            report = conformance.check(source, overrides)
    except (UnknownAlgorithmError, ValueError) as error:
        fail(str(error))
    for line in conformance.format_report(report):
        print(line)
    if not report.passed:
        raise typer.Exit(code=2)


@algorithms_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="The new algorithm's name; the file is NAME.py.")],
    start_from: Annotated[
        str, typer.Option("--from", help=f"The built-in to start from: {', '.join(STARTERS)}.")
    ] = "td3bc",
    out: Annotated[Path | None, typer.Option(help="Where to write the module (default: ./NAME.py).")] = None,
) -> None:
    """Write a starting module: a renamed, self-contained copy of a built-in that passes the check, with
    the contract's comments. Run it with `offbench run --algorithm NAME.py ...`."""
    import importlib.util

    from offbench.algorithms.registry import NAME, REGISTRY, installed_entry_points

    if not NAME.match(name):
        fail(f"name {name!r} must be letters, digits, '_', '.' or '-', starting with a letter or digit.")
    if name in REGISTRY or name in installed_entry_points():
        fail(f"{name!r} is already the name of an algorithm; choose another (see `offbench algorithms`).")
    if start_from not in STARTERS:
        fail(f"--from {start_from!r}: starting modules exist for {', '.join(STARTERS)}.")
    target = out or Path(f"{name.replace('-', '_').replace('.', '_')}.py")
    if target.exists():
        fail(f"{target} exists; choose another --out (nothing was written).")
    spec = importlib.util.find_spec(STARTERS[start_from])
    text = Path(spec.origin).read_text()
    text = STARTER_NAME.sub(f'NAME = "{name}"', text, count=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"written: {target} (from {start_from}). Check it: offbench algorithms check {target}")
