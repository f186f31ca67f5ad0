"""Old import path of the ``ha:`` section parser, kept for callers of ``hacontrol.config_ha``.

The parser lives in ``hacontrol.config.ha`` since the config loader became a package.
"""

from hacontrol.config.ha import HA_KEYS, parse_ha

__all__ = ["HA_KEYS", "parse_ha"]
