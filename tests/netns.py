"""A second host for fault tests: a network namespace joined to this one by a veth
pair, and faults on the wire between them.

    with Peer() as peer:                       # 10.a.b.2 in the namespace, 10.a.b.1 here
        worker = subprocess.Popen(peer.command([sys.executable, "-m", "cameras.worker", ...]))
        peer.partition()                       # every packet lost, both ways
        peer.heal()
        peer.lose(5)                           # 5% of packets lost, each way

Faults are nftables rules on the *ingress* of each end of the pair (a ``netdev`` table in
each namespace): a packet leaves its sender normally and vanishes on the wire, so the
sender sees no local error and nobody sends a RST, as on a real partition or lossy link.
This kernel has no netem qdisc, so there is no way to add an exact delay here.

Every name is unique per `Peer` (two test runs may overlap) and everything made is
removed on exit, whatever failed. Needs root, ``ip`` (iproute2) and ``nft`` (nftables).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

RANGE = ipaddress.IPv4Network("10.200.0.0/13")  # the /30s we pick from
TABLE = "faults"  # the nft table inside the namespace; the one here is named per peer
CHAIN = "ingress"


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None. Only "not root" is a reason to skip:
    as root, a missing tool is a broken setup and must fail, not skip."""
    if os.geteuid() != 0:
        return "network namespaces, veth pairs and nftables need root"
    return None


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a setup command; its stdout, or RuntimeError with its stderr."""
    for tool in ("ip", "nft"):
        if argv[0] == tool and shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (.ci/run installs it)")
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def free_subnet() -> ipaddress.IPv4Network:
    """A random /30 in `RANGE` that no address or route of this host overlaps."""
    used = [
        ipaddress.ip_interface(word).network
        for line in run(["ip", "-o", "-4", "addr", "show"]).splitlines()
        for word in line.split()[3:4]
    ]
    used += [
        ipaddress.ip_network(line.split()[0])
        for line in run(["ip", "-4", "route", "show"]).splitlines()
        if line.split()[0][0].isdigit()
    ]
    for _ in range(100):
        offset = random.randrange(RANGE.num_addresses // 4) * 4
        subnet = ipaddress.IPv4Network(f"{RANGE.network_address + offset}/30")
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"no free /30 in {RANGE}")


class Peer:
    """A namespace ``cbf-XXXXXX`` reached over a veth pair; `host_ip` is this side's
    address (bind servers there), `peer_ip` the namespace's."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.namespace = f"cbf-{token}"
        self.host_link, self.peer_link = f"cbf{token}h", f"cbf{token}n"  # <= 15 characters
        self.host_table = f"cbf_{token}"
        subnet = free_subnet()
        self.host_ip, self.peer_ip = (str(address) for address in subnet.hosts())
        self.prefix = subnet.prefixlen
        self._cleanup = contextlib.ExitStack()

    def __enter__(self) -> Peer:
        with contextlib.ExitStack() as undo:
            undo.callback(self._quietly, ["ip", "netns", "delete", self.namespace])
            run(["ip", "netns", "add", self.namespace])
            undo.callback(self._quietly, ["ip", "link", "delete", self.host_link])
            run(
                [
                    "ip",
                    "link",
                    "add",
                    self.host_link,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.peer_link,
                    "netns",
                    self.namespace,
                ]
            )
            run(["ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.host_link])
            run(["ip", "link", "set", self.host_link, "up"])
            inside = ["ip", "-n", self.namespace]
            run([*inside, "addr", "add", f"{self.peer_ip}/{self.prefix}", "dev", self.peer_link])
            run([*inside, "link", "set", self.peer_link, "up"])
            run([*inside, "link", "set", "lo", "up"])
            undo.callback(self._quietly, ["nft", "delete", "table", "netdev", self.host_table])
            run(["nft", "-f", "-"], _table(self.host_table, self.host_link))
            run(self.command(["nft", "-f", "-"]), _table(TABLE, self.peer_link))
            self._cleanup = undo.pop_all()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the tables, the pair and the namespace (the table inside goes with it)."""
        self._cleanup.close()

    @staticmethod
    def _quietly(argv: list[str]) -> None:
        subprocess.run(argv, capture_output=True, timeout=10, check=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    # -- faults on the wire ---------------------------------------------------------

    def partition(self) -> None:
        """Lose every packet, both ways, until `heal`."""
        self._set_rule("drop")

    def lose(self, percent: int) -> None:
        """Lose ``percent`` % of the packets each way, at random, until `heal`."""
        self._set_rule(f"numgen random mod 100 < {percent} drop")

    def heal(self) -> None:
        self._set_rule(None)

    def _set_rule(self, rule: str | None) -> None:
        for table, prefix in ((self.host_table, []), (TABLE, self.command([]))):
            script = f"flush chain netdev {table} {CHAIN}\n"
            if rule is not None:
                script += f"add rule netdev {table} {CHAIN} {rule}\n"
            run([*prefix, "nft", "-f", "-"], script)  # one transaction per side


def _table(name: str, device: str) -> str:
    return (
        f"table netdev {name} {{\n  chain {CHAIN} {{\n"
        f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
        "  }\n}\n"
    )
