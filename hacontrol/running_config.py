"""The running config of a daemon: the one owner of the config in use, its digest, when it was
loaded, the API token read with it, and when the daemon started.

``hacontrol.daemon.Daemon`` creates one; a reload (``hacontrol.reload``) replaces config and
token together through ``replace``; the status (``hacontrol.daemon_status``) and the API read it.
Nothing else writes it. Times come from the injected clock.
"""

from __future__ import annotations

from hacontrol.clock import Clock
from hacontrol.model import Config
from hacontrol.process import read_token

__all__ = ["RunningConfig"]


class RunningConfig:
    """The config in use and what was loaded with it."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self._clock = clock
        self._config = config
        self._token: str | None = None
        self._started_at = self._loaded_at = clock()

    @property
    def config(self) -> Config:
        return self._config

    @property
    def digest(self) -> str:
        """The digest of the config in use (what HA peers compare)."""
        return self._config.digest

    @property
    def token(self) -> str | None:
        """The API token from ``api.token_file`` (None without one)."""
        return self._token

    @property
    def loaded_at(self) -> float:
        """Monotonic time the config in use was loaded (start or the last applied reload)."""
        return self._loaded_at

    @property
    def started_at(self) -> float:
        return self._started_at

    def start(self) -> None:
        """The daemon starts: read the token of the config in use (StartError when unusable)."""
        self._token = read_token(self._config.api.token_file)
        self._started_at = self._loaded_at = self._clock()

    def replace(self, config: Config, token: str | None) -> None:
        """A reload applied ``config`` (its token read beforehand): both change together."""
        self._config = config
        self._token = token
        self._loaded_at = self._clock()
