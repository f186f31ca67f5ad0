"""ruff and mypy (strict, pyproject's config) run with the suite, so CI fails when either complains.

Each runs as a subprocess of this interpreter from the repository root, exactly as a developer
runs them (``ruff check hacontrol tests bench``; ``mypy`` with ``[tool.mypy]`` from pyproject.toml:
strict, package ``hacontrol``); the failure message is the tool's own output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def test_ruff_check_is_clean() -> None:
    r = _run("ruff", "check", "--no-cache", "hacontrol", "tests", "bench")
    if r.returncode != 0:
        pytest.fail(f"ruff failed (exit {r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    # a private cache: a stale or concurrent .mypy_cache can neither hide nor invent an error
    r = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    if r.returncode != 0:
        pytest.fail(f"mypy failed (exit {r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)
    assert "Success" in r.stdout, r.stdout
