"""The results schema as a markdown table, generated from the tables' parquet schemas and their column
descriptions (:data:`offbench.bench.results.COLUMN_DOCS`), so the documentation cannot drift from what
offbench writes.

``python -m offbench.bench.schema_doc docs/results.md`` rewrites the table between the page's two
markers and leaves the hand-written text around it alone; a test fails when the committed page differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from offbench.bench.results import KEY_FIELDS, PROVENANCE_FIELDS, SCHEMA_VERSION, SCHEMAS
from offbench.files import write_text_atomic

BEGIN = (
    "<!-- BEGIN results schema, generated: edit bench/results.py, run python -m offbench.bench.schema_doc -->"
)
END = "<!-- END results schema -->"
SHARED = [*KEY_FIELDS, *PROVENANCE_FIELDS]


def schema_table() -> str:
    """One row per column: the job keys, each table's own columns, then the provenance every row carries;
    with its type, the tables that have it, and its description."""
    tables: dict[str, list[str]] = {}
    for table, schema in SCHEMAS.items():
        for name in schema.names:
            tables.setdefault(name, []).append(table)
    own = [field for schema in SCHEMAS.values() for field in schema if field not in SHARED]
    ordered = {field.name: field for field in [*KEY_FIELDS, *own, *PROVENANCE_FIELDS]}
    lines = [
        f"Schema version {SCHEMA_VERSION}.",
        "",
        "| column | type | tables | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in ordered.items():
        where = "all" if len(tables[name]) == len(SCHEMAS) else ", ".join(tables[name])
        description = field.metadata[b"description"].decode().replace("|", "\\|")
        lines.append(f"| `{name}` | {field.type} | {where} | {description} |")
    return "\n".join(lines)


def with_schema_table(page: str) -> str:
    """``page`` with the text between its markers replaced by :func:`schema_table`."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"the page needs the two marker lines, once each and in this order:\n{BEGIN}\n{END}")
    before, rest = page.split(BEGIN)
    _, after = rest.split(END)
    return f"{before}{BEGIN}\n{schema_table()}\n{END}{after}"


def main(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print("usage: python -m offbench.bench.schema_doc docs/results.md", file=sys.stderr)
        return 2
    path = Path(arguments[0])
    try:
        page = with_schema_table(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    write_text_atomic(path, page)
    print(f"{path}: results schema table written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
