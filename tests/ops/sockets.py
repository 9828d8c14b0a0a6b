"""Which TCP sockets a process tree listens on, read from /proc (Linux): the tests that check
in-process Ray and the MLflow UI bind to loopback only."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _ip(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)  # /proc/net/tcp*: 32-bit words in host (little-endian) order
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def listening(root: int) -> set[tuple[str, int, str]]:
    """``(address, port, process name)`` of every TCP socket that ``root`` or a process it
    started (Ray: GCS, raylet, agents, workers) listens on."""
    owners: dict[str, set[int]] = {}
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owners.setdefault(link[8:-1], set()).add(pid)
    found = set()
    for table in ("tcp", "tcp6"):  # the tables of root's network namespace
        for line in Path(f"/proc/{root}/net/{table}").read_text().splitlines()[1:]:
            local, state, inode = (line.split()[i] for i in (1, 3, 9))
            if state != "0A":  # TCP_LISTEN
                continue
            address, port = local.split(":")
            for pid in owners.get(inode, ()):
                with contextlib.suppress(OSError):
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    found.add((str(_ip(address)), int(port, 16), name))
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a v6 socket's v4 loopback
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
