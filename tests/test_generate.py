"""The dataset generator (``offbench.datasets.generate.catalog``): reproducible arrays, mixed-set
fractions, reference scores, quality metrics, on-demand generation, and bad input that leaves nothing
half-written. Tiny sizes; the behaviour policies are a frozen copy of the committed hopper snapshots
(training may rewrite the manifest while tests run)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import minari
import numpy as np
import pytest
from typer.testing import CliRunner

from offbench.bench.cli import app
from offbench.datasets import quality
from offbench.datasets.dataset import DatasetError
from offbench.datasets.generate import catalog, policies, storage
from offbench.datasets.sources import load_dataset

SIZE = 1_000
REF_EPISODES = 5
KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def copy_policies(destination: Path, source: Path | None = None, env: str = "hopper") -> Path:
    """The manifest as it is now and the snapshot files it lists (the manifest first: it is rewritten
    atomically while training, and the files it names never change once written)."""
    source = (source or policies.POLICIES_DIR) / env
    manifest = json.loads((source / policies.MANIFEST).read_text())
    for entry in manifest["snapshots"]:
        (destination / env / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / entry["file"], destination / env / entry["file"])
    (destination / env / policies.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return destination


MAX_EXPERT_LENGTH = 250


@pytest.fixture(scope="module")
def policies_dir(tmp_path_factory) -> Path:
    """A frozen copy of the committed hopper snapshots, cut to the longest prefix (by training steps) that
    designates a medium policy and whose expert's episodes are short (at most MAX_EXPERT_LENGTH steps),
    so the tests stay fast and do not depend on how far training has got."""
    live = policies.POLICIES_DIR / "hopper" / policies.MANIFEST
    if not live.exists():
        pytest.skip("no committed hopper behaviour policies")
    directory = copy_policies(tmp_path_factory.mktemp("policies"))
    manifest_path = directory / "hopper" / policies.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    snapshots = sorted(manifest["snapshots"], key=lambda s: s["steps"])
    chosen = None
    for count in range(1, len(snapshots) + 1):
        candidate = policies.designate({**manifest, "snapshots": snapshots[:count]})
        expert = {s["name"]: s for s in snapshots}[candidate["expert"]]
        if candidate["medium"] is not None and expert["sampled_length_mean"] <= MAX_EXPERT_LENGTH:
            chosen = candidate
    if chosen is None:
        pytest.skip(
            f"no prefix of the hopper snapshots has a medium and an expert of <= {MAX_EXPERT_LENGTH} steps"
        )
    manifest_path.write_text(json.dumps(chosen, indent=2))
    return directory


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty Minari root (Minari reads MINARI_DATASETS_PATH on every call)."""
    path = tmp_path / "minari"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def use_root(monkeypatch, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def episodes_of(identifier: str) -> list[dict[str, np.ndarray]]:
    return [{k: getattr(ep, k) for k in KEYS} for ep in minari.load_dataset(identifier).iterate_episodes()]


def assert_clean(root: Path, expected: set[str] = frozenset()) -> None:
    """No staging folder, no temporary file, and exactly the ``expected`` datasets."""
    assert not [p for p in root.iterdir() if p.name.startswith(storage.STAGING_PREFIX)]
    assert not list(root.rglob("*.tmp-*"))
    assert set(minari.list_local_datasets()) == set(expected)
    dataset_dirs = {str(p.parent.parent.relative_to(root)) for p in root.rglob("data/metadata.json")}
    assert dataset_dirs == set(expected)


def generate(kinds, seed=0, size=SIZE, policies_dir=None, **kwargs) -> list[str]:
    return catalog.generate_env(
        "hopper",
        size=size,
        seed=seed,
        kinds=kinds,
        policies_dir=policies_dir,
        reference_episodes=REF_EPISODES,
        **kwargs,
    )


@pytest.fixture(scope="module")
def family(policies_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """random, expert and random-expert-10pct (the bases come along with the mixed id), seed 0."""
    path = tmp_path_factory.mktemp("family")
    with pytest.MonkeyPatch.context() as patch:
        use_root(patch, path)
        written = generate(("random-expert-10pct",), policies_dir=policies_dir)
    return path, written


# --------------------------------------------------------------------------------------------------
# Reproducibility


def test_a_mixed_id_brings_its_base_datasets(family):
    _, written = family
    assert written == [catalog.dataset_id("hopper", k) for k in ("random", "expert", "random-expert-10pct")]


def test_same_seed_gives_identical_arrays_and_another_seed_differs(
    family, policies_dir, tmp_path, monkeypatch
):
    first_root, written = family
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(first_root))
    first = {identifier: episodes_of(identifier) for identifier in written}
    first_refs = {i: catalog.stored_references(i) for i in written}

    use_root(monkeypatch, tmp_path / "again")
    # again, with the two base datasets collected in two processes (the family used one)
    assert generate(("random-expert-10pct",), policies_dir=policies_dir, workers=2) == written
    for identifier in written:
        again = episodes_of(identifier)
        assert len(again) == len(first[identifier])
        for a, b in zip(first[identifier], again, strict=True):
            for key in KEYS:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (identifier, key)
        assert catalog.stored_references(identifier) == first_refs[identifier]

    use_root(monkeypatch, tmp_path / "other-seed")
    generate(("random", "expert"), seed=1, policies_dir=policies_dir)
    for kind in ("random", "expert"):
        identifier = catalog.dataset_id("hopper", kind)
        other = np.concatenate([ep["observations"] for ep in episodes_of(identifier)])
        same = np.concatenate([ep["observations"] for ep in first[identifier]])
        assert other.shape != same.shape or not np.array_equal(other, same), kind
    # The reference scores do not depend on the dataset seed.
    assert catalog.stored_references(catalog.dataset_id("hopper", "random")) == first_refs[written[0]]


# --------------------------------------------------------------------------------------------------
# Mixed datasets


def hand_made(lengths, tag: float) -> list[dict[str, np.ndarray]]:
    return [
        {
            "observations": np.full((n + 1, 2), tag, np.float32),
            "actions": np.full((n, 1), tag, np.float32),
            "rewards": np.full(n, tag, np.float32),
            "terminations": np.eye(1, n, n - 1, dtype=bool)[0],
            "truncations": np.zeros(n, bool),
        }
        for n in lengths
    ]


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.5])
@pytest.mark.parametrize("size", [1_000, 9_973])
def test_mix_has_the_requested_fraction_within_one_trajectory(fraction, size):
    good = hand_made([7, 40, 113, 250], tag=1.0)
    random = hand_made([3, 11, 19, 31], tag=0.0)
    mixed = catalog.mix(good, random, fraction, size, seed=0)
    good_steps = sum(len(ep["actions"]) for ep in mixed if ep["rewards"][0] == 1.0)
    total = sum(len(ep["actions"]) for ep in mixed)
    longest_good, longest_random = 250, 31
    assert fraction * size <= good_steps < fraction * size + longest_good
    assert size <= total < size + longest_random
    assert abs(good_steps - fraction * total) <= longest_good
    # whole episodes, the inputs themselves, good ones first; and the draw is a function of the seed
    assert all(any(ep is g for g in good + random) for ep in mixed)
    kinds = [ep["rewards"][0] for ep in mixed]
    assert kinds == sorted(kinds, reverse=True)
    again = catalog.mix(good, random, fraction, size, seed=0)
    assert [id(ep) for ep in again] == [id(ep) for ep in mixed]


def test_mix_rejects_bad_arguments():
    good, random = hand_made([5], 1.0), hand_made([5], 0.0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            catalog.mix(good, random, fraction, 100, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        catalog.mix([], random, 0.1, 100, seed=0)


def test_generated_mixed_set_has_the_fraction_of_expert_transitions(family, monkeypatch):
    root, _ = family
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    expert = episodes_of(catalog.dataset_id("hopper", "expert"))
    expert_keys = {ep["observations"].tobytes() for ep in expert}
    mixed = episodes_of(catalog.dataset_id("hopper", "random-expert-10pct"))
    good = [ep for ep in mixed if ep["observations"].tobytes() in expert_keys]
    good_steps = sum(len(ep["actions"]) for ep in good)
    total = sum(len(ep["actions"]) for ep in mixed)
    longest_good = max(len(ep["actions"]) for ep in expert)
    assert 0.1 * SIZE <= good_steps < 0.1 * SIZE + longest_good
    assert abs(good_steps - 0.1 * total) <= longest_good
    assert total >= SIZE
    random_keys = {ep["observations"].tobytes() for ep in episodes_of(catalog.dataset_id("hopper", "random"))}
    assert all(ep["observations"].tobytes() in expert_keys | random_keys for ep in mixed)


# --------------------------------------------------------------------------------------------------
# Reference scores


def test_reference_scores_are_on_every_dataset(family, policies_dir, monkeypatch):
    root, written = family
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    manifest = json.loads((policies_dir / "hopper" / policies.MANIFEST).read_text())
    expert_return = {s["name"]: s["sampled_return_mean"] for s in manifest["snapshots"]}[manifest["expert"]]
    ref_min = catalog.random_reference("hopper", REF_EPISODES)
    for identifier in written:
        spec = load_dataset(identifier).spec
        assert spec.ref_min_score == pytest.approx(ref_min)
        assert spec.ref_max_score == pytest.approx(expert_return)
        metadata = minari.load_dataset(identifier).storage.metadata
        assert "Hopper-v5" in str(metadata["eval_env_spec"]) and "expert" in metadata["description"]
    # the expert data scores about 100: ref_max_score is the expert's sampled-action return, as in the data
    expert = load_dataset(catalog.dataset_id("hopper", "expert"))
    returns = np.asarray(expert.episodes.returns)[np.asarray(expert.episodes.complete, bool)]
    assert expert.spec.normalized_score(returns.mean()) == pytest.approx(100.0, rel=0.10)


def test_random_reference_counts_whole_episodes():
    # 3 episodes: a positive mean of full hopper episodes (each ends by termination or the time limit)
    runs = catalog.collect_episodes_count("hopper", catalog.random_policy("hopper", 0), 3, seed=0)
    assert len(runs) == 3
    assert all(ep["terminations"][-1] or ep["truncations"][-1] for ep in runs)
    with pytest.raises(ValueError, match="positive"):
        catalog.random_reference("hopper", 0)


# --------------------------------------------------------------------------------------------------
# On-demand generation (sweeps) and quality metrics


def test_generate_one_mixed_id_on_demand_writes_its_bases_then_reuses_them(policies_dir, root):
    mixed = catalog.dataset_id("hopper", "random-medium-5pct")
    written = catalog.generate(mixed, size=1_000, policies_dir=policies_dir, reference_episodes=REF_EPISODES)
    bases = [catalog.dataset_id("hopper", k) for k in ("random", "medium")]
    reference = catalog.dataset_id("hopper", "medium-replay")  # SACo's reference comes along
    assert written == [*bases, reference, mixed]
    before = {b: (root / b / "data" / "main_data.hdf5").stat().st_mtime_ns for b in bases}
    refs = catalog.stored_references(mixed)

    other = catalog.dataset_id("hopper", "random-medium-10pct")
    assert catalog.generate(other, size=1_000, policies_dir=policies_dir, reference_episodes=3) == [other]
    assert {b: (root / b / "data" / "main_data.hdf5").stat().st_mtime_ns for b in bases} == before
    # the family keeps one set of reference scores, even when asked for a cheaper ref_min estimate
    assert catalog.stored_references(other) == refs
    medium_keys = {ep["observations"].tobytes() for ep in episodes_of(bases[1])}
    good = sum(len(ep["actions"]) for ep in episodes_of(other) if ep["observations"].tobytes() in medium_keys)
    assert good >= 100
    assert_clean(root, {*bases, reference, mixed, other})
    # every generated dataset has its quality metrics, SACo included
    for identifier in (*bases, reference, mixed, other):
        assert math.isfinite(quality.read_quality(identifier)["saco"])


def test_a_sweep_generates_missing_ids_in_any_order(policies_dir, root, monkeypatch):
    from offbench.datasets.provision import ensure_datasets

    monkeypatch.setattr(catalog, "DEFAULT_SIZE", 600)
    monkeypatch.setattr(catalog, "REFERENCE_EPISODES", 3)
    monkeypatch.setattr(policies, "POLICIES_DIR", policies_dir)
    wanted = [catalog.dataset_id("hopper", k) for k in ("random-expert-5pct", "random", "expert")]
    ensure_datasets(wanted, catalog.generatable_ids())  # the first one brings the other two
    assert_clean(root, {*wanted, catalog.dataset_id("hopper", "medium-replay")})  # and SACo's reference
    ensure_datasets(wanted, catalog.generatable_ids())  # all present: nothing to do


def test_compute_quality_round_trips_through_read_quality(family, tmp_path, monkeypatch):
    source, _ = family
    root = use_root(monkeypatch, tmp_path / "quality")
    shutil.copytree(source / "offbench", root / "offbench")
    # medium-replay is the SACo reference; the random data stands in for it here
    reference = catalog.dataset_id("hopper", "medium-replay")
    shutil.copytree(root / catalog.dataset_id("hopper", "random"), root / reference)
    metadata_path = root / reference / "data" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "dataset_id": reference}))

    tables = catalog.compute_quality("hopper")
    assert set(tables) == set(minari.list_local_datasets())
    for identifier, table in tables.items():
        assert quality.read_quality(identifier) == json.loads(json.dumps(table))
        assert table["saco_reference"] == reference
    assert tables[reference]["saco"] == 1.0
    assert tables[catalog.dataset_id("hopper", "expert")]["tq"] > tables[reference]["tq"]
    assert quality.read_quality("offbench/hopper/medium-v0") is None
    assert quality.read_quality(str(tmp_path / "somewhere.hdf5")) is None
    assert not list(root.rglob("*.tmp-*"))

    # A generation killed after moving a dataset into place leaves it without its metrics: the next sweep
    # (or `datasets info`) completes them, equal to what the generation would have written.
    expert = catalog.dataset_id("hopper", "expert")
    quality.quality_path(expert).unlink()
    from offbench.datasets.provision import ensure_datasets

    ensure_datasets([expert], [expert])
    assert quality.read_quality(expert) == json.loads(json.dumps(tables[expert]))
    assert catalog.complete_quality(expert) is False  # nothing left to complete


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error and nothing half-written


def test_unknown_env_suggests_the_right_one(root):
    with pytest.raises(DatasetError, match="unknown environment 'hoper'.*Did you mean 'hopper'"):
        catalog.generate_env("hoper", size=100)
    with pytest.raises(DatasetError, match="Did you mean"):
        catalog.generate("offbench/hoper/expert-v0")
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        catalog.generate_env("hopper", size=100, kinds=("expret",))
    assert_clean(root)


@pytest.mark.parametrize("size", [0, -5])
def test_size_must_be_positive(root, size):
    with pytest.raises(DatasetError, match="--size must be a positive"):
        catalog.generate_env("hopper", size=size)
    assert_clean(root)


def test_an_existing_id_is_refused_with_how_to_overwrite(policies_dir, root):
    identifier = catalog.dataset_id("hopper", "random")
    generate(("random",), size=300, policies_dir=policies_dir)
    before = episodes_of(identifier)
    with pytest.raises(DatasetError, match="already exist.*--overwrite"):
        generate(("random",), size=300, seed=1, policies_dir=policies_dir)
    # on demand (sweeps), an existing dataset is simply there
    assert catalog.generate(identifier, size=300, policies_dir=policies_dir) == []
    assert_clean(root, {identifier})
    after = episodes_of(identifier)
    assert all(np.array_equal(a["actions"], b["actions"]) for a, b in zip(before, after, strict=True))
    # --overwrite replaces it
    generate(("random",), size=300, seed=1, policies_dir=policies_dir, overwrite=True)
    assert not np.array_equal(episodes_of(identifier)[0]["actions"], before[0]["actions"])
    assert_clean(root, {identifier})


def test_a_damaged_dataset_folder_is_reported_before_any_work(policies_dir, root):
    damaged = root / catalog.dataset_id("hopper", "random") / "data"
    damaged.mkdir(parents=True)
    (damaged / "main_data.hdf5").write_bytes(b"half")
    for kinds in (("random",), ("random-expert-5pct",)):
        with pytest.raises(DatasetError, match="no complete Minari dataset.*--overwrite"):
            generate(kinds, size=300, policies_dir=policies_dir)
    assert not (root / catalog.dataset_id("hopper", "expert")).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(storage.STAGING_PREFIX)]


@pytest.mark.parametrize("damage", ["flipped bytes", "undecodable"])
def test_a_corrupt_policy_checkpoint_is_reported(policies_dir, tmp_path, root, damage):
    broken = copy_policies(tmp_path / "policies", policies_dir)
    manifest_path = broken / "hopper" / policies.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entry = {s["name"]: s for s in manifest["snapshots"]}[manifest["expert"]]
    path = broken / "hopper" / entry["file"]
    payload = bytearray(path.read_bytes())
    if damage == "flipped bytes":
        payload[len(payload) // 2] ^= 0xFF
        path.write_bytes(bytes(payload))
        message = "is corrupt"
    else:  # a truncated file whose checksum the manifest agrees with
        import hashlib

        path.write_bytes(bytes(payload[:1000]))
        entry["sha256"] = hashlib.sha256(bytes(payload[:1000])).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
        message = "cannot be decoded"
    for kinds in (("random",), ("expert",), catalog.KINDS):
        with pytest.raises(DatasetError, match=message) as error:
            generate(kinds, size=300, policies_dir=broken)
        assert str(path) in str(error.value)
    assert_clean(root)


def test_an_undesignated_medium_policy_names_make_policies(policies_dir, tmp_path, root):
    weak = copy_policies(tmp_path / "policies", policies_dir)
    manifest_path = weak / "hopper" / policies.MANIFEST
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "medium": None}))
    for kinds in (("medium",), ("medium-replay",), ("random-medium-1pct",), catalog.KINDS):
        with pytest.raises(DatasetError, match="designates no medium policy.*make policies"):
            generate(kinds, size=300, policies_dir=weak)
    assert_clean(root)
    # kinds that need no medium policy still work
    assert generate(("random-expert-50pct",), size=300, policies_dir=weak) == [
        catalog.dataset_id("hopper", k) for k in ("random", "expert", "random-expert-50pct")
    ]


def test_missing_policies_name_make_policies(tmp_path, root):
    with pytest.raises(DatasetError, match="no behaviour policies for hopper.*make policies"):
        generate(("random",), size=300, policies_dir=tmp_path / "nothing")
    assert_clean(root)


def test_a_failure_while_writing_leaves_nothing_behind(policies_dir, root, monkeypatch):
    real = storage.write_minari

    def write_then_fail(identifier, *args, **kwargs):
        real(identifier, *args, **kwargs)
        if identifier.endswith("/expert-v0"):
            raise OSError("disk full")

    monkeypatch.setattr(storage, "write_minari", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        generate(("random", "expert"), size=300, policies_dir=policies_dir)
    # the dataset finished before the failure stays; the failed one left no trace
    assert_clean(root, {catalog.dataset_id("hopper", "random")})


def test_stale_staging_of_a_dead_process_is_removed(root):
    stale = root / f"{storage.STAGING_PREFIX}999999999"
    (stale / "offbench").mkdir(parents=True)
    storage.remove_stale_staging()
    assert not stale.exists()


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_generates_lists_and_prints_quality(policies_dir, root, monkeypatch):
    monkeypatch.setattr(policies, "POLICIES_DIR", policies_dir)
    runner = CliRunner()
    result = runner.invoke(app, ["datasets", "generate", "--env", "hopper", "--size", "2000"])
    assert result.exit_code == 0, result.output
    ids = {catalog.dataset_id("hopper", kind) for kind in catalog.KINDS}
    assert_clean(root, ids)
    stored = {identifier: quality.read_quality(identifier) for identifier in ids}
    assert all(table is not None for table in stored.values())
    # computed from the episodes in memory during generation; the same when read back from disk
    from_disk = catalog.compute_quality("hopper")
    assert json.dumps(from_disk, sort_keys=True) == json.dumps(stored, sort_keys=True)

    listing = runner.invoke(app, ["datasets", "list"])
    assert listing.exit_code == 0 and all(identifier in listing.output for identifier in ids)
    assert "no reference scores" not in listing.output

    expert = catalog.dataset_id("hopper", "expert")
    info = runner.invoke(app, ["datasets", "info", expert])
    assert info.exit_code == 0, info.output
    lines = dict(line.split(None, 1) for line in info.output.splitlines() if line.strip())
    assert float(lines["tq"]) == pytest.approx(stored[expert]["tq"])
    assert float(lines["saco"]) == pytest.approx(stored[expert]["saco"])

    again = runner.invoke(app, ["datasets", "generate", "--env", "hopper", "--size", "2000"])
    assert again.exit_code == 2 and "--overwrite" in again.output and "--missing-only" in again.output
    # --missing-only fills in what is missing, built from the stored bases: the same arrays as before.
    medium_expert = catalog.dataset_id("hopper", "medium-expert")
    before = episodes_of(medium_expert)
    shutil.rmtree(root / medium_expert)
    missing_only = ["datasets", "generate", "--env", "hopper", "--size", "2000", "--missing-only"]
    filled = runner.invoke(app, missing_only)
    assert filled.exit_code == 0 and "hopper: 1 datasets written" in filled.output, filled.output
    for old, new in zip(before, episodes_of(medium_expert), strict=True):
        assert all(np.array_equal(old[key], new[key]) for key in KEYS)
    assert quality.read_quality(medium_expert) == stored[medium_expert]
    nothing = runner.invoke(app, missing_only)
    assert nothing.exit_code == 0 and "every dataset already exists" in nothing.output
    for args, message in ((["--env", "hoper"], "Did you mean 'hopper'"), (["--size", "0"], "positive")):
        bad = runner.invoke(app, ["datasets", "generate", *args])
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), bad.output
    assert_clean(root, ids)
