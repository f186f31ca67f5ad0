"""The corpus against keepalived itself (Debian's keepalived 2.2, ``keepalived --config-test``):
every good file is accepted by the real parser, every broken one that keepalived also refuses is
refused by it — so the importer's idea of the syntax is checked against the reference, not only
against itself. keepalived is a test dependency (scripts/dev installs it): without the binary
these tests fail, they do not skip.

``--config-test`` also checks the machine it runs on (interfaces named in the file exist, the
script user exists); those messages are about this test machine, not the syntax, and are the only
ones allowed for a good file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_keepalived_parse import EXPECTED

CORPUS = Path(__file__).resolve().parent / "keepalived"
GOOD = sorted(p for p in (CORPUS / "good").rglob("*.conf")
              if "conf.d" not in p.parts and p.name != "unknown-keyword.conf")
# Errors of ours that keepalived reads on past (exit 0): a missing file with plain `include`
# (keepalived only logs it), an include loop (it recurses until it runs out of file descriptors,
# then skips the file).
KEEPALIVED_ACCEPTS = {"missing-include.conf", "loop-a.conf"}
MACHINE = re.compile(
    r"doesn't exist|Non-existent interface|default user|track script \S+ not found"
)


def _config_test(path: Path, host: str) -> tuple[int, list[str]]:
    binary = shutil.which("keepalived") or "/usr/sbin/keepalived"
    assert Path(binary).exists(), "keepalived is not installed (bash scripts/dev deps)"
    p = subprocess.run([binary, "--config-test", "-f", str(path), "-i", host],
                       capture_output=True, text=True, timeout=60, cwd=path.parent)
    return p.returncode, sorted(set(p.stderr.splitlines()))


@pytest.mark.parametrize("path", GOOD, ids=lambda p: str(p.relative_to(CORPUS)))
@pytest.mark.parametrize("host", ["director-a", "director-b"])
def test_keepalived_accepts_every_good_file(path: Path, host: str) -> None:
    rc, lines = _config_test(path, host)
    syntax = [ln for ln in lines if not MACHINE.search(ln)]
    assert syntax == [], syntax
    assert rc == 0 or lines, (rc, lines)


def test_keepalived_refuses_unknown_keywords_the_importer_notes() -> None:
    rc, lines = _config_test(CORPUS / "good" / "unknown-keyword.conf", "director-a")
    assert rc != 0 and any("Unknown keyword 'unknown_thing'" in ln for ln in lines)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - KEEPALIVED_ACCEPTS))
def test_keepalived_refuses_the_broken_files(name: str) -> None:
    rc, lines = _config_test(CORPUS / "broken" / name, "director-a")
    assert rc != 0, lines


@pytest.mark.parametrize("name", sorted(KEEPALIVED_ACCEPTS))
def test_what_keepalived_reads_on_past(name: str) -> None:
    """Documents the difference: keepalived goes on without the file, the importer refuses."""
    rc, lines = _config_test(CORPUS / "broken" / name, "director-a")
    assert rc == 0 and lines, lines
