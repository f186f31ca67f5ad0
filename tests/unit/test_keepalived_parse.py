"""keepalived.conf reading and parsing: the broken corpus (tests/unit/keepalived/broken) with the
exact ``file:line: what`` lines, keepalived's syntax rules one by one, the bounds, and hostile
input (never a traceback: a result or a KeepalivedError).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.cli import main
from hacontrol.migrate import keepalived_source as ks
from hacontrol.migrate.command import import_keepalived
from hacontrol.migrate.keepalived_glob import expand_braces
from hacontrol.migrate.keepalived_parse import Node, parse_file, split_script
from hacontrol.migrate.keepalived_source import KeepalivedError, decomment

BROKEN = Path(__file__).resolve().parent / "keepalived" / "broken"

# file -> the exact error lines (paths relative to BROKEN)
EXPECTED = {
    "unclosed.conf": ["unclosed.conf:5: the '{' of 'virtual_server 203.0.113.10' is never closed"],
    "extra-close.conf": ["extra-close.conf:4: '}' without a '{' to close"],
    "missing-include.conf": ["missing-include.conf:4: include conf.d/nothere.conf: no such file"],
    "includea-nomatch.conf": ["includea-nomatch.conf:4: includea conf.d/*.conf: no file matches"],
    "loop-a.conf": ["loop-b.inc:4: include loop: loop-a.conf -> loop-b.inc -> loop-a.conf"],
    "bad-address.conf": ["bad-address.conf:5: real_server: '198.51.100.300' is not an IP address"],
    "bad-weight.conf": ["bad-weight.conf:6: weight: 'abc' is not a whole number"],
    "bad-status.conf": ["bad-status.conf:9: status_code: status code 700 is out of keepalived's "
                        "range 100..599"],
    "open-quote.conf": ["open-quote.conf:2: unterminated quote: 'router_id \"director'"],
    "misc-no-path.conf": ["misc-no-path.conf:6: MISC_CHECK: no misc_path (keepalived skips such "
                          "a MISC_CHECK)"],
    "macro-loop.conf": ["macro-loop.conf:3: definitions expand without end (more than 1000 "
                        "replacements or 1022 bytes)"],
    "seq.conf": ["seq.conf:1: ~SEQ blocks are not supported by the importer: expand them by hand"],
}


def test_every_broken_file_has_its_expected_errors() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in BROKEN.glob("*.conf"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_corpus(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    with pytest.raises(KeepalivedError) as ei:
        import_keepalived(name, "director-a")
    assert [str(i) for i in ei.value.issues] == EXPECTED[name]
    out, err = io.StringIO(), io.StringIO()
    assert main(["import-keepalived", name], out, err) == 1
    n = len(EXPECTED[name])
    assert err.getvalue() == "\n".join([*EXPECTED[name], f"{name}: {n} error"]) + "\n"
    assert out.getvalue() == ""


def _tree(tmp_path: Path, text: str, host: str = "h1", name: str = "k.conf") -> list[Node]:
    (tmp_path / name).write_text(text)
    return parse_file(str(tmp_path / name), host).nodes


def _flat(nodes: list[Node], depth: int = 0) -> list[tuple[int, tuple[str, ...], int]]:
    out = []
    for n in nodes:
        out.append((depth, n.words, n.line))
        out.extend(_flat(n.block(), depth + 1))
    return out


def test_braces_on_one_line_or_many_give_the_same_tree(tmp_path: Path) -> None:
    one = _tree(tmp_path, "a 1 { b 2 { c } d { e 3 } }\n", name="one.conf")
    many = _tree(tmp_path, "a 1\n{\n b 2 {\n  c\n }\n d\n {\n  e 3 }\n}\n", name="many.conf")
    strip = [(d, w) for d, w, _ in _flat(one)]
    assert strip == [(d, w) for d, w, _ in _flat(many)] == [
        (0, ("a", "1")), (1, ("b", "2")), (2, ("c",)), (1, ("d",)), (2, ("e", "3"))]
    assert [ln for _, _, ln in _flat(many)] == [1, 3, 4, 6, 8]


def test_comments_and_quotes(tmp_path: Path) -> None:
    nodes = _tree(tmp_path, 'a "x # y" ! gone\nb \\#1 # gone\n# c\n!d\nq "{not a block}"\n')
    assert [n.words for n in nodes] == [("a", "x # y"), ("b", "#1"), ("q", "{not a block}")]
    assert decomment('  k "a!b" \\!x  ! c') == ('k "a!b" !x', False, False)
    assert decomment("k v \\") == ("k v", True, False)
    assert decomment('k "open') == ('k "open', False, True)


def test_script_splitting_as_keepalived() -> None:
    assert split_script("""misc_path "/bin/x 'a b' \\"c\\" \\x41\\t" user""") == [
        "misc_path", "/bin/x 'a b' \"c\" A\t", "user"]
    assert split_script("/bin/x 'a b' \"c d\" e\\ f") == ["/bin/x", "a b", "c d", "e f"]
    assert split_script("x 'open") is None


def test_host_lines(tmp_path: Path) -> None:
    text = "@h1 a 1\n@h2 a 2\n@^h1 b 1\n@^h2 b 2\n@h1\n"
    assert [n.words for n in _tree(tmp_path, text, "h1")] == [("a", "1"), ("b", "2")]
    assert [n.words for n in _tree(tmp_path, text, "h3")] == [("b", "1"), ("b", "2")]


def test_definitions(tmp_path: Path) -> None:
    text = (
        "$A=1\n$B=${A}0\n$C=$A $B\n"
        "x $A ${B}x $C $UNDEF $Ax\n"  # $Ax: not $A followed by a blank
        "$A=2\ny ${B}\n"  # replaced when used, not when defined
        "$M= \\\n m1 ${A} \\\n   # a comment line inside\n m2 {\\\n  m3\\\n }\n"
        "$M\n"
        "$IF=@h1\n$IF z 1\n"
        "p ${_PWD} ${_INSTANCE}\n"
    )
    nodes = _tree(tmp_path, text)
    assert [n.words for n in nodes] == [
        ("x", "1", "10x", "1", "10", "$UNDEF", "$Ax"), ("y", "20"),
        ("m1", "2"), ("m2",), ("z", "1"), ("p", str(tmp_path), "h1")]
    assert nodes[3].block()[0].words == ("m3",)
    assert {n.line for n in nodes[2:4]} == {13}  # a multi-line definition: the line of its use


@pytest.mark.parametrize("text", ["x ${_RANDOM}\n", "x ${_ENV HOME}\n"])
def test_definitions_left_out_are_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(KeepalivedError, match=r"k\.conf:1: \$\{_(RANDOM|ENV)\} is not supported"):
        _tree(tmp_path, text)


def test_includes(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "1.conf").write_text("one\ninclude e/*.conf\n")  # relative to d/
    (tmp_path / "d" / "e" / "x.conf").write_text("ex\n")
    (tmp_path / "d" / "2.conf").write_text("two\n")
    (tmp_path / "d" / "3.conf").write_text("three\n")
    (tmp_path / "d" / "3.conf").chmod(0o755)  # keepalived skips executable files
    (tmp_path / "d" / "sub.conf").mkdir()  # and directories
    text = "a\ninclude d/{2,1}.conf\ninclude d/[3s]*.conf\ninclude none/*.conf\nb\n"
    (tmp_path / "k.conf").write_text(text)
    parsed = parse_file(str(tmp_path / "k.conf"), "h")
    assert [(n.keyword, os.path.basename(n.file), n.line) for n in parsed.nodes] == [
        ("a", "k.conf", 1), ("two", "2.conf", 1), ("one", "1.conf", 1), ("ex", "x.conf", 1),
        ("b", "k.conf", 5)]
    what = [w.what for w in parsed.warnings]
    assert any("3.conf: executable: skipped" in w for w in what)
    assert any("sub.conf: a directory: skipped" in w for w in what)
    assert "include none/*.conf: no file matches (nothing read)" in what


def test_include_depth_and_size_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        (tmp_path / f"{i}.conf").write_text(f"include {i + 1}.conf\n")
    (tmp_path / "20.conf").write_text("end\n")
    with pytest.raises(KeepalivedError, match=r"15\.conf:1: includes nested more than 16 deep"):
        parse_file(str(tmp_path / "0.conf"), "h")
    monkeypatch.setattr(ks, "MAX_FILE_BYTES", 100)
    (tmp_path / "big.conf").write_text("a b\n" * 30)
    with pytest.raises(KeepalivedError, match=r"big\.conf: larger than 100 bytes"):
        parse_file(str(tmp_path / "big.conf"), "h")


@pytest.mark.parametrize(("data", "what"), [
    (b"a\n" + b"x" * 1023 + b"\n", "k.conf:2: line longer than 1022 bytes"),
    (b"a\nb\0c\n", "k.conf:2: NUL character"),
    (b"a\n\xff\n", "k.conf:2: not UTF-8 text"),
    (b"a {\n{\n}\n}\n", "k.conf:2: '{' without a keyword before it"),
])
def test_hostile_bytes(tmp_path: Path, data: bytes, what: str) -> None:
    (tmp_path / "k.conf").write_bytes(data)
    with pytest.raises(KeepalivedError) as ei:
        parse_file(str(tmp_path / "k.conf"), "h")
    assert str(ei.value.issues[0]).endswith(what) or what in str(ei.value.issues[0])


def test_unreadable_file(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["import-keepalived", str(tmp_path / "none.conf")], io.StringIO(), err) == 1
    assert err.getvalue().startswith(f"{tmp_path}/none.conf: cannot read: No such file")


def test_brace_expansion_is_bounded() -> None:
    assert expand_braces("a{b,c{d,e}}f") == ["abf", "acdf", "acef"]
    assert expand_braces("x{}y") == ["x{}y"]
    assert expand_braces("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}{o,p}{q,r}") is None


_WORDS = st.sampled_from([
    "{", "}", '"', "'", "\\", "#", "!", "@h1", "@^h1", "$A=", "${A}", "$A", "~SEQ(", "include",
    "virtual_server", "real_server", "203.0.113.1", "80", "vrrp_instance", "VI", "priority",
    "unicast_peer", "192.0.2.1", "virtual_ipaddress", "TCP_CHECK", "HTTP_GET", "url", "path",
    "/", "status_code", "MISC_CHECK", "misc_path", "lb_kind", "DR", "weight", "-1", "\n", " ",
    "virtual_server_group", "group", "fwmark", "notify", "x" * 40,
])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_WORDS, max_size=60))
def test_hostile_input_never_a_traceback(tmp_path: Path, words: list[str]) -> None:
    (tmp_path / "h.conf").write_text(" ".join(words))
    out, err = io.StringIO(), io.StringIO()
    rc = main(["import-keepalived", str(tmp_path / "h.conf"), "--host", "h1"], out, err)
    assert rc in (0, 1)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
