"""Hosts on a private network inside this machine, for tests of a cluster that loses a host.

    reason = why_no_network()  # None where namespaces can be made (root, iproute2, Linux)
    with private_network(("scheduler", "worker-1", "worker-2")) as net:
        scheduler = net.popen("scheduler", ["dask", "scheduler", "--host", net.address("scheduler")])
        ...
        net.unplug("worker-1")  # its cable pulled at the switch: no packet in or out, no reset

Each host is a network namespace with its loopback and one cable (a veth pair) to a switch (a
bridge in a namespace of its own). Addresses exist only inside these namespaces: nothing is added
to the machine's own interfaces, routes or firewall, so no address can clash with a real network,
and namespace names carry this process's id, so parallel test runs cannot clash either. The file
system is shared, as on a cluster with a shared file system; only networking is separate.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

SUBNET = "10.47.0"
"""The hosts' /24: first host .1, next .2, ... Private, and only ever seen inside the namespaces."""

HOST_INTERFACE = "eth0"


class NetworkSetupError(RuntimeError):
    """An `ip` command that builds or takes down the private network failed."""


def why_no_network() -> str | None:
    """Why network namespaces cannot be made here (for pytest.skip), or None if they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "making network namespaces needs root (ip netns add); this test runs as a normal user"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"aef{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    try:
        bridge = subprocess.run(["ip", "-n", probe, "link", "add", "br0", "type", "bridge"], capture_output=True)
        if bridge.returncode != 0:
            return f"no bridge devices in a network namespace: {bridge.stderr.decode().strip()}"
        inside = subprocess.run(["ip", "netns", "exec", probe, "true"], capture_output=True)
        if inside.returncode != 0:
            return f"`ip netns exec` cannot run a process in a namespace: {inside.stderr.decode().strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class PrivateNetwork:
    """Hosts (namespaces) on one switch. Processes started with `popen` are ended on exit."""

    prefix: str
    hosts: tuple[str, ...]
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    def host_of(self, address: str) -> str:
        """The host that has `address` (an IP, or a URL such as tcp://10.47.0.2:4321)."""
        for host in self.hosts:
            if f"//{self.address(host)}:" in address or address == self.address(host):
                return host
        raise KeyError(f"no host of this network has address {address}")

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` as run on `host`."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def popen(self, host: str, argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
        """Start `argv` on `host`, in a session of its own (so it and its children end together)."""
        process = subprocess.Popen(self.command(host, argv), start_new_session=True, **options)
        self.processes.append(process)
        return process

    def unplug(self, host: str) -> None:
        """Pull the host's cable at the switch: its packets are lost from now on, silently (no
        reset, no unreachable answer), as when a machine or its link dies."""
        _ip("-n", self.switch, "link", "set", _port(host), "down")

    def power_off(self, host: str) -> None:
        """Kill every process running on the host (nothing but this network's processes runs in
        its namespace), at once, as a machine that loses power."""
        found = subprocess.run(["ip", "netns", "pids", self.namespace(host)], capture_output=True, text=True)
        for pid in found.stdout.split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _port(host: str) -> str:
    return f"p-{host}"[:15]  # interface names have at most 15 characters


@contextmanager
def private_network(hosts: Sequence[str]) -> Iterator[PrivateNetwork]:
    """Make the hosts and their switch; on exit, whatever happened, end every process started on
    them and delete the namespaces (their interfaces go with them)."""
    net = PrivateNetwork(f"aef{os.getpid()}", tuple(hosts))
    try:
        _build(net)
        yield net
    finally:
        _take_down(net)


def _build(net: PrivateNetwork) -> None:
    _ip("netns", "add", net.switch)
    _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
    _ip("-n", net.switch, "link", "set", "br0", "up")
    for host in net.hosts:
        namespace = net.namespace(host)
        _ip("netns", "add", namespace)
        _ip("-n", net.switch, "link", "add", _port(host), "type", "veth", "peer", HOST_INTERFACE, "netns", namespace)
        _ip("-n", net.switch, "link", "set", _port(host), "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{net.address(host)}/24", "dev", HOST_INTERFACE)
        _ip("-n", namespace, "link", "set", HOST_INTERFACE, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")


def _take_down(net: PrivateNetwork) -> None:
    for process in net.processes:
        _end(process)
    for host in net.hosts:
        net.power_off(host)  # stragglers that left their session: ours too, nothing else runs there
    for namespace in [net.namespace(host) for host in net.hosts] + [net.switch]:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _end(process: subprocess.Popen[Any], grace_s: float = 3.0) -> None:
    """Terminate the process's session, then kill it if it is still there after `grace_s`."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            os.killpg(process.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its children too, even once it has gone
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetworkSetupError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
