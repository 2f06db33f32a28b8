"""Assemble BENCHMARKS.md from the reports the benchmarks wrote under tests/benchmarks/reports.

Run: ``.venv/bin/python -m tests.benchmarks.collect`` (after running any benchmark). Each
report keeps the command that produced it; this only puts them on one page, in a fixed order.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "tests" / "benchmarks" / "reports"
ORDER = ["lattices", "dataflow", "consume", "operators", "client_kafka", "naive_faust", "overcount"]

HEADER = """# Benchmarks

Measured on this project's machine (2 cores, shared), on demand — never in the test run. Each
section is a report written by the benchmark named in it, with the command that produced it;
figures are medians of several runs, with ratios against a baseline measured in the same run
where the benchmark has one. Reassemble this page with
`.venv/bin/python -m tests.benchmarks.collect`.
"""


def main() -> None:
    names = [n for n in ORDER if (REPORTS / f"{n}.md").exists()]
    names += sorted(p.stem for p in REPORTS.glob("*.md") if p.stem not in ORDER)
    parts = [HEADER]
    for name in names:
        text = (REPORTS / f"{name}.md").read_text().strip()
        # Links inside a report are relative to the reports folder.
        text = re.sub(r"\]\((?!https?:|/|#)(?:\./)?", "](tests/benchmarks/reports/", text)
        parts.append(f"<!-- from tests/benchmarks/reports/{name}.md -->\n{text}\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"BENCHMARKS.md: {len(names)} reports ({', '.join(names)})")


if __name__ == "__main__":
    main()
