"""``offbench report``: leaderboard numbers, determinism, and the HTML as a browser renders it."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from offbench.bench import report as report_tables
from offbench.bench import results, stats
from offbench.bench.cli import app
from offbench.bench.leaderboard import write_report

REPS = 2_000
SEED = 3
SCORED = {"hopper-medium": (-20.0, 3000.0), "walker-medium": (0.0, 4000.0)}
RAW = "toy-norefs"
METHODS = [("bc", "uniform"), ("iql", "uniform"), ("iql", "rw")]
SEEDS = range(5)
STEPS = (1000, 2000, 3000)
DIVERGED = ("iql", "uniform", "walker-medium", 3)
# The rows of hopper-medium carry their dataset's size and quality; walker-medium's do not.
QUALITY = {
    "hopper-medium": {
        "dataset_transitions": 1000,
        "dataset_episodes": 10,
        "dataset_tq": 0.5,
        "dataset_saco": 0.8,
    }
}


def normalized(dataset: str, value: float) -> float | None:
    if dataset not in SCORED or np.isnan(value):
        return None
    ref_min, ref_max = SCORED[dataset]
    return 100.0 * (value - ref_min) / (ref_max - ref_min)


def run_row(algorithm: str, sampler: str, dataset: str, seed: int, final_return: float, **extra) -> dict:
    """A runs row in the full schema of bench/results.py."""
    ref_min, ref_max = SCORED.get(dataset, (None, None))
    row = {field.name: None for field in results.RUNS_SCHEMA}
    row.update(
        suite="test",
        dataset=dataset,
        env="Hopper-v5",
        algorithm=algorithm,
        label=algorithm,
        sampler=sampler,
        hparams="{}",
        hparams_hash=f"{algorithm}{sampler}hash",
        seed=seed,
        steps=STEPS[-1],
        final_score=normalized(dataset, final_return),
        final_return=final_return,
        final_k=1,
        seeds_in_job=len(SEEDS),
        status="ok",
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        schema_version=results.SCHEMA_VERSION,
        code_version="abc123def456",
        device="cpu: test (2 cores)",
        written_at="2026-01-02T03:04:05+00:00",
        **QUALITY.get(dataset, {}),
    )
    row.update(extra)
    return row


def eval_rows(run: dict) -> list[dict]:
    """Returns climb linearly to the final return; a diverged run was at 500 until its last evaluation."""
    rows = []
    for step in STEPS:
        diverged = run["status"] == "diverged" and step == STEPS[-1]
        target = 500.0 if run["status"] == "diverged" else run["final_return"]
        value = np.nan if diverged else target * step / STEPS[-1]
        rows.append(
            {
                **{
                    k: run[k] for k in ("suite", "dataset", "env", "algorithm", "label", "sampler", "hparams")
                },
                "hparams_hash": run["hparams_hash"],
                "seed": run["seed"],
                "step": step,
                "return_mean": value,
                "return_std": 1.0,
                "episodes": 5,
                "normalized_score": normalized(run["dataset"], value),
                "success_rate": np.nan,
                "wall_time_s": 1.0,
                "status": "diverged" if diverged else "ok",
            }
        )
    return rows


def write_results(out: Path, runs: pd.DataFrame, evals: pd.DataFrame) -> None:
    for (algorithm, sampler, dataset), frame in runs.groupby(["algorithm", "sampler", "dataset"]):
        name = f"{algorithm}-{sampler}__{dataset}"
        job_evals = evals[(evals["algorithm"] == algorithm) & (evals["sampler"] == sampler)]
        job_evals = job_evals[job_evals["dataset"] == dataset]
        # Columns the rows leave out (job identity, provenance) are null, as the schema allows.
        job_evals = job_evals.reindex(columns=results.EVALS_SCHEMA.names)
        results.write_atomic(
            results.to_table(job_evals, results.EVALS_SCHEMA), out / "evals" / f"{name}.parquet"
        )
        results.write_atomic(results.to_table(frame, results.RUNS_SCHEMA), out / "runs" / f"{name}.parquet")


@pytest.fixture(scope="module")
def base_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 methods x 3 datasets x 5 seeds, one diverged seed, one dataset without reference scores, and a
    failed cql job recorded by the sweep. Shared by the module: tests that add files use ``results_dir``."""
    rng = np.random.default_rng(0)
    rows = []
    for index, (algorithm, sampler) in enumerate(METHODS):
        for dataset in [*SCORED, RAW]:
            for seed in SEEDS:
                final_return = float(1000.0 + 400.0 * index + 150.0 * rng.standard_normal())
                if (algorithm, sampler, dataset, seed) == DIVERGED:
                    rows.append(
                        run_row(
                            algorithm, sampler, dataset, seed, np.nan, status="diverged", diverged_step=3000
                        )
                    )
                else:
                    rows.append(run_row(algorithm, sampler, dataset, seed, final_return))
    runs = pd.DataFrame(rows)
    evals = pd.DataFrame([row for run in rows for row in eval_rows(run)])
    out = tmp_path_factory.mktemp("report") / "results"
    write_results(out, runs, evals)
    (out / "failures").mkdir()
    failure = {"job": {"algorithm": "cql", "dataset": "hopper-medium", "seeds": [0, 1]}, "error": "boom"}
    (out / "failures" / "cql-uniform__hopper-medium__abc.json").write_text(json.dumps(failure))
    return out


@pytest.fixture
def results_dir(base_results: Path, tmp_path: Path) -> Path:
    """A private copy of the results, for tests that add files to it."""
    return Path(shutil.copytree(base_results, tmp_path / "results"))


@pytest.fixture(scope="module")
def default_report(base_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the shared results, written once for the tests that only read it."""
    out = tmp_path_factory.mktemp("default-report")
    report(base_results, out)
    return out


def expected_cell(values: np.ndarray) -> str:
    """Mean ± half-width of the percentile-bootstrap interval of the mean, computed here with numpy.

    stats draws all resamples of a small cell in one call of ``integers(n, size=(reps, n, 1))`` on a
    generator seeded with the report's seed, so the same draw reproduces its interval exactly.
    """
    rng = np.random.default_rng(SEED)
    indices = rng.integers(len(values), size=(REPS, len(values), 1))
    means = values[indices].mean(axis=(1, 2))
    lower, upper = np.percentile(means, [2.5, 97.5])
    return f"{values.mean():.1f} ± {(upper - lower) / 2:.1f}"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table of a markdown document, as rows of stripped cells (the rule line dropped, bold
    marks removed)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line) <= set("|:- "):
                current.append([cell.strip().strip("*") for cell in line.strip("|").split(" | ")])
        elif current:
            tables.append(current)
            current = []
    return tables


def method_of(algorithm: str, sampler: str) -> str:
    return algorithm if sampler == "uniform" else f"{algorithm}+{sampler}"


def expected_per_dataset(results_dir: Path) -> dict[tuple[str, str], str]:
    runs = pd.read_parquet(results_dir / "runs")
    expected = {}
    for (algorithm, sampler, dataset), frame in runs.groupby(["algorithm", "sampler", "dataset"]):
        frame = frame.sort_values("seed")
        if dataset in SCORED:
            # The report scores a diverged seed as 0, the random-policy score.
            values = frame["final_score"].fillna(0.0).to_numpy(float)
        else:
            values = frame["final_return"].dropna().to_numpy(float)
        expected[(dataset, method_of(algorithm, sampler))] = expected_cell(values)
    return expected


def report(results_dir: Path, out: Path) -> list[Path]:
    return write_report(results_dir, out, reps=REPS, profile_reps=200, seed=SEED)


def test_report_writes_every_file(default_report: Path) -> None:
    paths = list(default_report.iterdir())
    names = {path.name for path in paths}
    assert names == {
        "LEADERBOARD.md",
        "leaderboard.html",
        "aggregate_intervals.png",
        "probability_of_improvement.png",
        "performance_profiles.png",
        "learning_curves.png",
        "score_vs_quality.png",
    }
    for path in paths:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (default_report / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<style>" in html
    # Self-contained: no stylesheet, script or image fetched from elsewhere.
    assert "<link" not in html and "<script src" not in html and 'src="http' not in html


def test_leaderboard_per_dataset_cells(base_results: Path, default_report: Path) -> None:
    per_dataset = markdown_tables((default_report / "LEADERBOARD.md").read_text())[0]
    header, body = per_dataset[0], per_dataset[1:]
    assert header == ["Dataset", "Transitions", "Episodes", "TQ", "SACo", "bc", "iql", "iql+rw"]
    assert [row[0] for row in body] == ["hopper-medium", RAW + " †", "walker-medium"]
    # Size and quality from the rows; datasets whose rows do not carry them show a dash.
    assert [row[1:5] for row in body] == [["1,000", "10", "0.50", "0.80"], ["—"] * 4, ["—"] * 4]
    for (dataset, method), cell in expected_per_dataset(base_results).items():
        row = next(r for r in body if r[0].removesuffix(" †") == dataset)
        assert row[header.index(method)] == cell, (dataset, method)


def test_aggregate_iqm_matches_stats(base_results: Path, default_report: Path) -> None:
    aggregate = markdown_tables((default_report / "LEADERBOARD.md").read_text())[1]
    header = aggregate[0]
    assert header == ["Method", "IQM", "Median", "Mean", "Optimality gap"]
    runs = pd.read_parquet(base_results / "runs")
    runs = runs[runs["dataset"].isin(SCORED)].assign(final_score=lambda f: f["final_score"].fillna(0.0))
    for row in aggregate[1:]:
        algorithm, _, sampler = row[0].partition("+")
        frame = runs[(runs["algorithm"] == algorithm) & (runs["sampler"] == (sampler or "uniform"))]
        # (seeds, datasets) matrix built by hand: columns sorted by dataset, rows by seed.
        matrix = frame.pivot(index="seed", columns="dataset", values="final_score").sort_index()
        matrix = matrix[sorted(SCORED)].to_numpy()
        iqm = stats.aggregate_iqm(matrix)
        interval = stats.stratified_bootstrap_ci(matrix, stats.aggregate_iqm, REPS, 0.95, SEED)
        assert row[header.index("IQM")] == f"{iqm:.1f} [{interval.lower:.1f}, {interval.upper:.1f}]"
        assert row[header.index("Mean")].startswith(f"{stats.aggregate_mean(matrix):.1f} [")


def test_runs_table_counts_seeds_divergence_and_failures(default_report: Path) -> None:
    counts = markdown_tables((default_report / "LEADERBOARD.md").read_text())[4]
    assert counts[0] == ["Method", "Datasets", "Seeds per dataset", "Diverged", "Failed"]
    by_method = {row[0]: row[1:] for row in counts[1:]}
    # iql's diverged walker seed is scored 0, so it still counts among the seeds; cql's job failed.
    assert by_method == {
        "bc": ["3", "5", "0", "0"],
        "cql": ["0", "0", "0", "2"],
        "iql": ["3", "5", "1", "0"],
        "iql+rw": ["3", "5", "0", "0"],
    }


def test_report_is_deterministic(base_results: Path, default_report: Path, tmp_path: Path) -> None:
    for path in report(base_results, tmp_path):
        assert path.read_bytes() == (default_report / path.name).read_bytes(), path.name


def test_dataset_quality_columns_when_provided(
    results_dir: Path, default_report: Path, tmp_path: Path
) -> None:
    """datasets.parquet fills in the datasets whose rows lack quality metrics; the rows' own win."""
    quality = pd.DataFrame(
        {"dataset": ["hopper-medium", "walker-medium"], "tq": [0.9, 0.25], "saco": [0.9, 2.5]}
    )
    quality.to_parquet(results_dir / "datasets.parquet")
    report(results_dir, tmp_path / "with")
    table = markdown_tables((tmp_path / "with" / "LEADERBOARD.md").read_text())[0]
    assert table[0][3:5] == ["TQ", "SACo"]
    assert [row[3:5] for row in table[1:]] == [["0.50", "0.80"], ["—", "—"], ["0.25", "2.50"]]


def test_method_missing_a_dataset_is_left_out_of_the_aggregate(results_dir: Path, tmp_path: Path) -> None:
    extra = [run_row("cql", "uniform", "hopper-medium", seed, 2000.0 + seed) for seed in SEEDS]
    results.write_atomic(
        results.to_table(pd.DataFrame(extra), results.RUNS_SCHEMA), results_dir / "runs" / "cql.parquet"
    )
    report(results_dir, tmp_path)
    text = (tmp_path / "LEADERBOARD.md").read_text()
    per_dataset, aggregate = markdown_tables(text)[:2]
    assert "cql" in per_dataset[0]
    assert "cql" not in [row[0] for row in aggregate]
    assert "Left out of the aggregate (not run on every dataset with reference scores): cql." in text


class TableReader(HTMLParser):
    """The text of each cell of ``<table id=...>``, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows = table_id, False, []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", self.table_id) in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Written into a copy of the page: the size of every table and image as the browser laid them out.
LAYOUT_PROBE = """<script>window.addEventListener("load", () => {
  const boxes = [...document.querySelectorAll("table, img")].map((e) => {
    const r = e.getBoundingClientRect();
    const loaded = e.tagName !== "IMG" || e.naturalWidth > 0;
    return {tag: e.tagName, id: e.id, width: r.width, height: r.height, loaded: loaded};
  });
  const out = document.createElement("pre"); out.id = "layout"; out.textContent = JSON.stringify(boxes);
  document.body.appendChild(out);
});</script></body>"""


def test_html_renders_in_headless_chromium(base_results: Path, default_report: Path, tmp_path: Path) -> None:
    """Chromium lays out every table and plot with a visible size, and the screenshot is not blank."""
    browser = chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    page = tmp_path / "probed.html"
    page.write_text((default_report / "leaderboard.html").read_text().replace("</body>", LAYOUT_PROBE))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1366,900"]
    dumped = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    reader = TableReader("per-dataset")
    reader.feed(dumped)
    header, body = reader.rows[0], reader.rows[1:]
    assert header[5:] == ["bc", "iql", "iql+rw"]
    for (dataset, method), cell in expected_per_dataset(base_results).items():
        row = next(r for r in body if r[0].removesuffix(" †") == dataset)
        assert row[header.index(method)] == cell, (dataset, method)
    layout = json.loads(dumped.split('<pre id="layout">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    tables = {box["id"] for box in layout if box["tag"] == "TABLE"}
    assert {"per-dataset", "aggregate", "improvement", "hparams", "runs"} <= tables
    images = [box for box in layout if box["tag"] == "IMG"]
    assert len(images) == 5
    for box in layout:
        assert box["width"] > 100 and box["height"] > 20 and box["loaded"], box
    screenshot = tmp_path / "top.png"
    subprocess.run(
        [*flags, f"--screenshot={screenshot}", (default_report / "leaderboard.html").resolve().as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (900, 1366)
    # Not blank: some dark text on the white page, in the upper and the lower half of the screen.
    for half in (pixels[:450], pixels[450:]):
        assert (half < 100).mean() > 0.005 and (half > 200).mean() > 0.5


def test_header_is_read_from_the_rows(default_report: Path) -> None:
    text = (default_report / "LEADERBOARD.md").read_text()
    # The fixture's runs rows lack eval_every and eval_episodes: the evals rows stand in.
    for line in [
        "- **Suite**: test",
        "- **Updates per seed**: 3,000",
        "- **Evaluation**: every 1,000 updates, 5 episodes",
        "- **Final score**: mean of the last 1 evaluations",
        "- **Seeds**: 5 (0–4)",
        "- **Runs**: 45 (one per seed and job), plus 2 failed seeds without rows",
        "- **Code**: abc123def456",
        "- **Written**: 2026-01-02",
        "- **Devices**: cpu: test (2 cores)",
    ]:
        assert line in text.splitlines(), line
    assert "> **Early learning only: 3,000 updates per seed is 0.3% of the papers' 1,000,000" in text


def test_probability_of_improvement_matches_stats(base_results: Path, default_report: Path) -> None:
    table = markdown_tables((default_report / "LEADERBOARD.md").read_text())[2]
    assert table[0] == ["X \\ Y", "bc", "iql", "iql+rw"]
    tables = report_tables.compute_tables(report_tables.load_results(base_results), REPS, SEED)
    matrices = tables.matrices
    for row in table[1:]:
        for y, cell in zip(table[0][1:], row[1:], strict=True):
            if y == row[0]:
                assert cell == "—"
                continue
            interval = stats.probability_of_improvement_interval(
                matrices[row[0]], matrices[y], REPS, 0.95, SEED
            )
            assert cell == f"{interval.point:.2f} [{interval.lower:.2f}, {interval.upper:.2f}]"


def test_published_per_dataset_overrides_are_marked() -> None:
    """A2PR's published hopper-medium setting (mask 0.4) is marked; its default on a dataset it published
    nothing for (PointMaze) is not."""
    from offbench.algorithms import a2pr
    from offbench.bench.report_facts import hyperparameters

    base = {"mask": 0.5, "alpha": 2.5, "discount": 0.99, "total_steps": 1_000_000}
    medium = {**base, "mask": 0.4, "discount": 0.995, "total_steps": 2000}
    runs = pd.DataFrame(
        {
            "method": "a2pr",
            "algorithm": "a2pr",
            "dataset": ["offbench/hopper/medium-v0", "offbench/pointmaze/umaze-v0"],
            "hparams": [json.dumps(medium), json.dumps(base)],
        }
    )
    assert a2pr.Config().mask == 0.5
    table = hyperparameters(runs).set_index(["dataset", "name"])
    assert table.loc[("offbench/hopper/medium-v0", "mask"), "source"] == "published"
    assert table.loc[("offbench/hopper/medium-v0", "discount"), "source"] == "published"
    assert table.loc[("offbench/hopper/medium-v0", "total_steps"), "source"] == "suite"
    assert table.loc[("offbench/pointmaze/umaze-v0", "mask"), "source"] == "default"
    assert table.loc[("offbench/pointmaze/umaze-v0", "mask"), "value"] == "0.5"


def test_report_cli(base_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app, ["report", str(base_results), "--out", str(out), "--reps", "500", "--profile-reps", "100"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "LEADERBOARD.md").exists() and str(out / "leaderboard.html") in result.output


def test_report_cli_missing_results(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "no runs parquet files" in result.output


def test_notebook_reproduces_the_committed_leaderboard() -> None:
    """The committed notebook, run on the committed results, prints the page's aggregate numbers."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = Path(__file__).parents[1]
    committed = nbformat.read(root / "notebooks" / "leaderboard.ipynb", as_version=4)
    committed_outputs = [o for cell in committed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert sum("image/png" in o.get("data", {}) for o in committed_outputs) >= 3  # committed with its plots
    notebook = nbformat.read(root / "notebooks" / "leaderboard.ipynb", as_version=4)
    resources = {"metadata": {"path": str(root / "notebooks")}}
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()
    texts = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "equal to the report's aggregate table and to LEADERBOARD.md" in texts
    aggregate = markdown_tables((root / "results" / "default" / "LEADERBOARD.md").read_text())[1]
    for row in aggregate[1:]:  # e.g. "18.8 [18.6, 19.7]": every interval of the page, in the notebook
        for cell in row[1:]:
            assert cell in texts, (row[0], cell)


def test_labels_name_methods_and_success_rates_get_their_own_table(tmp_path: Path) -> None:
    """Two DQC variants, told apart by their labels, on a dataset whose environment reports success (no
    reference scores) and on one that does not."""
    success = {"dqc": [0.2, 0.4, 0.6], "dqc-os": [0.5, 0.5, None]}  # None: a diverged seed
    rows = []
    for label, rates in success.items():
        for seed, rate in enumerate(rates):
            final_return, status = (-150.0, "ok") if rate is not None else (np.nan, "diverged")
            common = {"label": label, "hparams_hash": f"{label}hash"}
            rows.append(
                run_row(
                    "dqc",
                    "uniform",
                    "cube-task1",
                    seed,
                    final_return,
                    status=status,
                    final_success_rate=rate,
                    **common,
                )
            )
            rows.append(run_row("dqc", "uniform", "hopper-medium", seed, 1000.0 + seed, **common))
    out = tmp_path / "results"
    results.write_atomic(
        results.to_table(pd.DataFrame(rows), results.RUNS_SCHEMA), out / "runs" / "dqc.parquet"
    )
    report(out, tmp_path / "report")
    text = (tmp_path / "report" / "LEADERBOARD.md").read_text()
    per_dataset, success_table = markdown_tables(text)[:2]
    assert per_dataset[0][5:] == ["dqc", "dqc-os"]  # labels, not "dqc@hash"
    assert "## Per-dataset success rates" in text
    # In percent; the diverged seed counts 0; hopper-medium has no success signal and is left out.
    assert success_table == [
        ["Dataset", "dqc", "dqc-os"],
        [
            "cube-task1",
            expected_cell(np.array([20.0, 40.0, 60.0])),
            expected_cell(np.array([50.0, 50.0, 0.0])),
        ],
    ]
    html = (tmp_path / "report" / "leaderboard.html").read_text()
    assert '<table id="success" class="sortable">' in html


def test_no_success_table_without_a_success_signal(default_report: Path) -> None:
    assert "success rates" not in (default_report / "LEADERBOARD.md").read_text()
    assert 'id="success"' not in (default_report / "leaderboard.html").read_text()


def test_results_of_schema_version_1_are_still_reported(
    base_results: Path, default_report: Path, tmp_path: Path
) -> None:
    """Files written before labels and success rates existed: the method is the algorithm again."""
    old = tmp_path / "old"
    for table in ("runs", "evals"):
        (old / table).mkdir(parents=True)
        for path in (base_results / table).glob("*.parquet"):
            frame = pd.read_parquet(path).drop(
                columns=["label", "success_rate", "final_success_rate"], errors="ignore"
            )
            if table == "runs":
                frame = frame.assign(schema_version=1)
            frame.to_parquet(old / table / path.name)
    shutil.copytree(base_results / "failures", old / "failures")  # records without a label, as before
    report(old, tmp_path / "report")
    assert markdown_tables((tmp_path / "report" / "LEADERBOARD.md").read_text()) == markdown_tables(
        (default_report / "LEADERBOARD.md").read_text()
    )


def test_read_table_upgrades_old_files_and_keeps_every_column(tmp_path: Path) -> None:
    version_1 = run_row("bc", "uniform", "hopper-medium", 0, 100.0, schema_version=1)
    del version_1["label"], version_1["final_success_rate"]
    version_2 = run_row("dqc", "uniform", "cube-task1", 0, -80.0, label="dqc-os", final_success_rate=0.25)
    pd.DataFrame([version_1]).assign(metric_only_in_v1=1.0).to_parquet(tmp_path / "a.parquet")
    results.write_atomic(
        results.to_table(pd.DataFrame([version_2]), results.RUNS_SCHEMA), tmp_path / "b.parquet"
    )
    frame = results.read_table(tmp_path, results.RUNS_SCHEMA)
    assert frame["label"].tolist() == ["bc", "dqc-os"]
    assert np.isnan(frame["final_success_rate"][0]) and frame["final_success_rate"][1] == 0.25
    assert np.isnan(frame["metric_only_in_v1"][1]) and frame["metric_only_in_v1"][0] == 1.0
    selected = results.read_table(tmp_path, results.RUNS_SCHEMA, ["label", "final_return"])
    assert list(selected.columns) == ["label", "final_return"] and selected["final_return"].tolist() == [
        100.0,
        -80.0,
    ]
