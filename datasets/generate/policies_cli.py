"""The command line of the behaviour policies: ``python -m offbench.datasets.generate.policies_cli``.

``train`` trains (or resumes) SAC on one environment, ``evaluate`` re-scores the committed snapshots and
``status`` shows each environment's manifest and newest resume checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from offbench.datasets.generate import LOCOMOTION_ENVS, behaviour_training, policies
from offbench.datasets.generate import behaviour_checkpoints as checkpoints

app = typer.Typer(help="Train and inspect offbench's SAC behaviour policies.", no_args_is_help=True)


def _check_env_option(env: str) -> None:
    try:
        policies.env_id(env)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--env") from e


@app.command("train")
def train_cli(
    env: Annotated[str, typer.Option(help=f"one of {', '.join(LOCOMOTION_ENVS)}")],
    steps: Annotated[int, typer.Option(help="total environment steps")] = 1_000_000,
    seed: int = 0,
    work_dir: Annotated[
        Path | None, typer.Option(help="resume checkpoints (default: ~/.cache/offbench/sac/<env>)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="snapshots + manifest (default: datasets/policies/<env>)")
    ] = None,
    num_envs: int = 4,
    checkpoint_every: int = 25_000,
    snapshot_every: int = 50_000,
    eval_episodes: int = 100,
) -> None:
    """Train SAC on one environment; re-running the same command resumes from the last checkpoint."""
    _check_env_option(env)
    behaviour_training.train(
        env,
        steps,
        seed,
        work_dir,
        out_dir,
        num_envs=num_envs,
        checkpoint_every=checkpoint_every,
        snapshot_every=snapshot_every,
        eval_episodes=eval_episodes,
    )


@app.command("evaluate")
def evaluate_cli(
    env: Annotated[str, typer.Option(help=f"one of {', '.join(LOCOMOTION_ENVS)}")],
    policies_dir: Path | None = None,
    episodes: int = 100,
) -> None:
    """Re-score every committed snapshot of one environment (deterministic and sampled actions)."""
    _check_env_option(env)
    policies.reevaluate(env, policies_dir, episodes)


@app.command("status")
def status_cli(
    env: Annotated[list[str] | None, typer.Option(help="environments to show (default: all)")] = None,
    policies_dir: Path | None = None,
) -> None:
    """Print each environment's snapshot manifest and its newest resume checkpoint."""
    console = Console()
    for name in env or list(LOCOMOTION_ENVS):
        env_dir = Path(policies_dir or policies.POLICIES_DIR) / name
        work_dir = checkpoints.default_work_dir(name)
        steps = checkpoints.checkpoint_steps(work_dir) if work_dir.is_dir() else []
        resume = f"resume checkpoint at step {steps[0]:,} in {work_dir}" if steps else "no resume checkpoint"
        if not (env_dir / policies.MANIFEST).exists():
            console.print(
                f"[bold]{name}[/]: no snapshots ({resume}); train with {policies.train_command_hint(name)}"
            )
            continue
        manifest = policies.read_manifest(env_dir / policies.MANIFEST)
        table = Table(title=f"{name} ({manifest['env_id']}); {resume}")
        for column in (
            "snapshot",
            "steps",
            "seed",
            "deterministic return",
            "sampled return",
            "length",
            "role",
        ):
            table.add_column(column)
        roles = {manifest.get("expert"): "expert", manifest.get("medium"): "medium"}
        for s in manifest.get("snapshots", []):
            table.add_row(
                s["name"],
                f"{s['steps']:,}",
                str(s["seed"]),
                f"{s['return_mean']:.1f} ± {s['return_std']:.1f}",
                f"{s['sampled_return_mean']:.1f} ± {s['sampled_return_std']:.1f}"
                if "sampled_return_mean" in s
                else "-",
                f"{s['length_mean']:.0f}",
                roles.get(s["name"], ""),
            )
        console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
