"""The documentation cannot drift: every ``offbench`` command shown exists with the options shown, the
README lists every built-in suite, and the results schema page equals the one the code generates."""

from __future__ import annotations

import pytest
from docs_check import REPOSITORY, built_in_suites, check_document, main, unlisted_suites

from offbench.bench import schema_doc

DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_command_and_option_a_document_shows_exists(document):
    assert check_document(document) == []


def test_the_readme_lists_every_built_in_suite():
    assert built_in_suites() and unlisted_suites(REPOSITORY / "README.md") == []


def test_the_check_catches_a_misspelt_option_an_unknown_command_and_an_unlisted_suite(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        "Run\n\n```bash\n.venv/bin/offbench run --algorithm td3bc \\\n"
        "    --dataset x/y-v0 --eval-evry 5\n```\n\n"
        "then `offbench datasets generat --env hopper` and `offbench sweep ci [--donwload]`; suites: "
        + ", ".join(f"`{suite}`" for suite in built_in_suites() if suite != "maze")
        + ".\n"
    )
    assert main([str(readme)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{readme}: `offbench run` has no option --eval-evry "
        "(in `offbench run --algorithm td3bc --dataset x/y-v0 --eval-evry 5`)",
        f"{readme}: `offbench datasets` has no command 'generat' "
        "(in `offbench datasets generat --env hopper`)",
        f"{readme}: `offbench sweep` has no option --donwload (in `offbench sweep ci --donwload`)",
        f"{readme}: the built-in suite 'maze' is not listed",
    ]


def test_the_results_page_is_the_generated_one():
    page = (REPOSITORY / "docs" / "results.md").read_text()
    assert page == schema_doc.with_schema_table(page), (
        "docs/results.md is out of date: run .venv/bin/python -m offbench.bench.schema_doc docs/results.md"
    )


def test_the_schema_generator_rewrites_only_its_block(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"# Hand-written\n\n{schema_doc.BEGIN}\nstale\n{schema_doc.END}\n\nMore prose.\n")
    assert schema_doc.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Hand-written\n\n") and text.endswith(f"{schema_doc.END}\n\nMore prose.\n")
    assert "stale" not in text and "| `final_score` | double | runs |" in text
    page.write_text("no markers")
    assert schema_doc.main([str(page)]) == 2 and page.read_text() == "no markers"
