"""``offbench report DIR``: write the leaderboard of a results directory.

Into ``DIR`` or ``--out``: ``LEADERBOARD.md`` (:mod:`offbench.bench.render`), ``leaderboard.html``
(:mod:`offbench.bench.render_html`) and the PNG plots (:mod:`offbench.bench.plots`), all from the tables
:func:`offbench.bench.report.compute_tables` computes. The same results, ``reps`` and ``seed`` give
byte-identical files; each is written atomically, so a reader never sees half a leaderboard.
"""

from __future__ import annotations

from pathlib import Path

from offbench.bench import plots, render, render_html, report
from offbench.bench.report import ReportError
from offbench.files import write_text_atomic


def write_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    reps: int = report.DEFAULT_REPS,
    profile_reps: int = report.DEFAULT_PROFILE_REPS,
    seed: int = 0,
) -> list[Path]:
    """Write the leaderboard (markdown, HTML, PNGs) for ``results_dir`` into ``out``; return the paths."""
    results_dir = Path(results_dir)
    out_dir = Path(out) if out is not None else results_dir
    if reps < 1 or profile_reps < 1:
        raise ReportError(f"reps and profile_reps must be positive, got {reps} and {profile_reps}.")
    tables = report.compute_tables(report.load_results(results_dir), reps, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = report.learning_curves(tables, profile_reps, seed)
    images = {
        "aggregate_intervals.png": plots.plot_aggregates(
            tables.aggregate, out_dir / "aggregate_intervals.png"
        ),
        "probability_of_improvement.png": plots.plot_improvement(
            tables.improvement, out_dir / "probability_of_improvement.png"
        ),
        "performance_profiles.png": plots.plot_profiles(
            tables.matrices, out_dir / "performance_profiles.png", profile_reps, seed
        ),
        "learning_curves.png": plots.plot_learning_curves(
            curves, tables.scored, out_dir / "learning_curves.png"
        ),
        "score_vs_quality.png": plots.plot_score_vs_quality(
            report.score_vs_quality(tables), out_dir / "score_vs_quality.png"
        ),
    }
    text = render.explanations(tables, reps, profile_reps, seed)
    markdown_path, html_path = out_dir / "LEADERBOARD.md", out_dir / "leaderboard.html"
    write_text_atomic(markdown_path, render.render_markdown(tables, text, list(images)))
    links = render_html.links(results_dir, out_dir, tables.header)
    write_text_atomic(html_path, render_html.render_html(tables, text, images, links))
    return [markdown_path, html_path, *(out_dir / name for name in images)]
