"""The client's address, through the reverse proxies the operator trusts.

A proxy appends the address it received the request from to ``X-Forwarded-For``; anything
to the left of that came from the client, who can write whatever it likes there. So the
client is the right-most hop that is not a trusted proxy (``FORWARDED_ALLOW_IPS``: addresses
and CIDR blocks), and only when the connection itself comes from a trusted proxy. A client
that rotates the left part of the header stays one address. An IPv4 peer of a dual-stack
listener (``::ffff:a.b.c.d``) is matched as its IPv4 address. ``*`` trusts every hop, so
the client is the left-most one, which the client writes itself: name the proxies instead
wherever the address matters (rate limits).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"


class TrustedProxies:
    """Resolves a request's client address from its peer and ``X-Forwarded-For``."""

    def __init__(self, allowed: Iterable[str]) -> None:
        entries = [entry.strip() for entry in allowed if entry.strip()]
        self.everyone = "*" in entries
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        )
        self._seen: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        if self.everyone:
            return True
        if not self.networks:
            return False
        known = self._seen.get(host)
        if known is None:  # parsing an address costs microseconds: once per address
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                known = False
            else:
                # A dual-stack listener's IPv4 peer (::ffff:a.b.c.d) matches the proxies
                # named either way.
                forms: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    forms.append(address.ipv4_mapped)
                known = any(form in network for form in forms for network in self.networks)
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen[host] = known
        return known

    def client(self, scope: Scope) -> str:
        """The address limits and logs should count this request under."""
        peer = scope.get("client")
        host = peer[0] if peer else UNKNOWN
        if not (self.everyone or self.networks) or not self.trusts(host):
            return host
        hops: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                hops.extend(hop.strip() for hop in value.decode("latin-1").split(","))
        hops = [hop for hop in hops if hop]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        # Every hop is a proxy we trust: the left-most is as far as anyone can see.
        return hops[0] if hops else host
