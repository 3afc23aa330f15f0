"""The host list of a store URL: ``host[:port][,host[:port]...]``, IPv6 in brackets."""

from __future__ import annotations

from urllib.parse import unquote

from ..errors import ConfigError

__all__ = ["parse_hosts"]


def parse_hosts(netloc: str, default_port: int, shown: str) -> list[tuple[str, int]]:
    """Return the ``(host, port)`` pairs of a URL's host list, in their order.

    *netloc* is the URL's network location without credentials; *shown* is the URL as
    an error may quote it (masked).

    :raises ConfigError: A host is empty or badly bracketed, a port is not a number
        from 1 to 65535, or a host and port are named twice.
    """
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ConfigError(f"store {shown!r}: bad host {item!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ConfigError(f"store {shown!r} names no host, or an empty one")
        if not port_text:
            port = default_port
        elif port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ConfigError(f"store {shown!r}: bad port {port_text!r} for host {host!r}")
        if (unquote(host), port) in hosts:
            raise ConfigError(f"store {shown!r} names {host}:{port} twice")
        hosts.append((unquote(host), port))
    return hosts
