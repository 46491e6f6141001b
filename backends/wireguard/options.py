"""The wireguard backend's ``Backend`` options, as Go flannel reads them.

``ListenPort`` (51820), ``ListenPortV6`` (51821, the IPv6 device's in ``separate`` mode), ``PSK``
(a base64 key, optional), ``PersistentKeepaliveInterval`` (seconds, 0 = off), ``Mode``
(``separate``: a device per family; ``auto``, ``ipv4``, ``ipv6``: one device for both families,
its endpoints chosen by that rule) and ``MTU`` (default: the external interface's; the device
and the pods get MTU - 80).  Keys are case-insensitive, like Go's JSON decoder.  Pure: used by
``flannelctl config set`` as by the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flanneld.backends.options import OptionReader
from flanneld.errors import NetworkConfigError

DEFAULT_LISTEN_PORT = 51820
DEFAULT_LISTEN_PORT_V6 = 51821
MODES = ("separate", "auto", "ipv4", "ipv6")
# Outer IPv4 20 (IPv6 40) + UDP 8 + type 4 + key index 4 + nonce 8 + tag 16, as Go counts it.
OVERHEAD = 80
MIN_MTU = 1280 + OVERHEAD  # an IPv6 pod network needs 1280 inside; IPv4 needs far less


@dataclass(frozen=True)
class WireguardOptions:
    listen_port: int = DEFAULT_LISTEN_PORT
    listen_port_v6: int = DEFAULT_LISTEN_PORT_V6
    psk: str = field(default="", repr=False)  # base64, checked; "" = none
    keepalive: int = 0
    mode: str = "separate"
    mtu: int = 0  # 0: the external interface's

    @property
    def separate(self) -> bool:
        return self.mode == "separate"


def parse_options(options: Mapping[str, Any]) -> WireguardOptions:
    """Raise NetworkConfigError naming ``Backend.<Option>`` for a bad value."""
    from flanneld.backends.wireguard.keys import BadKeyError, Key

    reader = OptionReader(options)
    fields, integer = reader.fields, reader.integer

    mode = fields.get("mode", "separate")
    if mode == "":
        mode = "separate"
    if not isinstance(mode, str) or mode not in MODES:
        raise NetworkConfigError("Backend.Mode", f"must be one of {', '.join(MODES)}, got "
                                 f"{mode!r:.40}")
    psk = fields.get("psk", "")
    if psk is None:
        psk = ""
    if psk:
        try:
            Key.from_base64(psk)
        except BadKeyError:
            # Never echo the value: it is a secret (or a typo of one).
            raise NetworkConfigError("Backend.PSK", "must be a base64 WireGuard key (32 bytes, "
                                     "44 characters, as `wg genpsk` prints)") from None
    elif not isinstance(psk, str):
        raise NetworkConfigError("Backend.PSK", "must be a base64 key string")
    mtu = integer("mtu", "MTU", 0, 0, 65535)
    if mtu and mtu < MIN_MTU:
        raise NetworkConfigError("Backend.MTU", f"must be at least {MIN_MTU} (the device gets "
                                 f"MTU - {OVERHEAD}), got {mtu}")
    ports = {
        "listen_port": integer("listenport", "ListenPort", DEFAULT_LISTEN_PORT, 1, 65535),
        "listen_port_v6": integer("listenportv6", "ListenPortV6", DEFAULT_LISTEN_PORT_V6, 1,
                                  65535),
    }
    return WireguardOptions(
        **ports, psk=psk,
        keepalive=integer("persistentkeepaliveinterval", "PersistentKeepaliveInterval", 0, 0,
                          65535),
        mode=mode, mtu=mtu,
    )
