"""The suite collects as one run: test modules live in folders without __init__.py (pytest's
rootdir-relative "prepend" import), so two test files with one basename in different folders
collide when the whole suite runs (`import file mismatch`), though each folder passes alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_basename_is_unique() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name != "conftest.py" and "__pycache__" not in path.parts:
            seen[path.name].append(str(path.relative_to(TESTS)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def test_the_whole_suite_collects() -> None:
    """Every test module imports (a root-only or guest-only module that no unit run imports
    would otherwise break only the full run)."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(TESTS)],
        capture_output=True, text=True, timeout=300, cwd=TESTS.parent,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
