"""Two "nodes" on one machine: two Linux network namespaces joined by a veth pair (needs root and ``ip``).

Each namespace has ``lo`` up and one end of the pair, named :data:`IFNAME` in both, with an address that
exists only inside that namespace (default ``10.77.0.1/24`` and ``10.77.0.2/24``); nothing is added to the
machine's own network namespace, so traffic between the two never leaves them. Commands run inside a
namespace with ``nsenter --net=/run/netns/NAME`` (not ``ip netns exec``, which remounts /sys: that breaks
slurmd's cgroup check), so they keep this machine's filesystem, hostname and processes.

Example::

    with two_namespaces() as (a, b):
        server = popen_in(b, [sys.executable, "-m", "http.server", "--bind", b.addr, "8000"])
        run_in(a, ["curl", f"http://{b.addr}:8000/"])

The names carry this process's id and a counter, so parallel test sessions never collide; the namespaces
(and with them the veth pair) are deleted on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: The veth end's name inside each namespace (the same in both, so one GLOO_SOCKET_IFNAME fits every node).
IFNAME = "tk0"
_counter = itertools.count()


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``/``nsenter``, or the kernel refused)."""


@dataclass(frozen=True)
class Node:
    """One namespace: ``name`` (under /run/netns), ``addr`` (IPv4, without prefix), ``ifname`` (its veth end)."""

    name: str
    addr: str
    ifname: str = IFNAME

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (a one-line reason for ``pytest.skip``), or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    probe = f"tkprobe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return f"'ip netns add' failed: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {res.stderr.strip()}")


@contextlib.contextmanager
def two_namespaces(addrs: tuple[str, str] = ("10.77.0.1", "10.77.0.2"), prefix: int = 24):
    """Create two namespaces joined by a veth pair; yields ``(Node, Node)``; deletes both on exit.

    Raises:
        NetnsUnavailable: a namespace, the veth pair or an address could not be set up (the message has
            the failing ``ip`` command and its error); whatever was made is removed first.
    """
    tag = f"tk{os.getpid()}x{next(_counter)}"
    nodes = (Node(f"{tag}a", addrs[0]), Node(f"{tag}b", addrs[1]))
    made = []
    try:
        for node in nodes:
            _ip("netns", "add", node.name)
            made.append(node.name)
        # created inside the first namespace, peer moved straight into the second: no name in the root namespace
        _ip("-n", nodes[0].name, "link", "add", IFNAME, "type", "veth", "peer", "name", IFNAME, "netns",
            nodes[1].name)
        for node in nodes:
            _ip("-n", node.name, "addr", "add", f"{node.addr}/{prefix}", "dev", IFNAME)
            _ip("-n", node.name, "link", "set", IFNAME, "up")
            _ip("-n", node.name, "link", "set", "lo", "up")
        yield nodes
    finally:
        for name in made:  # deleting a namespace deletes its veth end, and with it the pair
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def ns_command(node: Node | str, cmd: list[str]) -> list[str]:
    """``cmd`` prefixed so that it runs in ``node``'s network namespace (same filesystem and hostname)."""
    name = node.name if isinstance(node, Node) else node
    return ["nsenter", f"--net=/run/netns/{name}", *map(str, cmd)]


def run_in(node: Node | str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` of ``cmd`` inside ``node``'s network namespace (kwargs go to ``subprocess.run``)."""
    return subprocess.run(ns_command(node, cmd), **kwargs)


def popen_in(node: Node | str, cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` of ``cmd`` inside ``node``'s network namespace."""
    return subprocess.Popen(ns_command(node, cmd), **kwargs)


def exists(name: str) -> bool:
    """Whether a namespace of that name exists (for cleanup checks)."""
    return Path(f"/run/netns/{name}").exists()
