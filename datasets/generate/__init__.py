"""Datasets offbench makes itself, and the behaviour policies that make the locomotion ones."""

from offbench.datasets.d4rl_hdf5 import D4RL_EVAL_ENVS

# The locomotion environments offbench trains behaviour policies in and generates datasets for: D4RL's
# names, with the Gymnasium environments their datasets are evaluated in.
LOCOMOTION_ENVS: dict[str, str] = {
    name: D4RL_EVAL_ENVS[name] for name in ("hopper", "halfcheetah", "walker2d")
}
