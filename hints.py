"""Hints for error messages, shared by every layer."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def suggest(name: str, candidates: Sequence[str], n: int = 3) -> str:
    """A ' Did you mean ...?' hint, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def one_line(error: BaseException) -> str:
    """An exception's message on one line: messages from h5py, Gymnasium or HTTP clients may span several."""
    return " ".join(str(error).split())
