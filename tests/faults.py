"""The README's fault table, produced by the tests that inject each fault (never written by hand).

A test that injects a fault or feeds a bad input calls :func:`record` with what it did and what it
observed (the one-line error, or what happened). ``python -m pytest --fault-table`` rewrites the
README section between the markers below from the rows recorded in that session; the default run
only checks that every row it recorded is already in the README, so the table cannot go stale.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"
AREAS = ("cache", "results", "training", "saved models", "config", "data", "encoders")

ROWS: dict[tuple[str, str], str] = {}


def normalize(text: str, *roots) -> str:
    """One line, with the test's temporary folders replaced by ``<tmp>`` so the table is stable."""
    text = str(text).strip().splitlines()[0] if str(text).strip() else ""
    for root in roots:
        text = text.replace(str(root), "<tmp>")
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s'\"]+", "<tmp>", text)
    # A model given by its temporary path names its cache folder after that path.
    text = re.sub(r"__tmp__pytest-of-[^/\s]*?__model-", "<model>-", text)
    text = re.sub(r"-[0-9a-f]{12}\b", "-<hash>", text)
    text = re.sub(r"pid \d+", "pid N", text)
    text = re.sub(r"\d{8}T\d{6}", "<time>", text)
    return text.replace("|", "\\|")


def record(area: str, fault: str, outcome: str, *roots) -> None:
    """Record one injected fault (``area``: one of AREAS) and its observed ``outcome``."""
    if area not in AREAS:
        raise ValueError(f"area must be one of {AREAS}, got {area!r}")
    ROWS[(area, fault)] = normalize(outcome, *roots)


def render() -> str:
    lines = ["| area | fault injected or input given | observed outcome |", "|---|---|---|"]
    for (area, fault), outcome in sorted(ROWS.items(), key=lambda kv: (AREAS.index(kv[0][0]), kv[0][1])):
        lines.append(f"| {area} | {fault} | {outcome} |")
    return "\n".join(lines)


def readme_table() -> str:
    text = README.read_text()
    if START not in text or END not in text:
        return ""
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write_readme() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{render()}\n{END}{tail}")


def missing_from_readme() -> list[str]:
    """Rows recorded in this session that the README's table lacks (or shows with another outcome)."""
    table = readme_table()
    rows = render().splitlines()[2:]
    return [row for row in rows if row not in table]
