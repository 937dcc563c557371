"""Shaped links for fault tests: a network namespace behind a veth pair with ``tbf`` on both ends.

``tc netem`` is not always available (no delay or loss in the kernel), but
namespaces, veth pairs and the token-bucket filter usually are (as root).
``ShapedLink.create`` makes namespace ``fsc-<tag>``, a veth pair whose host
end has ``host_ip`` and whose namespace end has ``peer_ip`` (a /30 of
10.213.0.0/16), and limits both directions to ``rate_kbit``; a process runs
inside with ``link.wrap(argv)`` (``ip netns exec``, which execs, so its pid
is the process's own). ``close()`` removes it all.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass

_counter = itertools.count()


def _ip(*args: str, ns: str | None = None) -> None:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")


def unavailable() -> str | None:
    """Why shaped links cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the ip and tc commands (iproute2) are missing"
    try:
        link = ShapedLink.create("probe", 10_000)
    except OSError as exc:
        return f"cannot create a namespace with a tbf-shaped veth link ({exc})"
    link.close()
    return None


@dataclass
class ShapedLink:
    """A namespace reachable over a veth pair limited to ``rate_kbit`` each way."""

    ns: str
    host_dev: str
    host_ip: str
    peer_ip: str
    rate_kbit: int

    @classmethod
    def create(cls, tag: str, rate_kbit: int, burst_kbit: int = 64, latency_ms: int = 400) -> ShapedLink:
        """Make the namespace, the link and its two ``tbf`` qdiscs (raises OSError on failure)."""
        n = next(_counter)
        block = (os.getpid() * 37 + n) % 16384  # a /30 per link: 16384 of them in 10.213.0.0/16
        base = 10 << 24 | 213 << 16 | block << 2
        host_ip, peer_ip = (str(ipaddress.IPv4Address(base + i)) for i in (1, 2))
        suffix = f"{os.getpid() % 100000}{n}"[-9:]
        link = cls(f"fsc-{tag}-{suffix}", f"fsch{suffix}", host_ip, peer_ip, rate_kbit)
        peer_dev = f"fscn{suffix}"
        try:
            _ip("ip", "netns", "add", link.ns)
            _ip("ip", "link", "add", link.host_dev, "type", "veth", "peer", "name", peer_dev)
            _ip("ip", "link", "set", peer_dev, "netns", link.ns)
            _ip("ip", "addr", "add", f"{host_ip}/30", "dev", link.host_dev)
            _ip("ip", "link", "set", link.host_dev, "up")
            _ip("ip", "addr", "add", f"{peer_ip}/30", "dev", peer_dev, ns=link.ns)
            _ip("ip", "link", "set", peer_dev, "up", ns=link.ns)
            _ip("ip", "link", "set", "lo", "up", ns=link.ns)
            shape = ["root", "tbf", "rate", f"{rate_kbit}kbit", "burst", f"{burst_kbit}kbit",
                     "latency", f"{latency_ms}ms"]
            _ip("tc", "qdisc", "add", "dev", link.host_dev, *shape)
            _ip("tc", "qdisc", "add", "dev", peer_dev, *shape, ns=link.ns)
        except (OSError, subprocess.TimeoutExpired) as exc:
            link.close()
            raise OSError(str(exc)) from None
        return link

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def close(self) -> None:
        """Remove the link and the namespace (deleting one veth end removes both)."""
        for argv in (["ip", "link", "del", self.host_dev], ["ip", "netns", "del", self.ns]):
            subprocess.run(argv, capture_output=True, timeout=10)
