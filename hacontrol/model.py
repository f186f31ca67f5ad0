"""The typed configuration model: what a validated config file becomes.

Everything here is a frozen dataclass of plain values (durations in float seconds, addresses as
``ipaddress`` objects), built only by ``hacontrol.config`` after validation. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CheckType = Literal["tcp", "http", "https", "exec", "none"]
Protocol = Literal["tcp", "udp"]
Forwarding = Literal["nat", "dr", "tunnel"]
OnFailure = Literal["remove", "weight0"]
DataplaneKind = Literal["auto", "ipvs", "nftables", "memory"]
LogFormat = Literal["auto", "json", "console"]

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")


def host_port(address: str | IPAddress, port: int) -> str:
    """``address:port`` as logged and shown, an IPv6 address in brackets (``[2001:db8::1]:80``)."""
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@dataclass(frozen=True)
class Endpoint:
    """An address and port, e.g. a real server or a sorry server."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        return host_port(self.address, self.port)


@dataclass(frozen=True)
class CheckConfig:
    """One health check definition. A probe is one attempt; rise/fall is applied by the tracker."""

    type: CheckType = "tcp"
    interval: float = 1.0
    timeout: float = 0.5
    rise: int = 2
    fall: int = 3
    jitter: float = 0.1  # fraction of interval used to spread first probes and each period
    port: int | None = None  # probe this port instead of the real server's
    # http / https
    path: str = "/"
    method: str = "GET"
    host: str | None = None
    expect_status: tuple[int, ...] = (200,)
    expect_body: str | None = None  # substring
    expect_regex: str | None = None
    verify_tls: bool = True
    # exec: argv, with {address} and {port} substituted; never through a shell
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class RealServer:
    address: IPAddress
    port: int
    weight: int = 1

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.port)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    vip: IPAddress
    port: int
    protocol: Protocol = "tcp"
    scheduler: str = "wrr"
    forwarding: Forwarding = "nat"
    persistence: float = 0.0  # seconds; 0 = off
    on_failure: OnFailure = "remove"
    sorry_server: Endpoint | None = None
    check: CheckConfig = field(default_factory=CheckConfig)
    real_servers: tuple[RealServer, ...] = ()

    @property
    def vip_endpoint(self) -> Endpoint:
        return Endpoint(self.vip, self.port)


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:9480"  # "host:port" or "unix:/path"
    token_file: str | None = None  # required for mutating calls when set
    group: str | None = None  # the unix socket's group (None: "hacontrol" if it exists)


@dataclass(frozen=True)
class DataplaneConfig:
    kind: DataplaneKind = "auto"
    resync_interval: float = 10.0
    nft_table: str = "hacontrol"
    keep_on_stop: bool = True  # leave the table in place on stop: a restart must not drop traffic
    state_dir: str = "/run/hacontrol"  # remembers which services the daemon owns across restarts
    drain_removed: float = 300.0  # a real server the config drops is drained this long; 0: cut


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class VipConfig:
    address: IPInterface
    interface: str


@dataclass(frozen=True)
class AnnounceConfig:
    count: int = 5
    interval: float = 0.05
    refresh: float = 30.0  # 0 = no periodic refresh


@dataclass(frozen=True)
class TrackConfig:
    interfaces: tuple[str, ...] = ()
    vip_interfaces: bool = True  # also track the interface of every VIP (as keepalived does)
    gateway: IPAddress | None = None
    gateway_interval: float = 1.0
    gateway_fall: int = 3
    priority_penalty: int = 50


@dataclass(frozen=True)
class SyncConfig:
    """The IPVS connection sync daemons (master and backup) a director of the pair runs."""

    interface: str  # the multicast interface: the heartbeat / inside link between the pair
    syncid: int = 0  # 0..255, the same on both directors


@dataclass(frozen=True)
class VrrpConfig:
    """``ha.vrrp``: the VRRPv3 instance ``ha.protocol: vrrp3`` speaks (to pair with keepalived).

    The instance's family is that of ``unicast_peers`` (else ``source``, else the first VIP);
    the VIPs of that family are advertised, the others move with them unadvertised."""

    vrid: int  # keepalived's virtual_router_id, 1..255
    interface: str  # where advertisements go (keepalived's interface)
    advert_cs: int = 100  # advertisement interval, centiseconds (keepalived's advert_int 1)
    unicast_peers: tuple[IPAddress, ...] = ()  # empty: multicast 224.0.0.18 / ff02::12
    source: IPAddress | None = None  # keepalived's unicast_src_ip; None: the interface's

    @property
    def version(self) -> int | None:
        """4 or 6 when the peers or the source say; None: decided by the VIPs."""
        first = self.unicast_peers[0] if self.unicast_peers else self.source
        return None if first is None else first.version


def dead_interval(interval: float, dead_after: int) -> float:
    """The one definition of the dead interval: a peer silent this long is dead."""
    return interval * dead_after


@dataclass(frozen=True)
class HAConfig:
    # the own protocol's peering; optional (checked, unused) with protocol vrrp3
    bind: Endpoint | None = None
    peers: tuple[Endpoint, ...] = ()
    secret_file: str | None = None
    priority: int = 100
    preempt: bool = True
    preempt_delay: float = 10.0
    # 200 ms x 3: a dead director is replaced in ~0.5-0.6 s (keepalived's default: ~3.1 s);
    # heartbeats are ~150-byte UDP packets, 5 a second, so this costs nothing measurable
    interval: float = 0.2
    dead_after: int = 3
    vips: tuple[VipConfig, ...] = ()
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)
    lease: float | None = 3.0  # None = off
    track: TrackConfig = field(default_factory=TrackConfig)
    notify: tuple[str, ...] = ()
    notify_timeout: float = 5.0
    sync: SyncConfig | None = None  # IPVS plane only: connection sync daemons (ignored on nft)
    protocol: str = "hacontrol"  # "hacontrol" (the own heartbeat) | "vrrp3" (pair with keepalived)
    vrrp: VrrpConfig | None = None  # set iff protocol is vrrp3

    @property
    def dead_interval(self) -> float:
        """``interval x dead_after`` (see ``dead_interval``)."""
        return dead_interval(self.interval, self.dead_after)


@dataclass(frozen=True)
class HostConfig:
    """What the daemon may change on the host itself (``host:``)."""

    set_sysctls: bool = False  # write the sysctls the services need (else only report them)


@dataclass(frozen=True)
class SnatRule:
    """Source NAT of the real servers' own outbound traffic (``nat.snat[]``)."""

    source: IPNetwork
    to: IPAddress
    out_interface: str | None = None


@dataclass(frozen=True)
class NatConfig:
    """The nftables table holding the SNAT rules, installed only while this node is active."""

    snat: tuple[SnatRule, ...] = ()
    table: str = "hacontrol_nat"


@dataclass(frozen=True)
class Config:
    node_name: str
    services: tuple[ServiceConfig, ...] = ()
    api: ApiConfig = field(default_factory=ApiConfig)
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ha: HAConfig | None = None
    host: HostConfig = field(default_factory=HostConfig)
    nat: NatConfig = field(default_factory=NatConfig)
    source: str = "<memory>"  # the file this was loaded from
    digest: str = ""  # sha256 of the canonical form of the services + ha vips (peers must match)
