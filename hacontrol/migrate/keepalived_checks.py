"""keepalived's checkers (``TCP_CHECK``, ``HTTP_GET``, ``SSL_GET``, ``MISC_CHECK``) -> a check.

The timing is inherited as keepalived 2.2 inherits it (``check_data.c``): a checker's own
``delay_loop``, ``connect_timeout``, ``retry`` (``nb_get_retry``) and ``delay_before_retry``,
else its real server's, else its virtual server's, else keepalived's defaults (delay_loop 60 s,
connect_timeout 5 s, retry 1 — 0 for MISC_CHECK). Mapped so that a server goes down after the
same number of failed probes: keepalived marks it down when a probe and its ``retry`` retries all
fail, so ``fall = retry + 1``; one success brings it back (``rise: 1``). ``delay_loop`` is the
check ``interval``, ``connect_timeout`` (``misc_timeout``, else delay_loop, for MISC_CHECK) its
``timeout``, kept below the interval as hacontrol requires. What has no equivalent (a digest,
retries spaced by ``delay_before_retry``, ``misc_dynamic``...) becomes a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from hacontrol.migrate.keepalived_parse import Node, split_script
from hacontrol.migrate.keepalived_values import Ctx, fmt_duration
from hacontrol.migrate.yaml_out import Flow, Map

CHECKERS = {"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "https", "MISC_CHECK": "exec"}
OTHER_CHECKERS = ("SMTP_CHECK", "DNS_CHECK", "UDP_CHECK", "PING_CHECK", "BFD_CHECK",
                  "FILE_CHECK")
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
INTERVAL_RANGE = (0.1, 3600.0)
TIMEOUT_RANGE = (0.01, 600.0)


@dataclass
class Timing:
    """The settings a checker inherits from its real server and virtual server."""

    delay_loop: float | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    virtualhost: str | None = None


@dataclass(frozen=True)
class CheckSpec:
    type: str
    interval: float
    timeout: float
    fall: int
    port: int | None = None
    path: str | None = None
    expect_status: tuple[int, ...] | None = None
    host: str | None = None
    verify_tls: bool | None = None
    command: tuple[str, ...] | None = None

    def to_map(self) -> Map:
        m = Map()
        m.add("type", self.type)
        m.add("interval", fmt_duration(self.interval), "delay_loop")
        m.add("timeout", fmt_duration(self.timeout))
        m.add("rise", 1, "keepalived: one good probe brings a server back")
        m.add("fall", self.fall, "keepalived: the probe and its retries all failed")
        if self.port is not None:
            m.add("port", self.port, "connect_port")
        if self.path is not None:
            m.add("path", self.path)
        if self.expect_status is not None:
            m.add("expect_status", Flow(list(self.expect_status)))
        if self.host is not None:
            m.add("host", self.host, "virtualhost")
        if self.verify_tls is not None:
            m.add("verify_tls", self.verify_tls, "keepalived's SSL_GET does not verify the "
                  "certificate; set true once the real servers' certificates verify")
        if self.command is not None:
            m.add("command", Flow(list(self.command)))
        return m


@dataclass
class CheckResult:
    spec: CheckSpec | None
    notes: list[str] = field(default_factory=list)


def timing(ctx: Ctx, st: Node, t: Timing) -> bool:
    """Read ``st`` into ``t`` if it is one of the inherited settings; False if it is not."""
    kw = st.keyword
    if kw == "delay_loop":
        t.delay_loop = ctx.seconds(st, ctx.arg(st, 0, "seconds"), "delay_loop", 0.000001)
    elif kw == "connect_timeout":
        t.connect_timeout = ctx.seconds(st, ctx.arg(st, 0, "seconds"), "connect_timeout", 0.000001)
    elif kw in ("retry", "nb_get_retry"):
        t.retry = ctx.integer(st, ctx.arg(st, 0, "count"), 0, 2**32 - 1, kw)
    elif kw == "delay_before_retry":
        t.delay_before_retry = ctx.seconds(st, ctx.arg(st, 0, "seconds"), kw)
    elif kw == "virtualhost":
        t.virtualhost = ctx.arg(st, 0, "host name")
    else:
        return False
    return True


def inherit(base: Timing, own: Timing) -> Timing:
    """``own``'s settings, and ``base``'s where ``own`` has none."""
    kw = {f.name: getattr(own, f.name) for f in fields(Timing)}
    return Timing(**{k: v if v is not None else getattr(base, k) for k, v in kw.items()})


def convert_checker(ctx: Ctx, chk: Node, inherited: Timing) -> CheckResult:
    """One checker block of a real server -> a check (None if it cannot be one) and notes."""
    kind = CHECKERS[chk.keyword]
    res = CheckResult(None)
    own = Timing()
    port: int | None = None
    misc_timeout: float | None = None
    command: tuple[str, ...] | None = None
    urls: list[Node] = []
    for st in chk.block():
        kw = st.keyword
        if timing(ctx, st, own):
            continue
        if kw == "connect_port":
            port = ctx.integer(st, ctx.arg(st, 0, "port"), 1, 65535, "connect_port")
        elif kind in ("http", "https") and kw == "url":
            urls.append(st)
        elif kind == "exec" and kw == "misc_path":
            command = _script(ctx, st)
        elif kind == "exec" and kw == "misc_timeout":
            misc_timeout = ctx.seconds(st, ctx.arg(st, 0, "seconds"), kw, 0.000001)
        elif kind == "exec" and kw == "misc_dynamic":
            res.notes.append(f"misc_dynamic ({st.where}) not carried over: keepalived set the "
                             "weight from exit codes 2-255 and kept the server up; hacontrol "
                             "takes any exit code but 0 as a failure")
        else:
            res.notes.append(f"{chk.keyword} {kw} ({st.where}) not carried over: no hacontrol "
                             "equivalent")
    t = inherit(inherited, own)
    interval = t.delay_loop if t.delay_loop is not None else DEFAULT_DELAY_LOOP
    retry = t.retry if t.retry is not None else (0 if kind == "exec" else 1)
    if kind == "exec":
        timeout = misc_timeout or interval
    else:
        timeout = t.connect_timeout if t.connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT
    interval, timeout = _fit(res.notes, chk, interval, timeout)
    if retry:
        dbr = t.delay_before_retry if t.delay_before_retry is not None else (
            3.0 if kind in ("http", "https") else 1.0)
        res.notes.append(f"{chk.keyword} ({chk.where}): keepalived retried a failed probe "
                         f"{retry} time(s) after delay_before_retry {fmt_duration(dbr)}; "
                         f"hacontrol probes every interval, so it marks a server down after "
                         f"{retry + 1} x {fmt_duration(interval)}")
    spec = CheckSpec(kind, interval, timeout, min(retry + 1, 1000), port=port)
    if kind in ("http", "https"):
        spec = _http(ctx, res.notes, chk, urls, spec, t.virtualhost)
    elif kind == "exec" and command is None:
        ctx.error(chk, "no misc_path (keepalived skips such a MISC_CHECK)")
        return res
    elif kind == "exec":
        spec = replace(spec, command=command)
    res.spec = spec
    return res


def _fit(notes: list[str], chk: Node, interval: float, timeout: float) -> tuple[float, float]:
    lo, hi = INTERVAL_RANGE
    if not lo <= interval <= hi:
        new = min(max(interval, lo), hi)
        notes.append(f"{chk.keyword} ({chk.where}): delay_loop {fmt_duration(interval)} is "
                     f"outside hacontrol's interval range 100ms..1h: {fmt_duration(new)} used")
        interval = new
    t = min(max(timeout, TIMEOUT_RANGE[0]), TIMEOUT_RANGE[1])
    if t >= interval:
        t = max(round(interval * 0.8, 3), TIMEOUT_RANGE[0])
    if t != timeout:
        notes.append(f"{chk.keyword} ({chk.where}): timeout {fmt_duration(timeout)} does not fit "
                     f"hacontrol (10ms..10m and below the interval {fmt_duration(interval)}): "
                     f"{fmt_duration(t)} used")
    return interval, t


def _script(ctx: Ctx, st: Node) -> tuple[str, ...] | None:
    """keepalived's script splitting: the line split shell-like, then its first argument split
    again into the program and its arguments."""
    line = split_script(st.raw)
    argv = split_script(line[1]) if line and len(line) > 1 else None
    if not argv:
        ctx.error(st, f"cannot split the script {st.raw!r} (an open quote, or no program)")
        return None
    return tuple(argv)


def _http(ctx: Ctx, notes: list[str], chk: Node, urls: list[Node], spec: CheckSpec,
          host: str | None) -> CheckSpec:
    path, codes = "/", tuple(range(200, 300))
    if not urls:
        ctx.error(chk, "no url block (keepalived has nothing to check)")
    for i, url in enumerate(urls):
        if i > 0:
            notes.append(f"url ({url.where}) not carried over: keepalived required every url "
                         "to answer; hacontrol checks one path per service, the first one")
            continue
        statuses: set[int] = set()
        for st in url.block():
            if st.keyword == "path" and (p := ctx.arg(st, 0, "path")) is not None:
                if p.startswith("/") and " " not in p:
                    path = p
                else:
                    notes.append(f"path {p!r} ({st.where}) not carried over: hacontrol needs a "
                                 "path starting with / without spaces; / used")
            elif st.keyword == "status_code":
                statuses |= _statuses(ctx, st)
            elif st.keyword == "virtualhost":
                host = ctx.arg(st, 0, "host name")
            elif st.keyword == "digest":
                notes.append(f"digest ({st.where}) not carried over: hacontrol does not compare "
                             "the body's MD5; expect_body or expect_regex can check the body")
            else:
                notes.append(f"url {st.keyword} ({st.where}) not carried over: no hacontrol "
                             "equivalent")
        if statuses:
            codes = tuple(sorted(statuses))
    return replace(spec, path=path, expect_status=codes, host=host,
                   verify_tls=False if spec.type == "https" else None)


def _statuses(ctx: Ctx, st: Node) -> set[int]:
    out: set[int] = set()
    for word in st.args:
        lo, _, hi = word.partition("-")
        a = ctx.integer(st, lo, 100, 599, "status code")
        b = ctx.integer(st, hi or lo, 100, 599, "status code")
        if a is not None and b is not None:
            if a > b:
                ctx.error(st, f"status code range {word} is empty")
            out.update(range(a, b + 1))
    return out
