"""The API unix socket's group (``api.group``): resolved before the bind, given with chgrp after
it (mode 0660), refused clearly when unknown; the config field; a reload cannot change it."""

from __future__ import annotations

import dataclasses
import errno
import grp
import os
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from hacontrol.api.server import ApiServer, socket_group
from hacontrol.config import ConfigError, loads
from hacontrol.process import keep_restart_only, restart_only_changes


def app() -> web.Application:
    a = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    a.router.add_get("/healthz", ok)
    return a


def other_group() -> grp.struct_group:
    """A group that is not the process's own (there is always one on a Debian system)."""
    for g in grp.getgrall():
        if g.gr_gid != os.getegid():
            return g
    pytest.skip("no second group on this system")


def test_socket_group_explicit_and_unknown() -> None:
    g = other_group()
    assert socket_group(g.gr_name) == (g.gr_gid, g.gr_name)
    with pytest.raises(OSError, match=r"api\.group no-such-group-hc: no such group") as ei:
        socket_group("no-such-group-hc")
    assert ei.value.errno == errno.ENOENT


def test_socket_group_default() -> None:
    gid, name = socket_group(None)
    try:
        hc = grp.getgrnam("hacontrol").gr_gid
    except KeyError:
        hc = None
    member = os.geteuid() == 0 or hc in (os.getegid(), *os.getgroups())
    if hc is not None and member:
        assert (gid, name) == (hc, "hacontrol")
    else:
        assert gid == os.getegid()


async def test_unix_socket_gets_the_group(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a socket another group needs root here")
    g = other_group()
    path = tmp_path / "run" / "api.sock"
    server = ApiServer(app(), f"unix:{path}", group=g.gr_name)
    await server.start()
    try:
        st = os.stat(path)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (g.gr_gid, 0o660)
        assert server.socket_gid == g.gr_gid
        conn = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=conn) as s, s.get("http://x/healthz") as r:
            assert r.status == 200
    finally:
        await server.stop()


async def test_unknown_group_leaves_no_socket(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    server = ApiServer(app(), f"unix:{path}", group="no-such-group-hc")
    with pytest.raises(OSError, match="no such group"):
        await server.start()
    assert not path.exists()


BASE = "node: {name: a}\ndataplane: memory\n"


def test_config_api_group() -> None:
    c = loads(BASE + "api: {listen: 'unix:/run/hacontrol/api.sock', group: operators}\n")
    assert c.api.group == "operators"
    assert loads(BASE).api.group is None
    with pytest.raises(ConfigError) as ei:
        loads(BASE + "api: {group: 'two words'}\n", source="g.yaml")
    assert str(ei.value).startswith("g.yaml:3: api.group: must be 1-63 letters")
    with pytest.raises(ConfigError, match=r"api\.group: must be a string"):
        loads(BASE + "api: {group: [x]}\n")


def test_reload_keeps_the_running_group() -> None:
    old = loads(BASE + "api: {group: operators}\n")
    new = dataclasses.replace(old, api=dataclasses.replace(old.api, group="others"))
    assert restart_only_changes(old, new) == ["api.group"]
    assert keep_restart_only(old, new).api.group == "operators"
