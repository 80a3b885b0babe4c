"""A libvirt to talk to: the host's through libvirt-python, or L1's through
``virsh`` run inside L1. Both offer the same few calls, so defining, starting
and removing a domain is one piece of code for L1 (at L0) and L2 (in L1)."""
from __future__ import annotations

import json
import shlex
import time

from . import record
from .errors import RunbookError
from .guest import AgentCall, Guest, GuestError


DEFAULT_URI = "qemu:///system"   # what `virsh` uses as root when no -c is given


def virsh_line(*args: str, uri: str = DEFAULT_URI) -> str:
    """``virsh ARGS`` as an engineer types it (``-c URI`` only when it is not the default)."""
    return shlex.join(["virsh", *(["-c", uri] if uri != DEFAULT_URI else []), *args])


def domain_name(xml: str) -> str:
    import xml.etree.ElementTree as ET
    return ET.fromstring(xml).findtext("name") or ""


class Libvirt:
    """The calls the runbook needs from a libvirt connection."""

    where = "libvirt"

    def lib_version(self) -> int: ...
    def inactive_xml(self, name: str) -> str | None: ...
    def define(self, xml: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def is_active(self, name: str) -> bool: ...
    def start(self, name: str) -> None: ...
    def destroy(self, name: str) -> None: ...

    def exists(self, name: str) -> bool:
        return self.inactive_xml(name) is not None

    uri = DEFAULT_URI

    def _changing(self, call: str, name: str, *args: str):
        """Record a call that changes libvirt, as the virsh line it equals."""
        return record.libvirt_call(self.where, call, name, virsh_line(call, *(args or (name,)), uri=self.uri))

    def wait_stopped(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.is_active(name):
            if time.monotonic() > deadline:
                raise RunbookError(f"{self.where}: domain {name} is still running after {timeout:.0f} s",
                                   hint=f"stop it by hand: virsh destroy {name}")
            time.sleep(0.5)


class PyLibvirt(Libvirt):
    """libvirt-python on this host. A libvirtd restarted meanwhile (an upgrade, a
    `systemctl restart`) closes the connection: the next call opens a new one,
    waiting up to ``reconnect_s`` for the daemon to answer again; running domains
    are not affected by a libvirtd restart."""

    reconnect_s = 30.0

    def __init__(self, uri: str = "qemu:///system"):
        import libvirt
        self.libvirt = libvirt
        self.uri = uri
        self.where = f"libvirt at {uri}"
        self.reconnects = 0
        libvirt.registerErrorHandler(lambda *_: None, None)  # no stderr noise; errors raise
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise RunbookError(f"cannot connect to libvirt at {uri}: {e}",
                               hint="start libvirtd (`make setup` does, or `virtlogd -d; libvirtd -d`) "
                                    "or fix host.libvirt_uri") from None

    @property
    def conn(self):
        """The connection, opened again if libvirtd dropped it."""
        try:
            if self._conn.isAlive():
                return self._conn
        except self.libvirt.libvirtError:
            pass
        return self._reconnect()

    def _reconnect(self):
        deadline = time.monotonic() + self.reconnect_s
        while True:
            try:
                self._conn = self.libvirt.open(self.uri)
                self.reconnects += 1
                return self._conn
            except self.libvirt.libvirtError as e:
                if time.monotonic() > deadline:
                    raise RunbookError(
                        f"lost the connection to libvirtd at {self.uri} (it was stopped or restarted) and it does "
                        f"not answer again after {self.reconnect_s:.0f} s: {e}",
                        hint="start libvirtd (`make setup` does, or `virtlogd -d; libvirtd -d`; with systemd: "
                             "`systemctl start libvirtd`), then rerun the stage (`--from NN`)") from None
                time.sleep(1)

    def _lost(self, e) -> bool:
        """Did this error come from a connection libvirtd closed?"""
        codes = {getattr(self.libvirt, n, None) for n in ("VIR_ERR_SYSTEM_ERROR", "VIR_ERR_RPC", "VIR_ERR_NO_CONNECT",
                                                          "VIR_ERR_INVALID_CONN")}
        try:
            alive = self._conn.isAlive()
        except self.libvirt.libvirtError:
            alive = False
        return not alive or e.get_error_code() in codes and "socket" in str(e).lower()

    def _dom(self, name):
        for attempt in (1, 2):
            try:
                return self.conn.lookupByName(name)
            except self.libvirt.libvirtError as e:
                if attempt == 1 and self._lost(e):
                    self._reconnect()
                    continue
                return None

    def lib_version(self) -> int:
        return self.conn.getLibVersion()

    def inactive_xml(self, name):
        d = self._dom(name)
        return d.XMLDesc(self.libvirt.VIR_DOMAIN_XML_INACTIVE) if d else None

    def _call(self, what, fn, *a):
        try:
            return fn(*a)
        except self.libvirt.libvirtError as e:
            if self._lost(e):
                raise RunbookError(f"{self.where}: {what} failed: libvirtd closed the connection ({e})",
                                   hint="libvirtd was restarted or stopped: make sure it runs "
                                        "(`virtlogd -d; libvirtd -d`), then rerun the stage (`--from NN`)") from None
            raise RunbookError(f"{self.where}: {what} failed: {e}",
                               hint="read the message above; the domain's log is in /var/log/libvirt/qemu/") from None

    def define(self, xml, file: str = ""):
        name = domain_name(xml)
        with self._changing("define", name, file or f"{name}.xml"):
            self._call("define", self.conn.defineXML, xml)

    def undefine(self, name):
        d = self._dom(name)
        if d:
            flags = self.libvirt.VIR_DOMAIN_UNDEFINE_NVRAM if hasattr(self.libvirt, "VIR_DOMAIN_UNDEFINE_NVRAM") else 0
            with self._changing("undefine", name):
                self._call(f"undefine {name}", d.undefineFlags, flags)

    def is_active(self, name):
        d = self._dom(name)
        return bool(d and d.isActive())

    def start(self, name):
        with self._changing("start", name):
            self._call(f"start {name}", self._dom(name).create)

    def destroy(self, name):
        d = self._dom(name)
        if d and d.isActive():
            with self._changing("destroy", name):
                self._call(f"destroy {name}", d.destroy)

    def domain(self, name):
        """The libvirt-python domain object (for the guest agent)."""
        return self._dom(name)


class Virsh(Libvirt):
    """``virsh`` run on a guest (L1's own libvirt, for L2)."""

    def __init__(self, guest: Guest, uri: str = DEFAULT_URI):
        self.guest, self.uri = guest, uri
        self.where = f"libvirt in {guest.name}"

    def virsh(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180):
        r = self.guest.run(["virsh", "-c", self.uri, *args], input=input, timeout=timeout)
        if check and not r.ok:
            raise RunbookError(f"{self.where}: virsh {' '.join(args[:2])} failed: {(r.err or r.out).strip()}",
                               hint=f"look at /var/log/libvirt/qemu/ in {self.guest.name}")
        return r

    def read(self, *args: str, check: bool = False, timeout: float = 180):
        """``virsh ARGS`` that only reads (recorded as a read)."""
        with record.reading():
            return self.virsh(*args, check=check, timeout=timeout)

    def lib_version(self) -> int:
        out = self.read("version", check=True).out
        for line in out.splitlines():
            if "libvirt" in line and ":" in line:
                parts = line.split()[-1].split(".")
                major, minor, micro = (int(x) for x in parts[:3])
                return major * 1_000_000 + minor * 1_000 + micro
        raise RunbookError(f"{self.where}: cannot read the libvirt version from `virsh version`")

    def inactive_xml(self, name):
        r = self.read("dumpxml", "--inactive", name)
        return r.out if r.ok else None

    def define(self, xml, file: str = ""):
        name = domain_name(xml)
        with self._changing("define", name, file or f"{name}.xml"):
            self.virsh("define", "/dev/stdin", input=xml)

    def undefine(self, name):
        if self.exists(name):
            with self._changing("undefine", name):
                self.virsh("undefine", name)

    def is_active(self, name):
        r = self.read("domstate", name)
        return r.ok and r.out.strip() in ("running", "paused", "in shutdown", "blocked")

    def start(self, name):
        with self._changing("start", name):
            self.virsh("start", name)

    def destroy(self, name):
        if self.is_active(name):
            with self._changing("destroy", name):
                self.virsh("destroy", name)

    def domstate(self, name: str) -> tuple[str, str]:
        """``virsh domstate --reason``: ('running', 'booted'), ('shut off', 'destroyed'), ('undefined', '') ..."""
        r = self.read("domstate", "--reason", name, timeout=60)
        if not r.ok:
            said = (r.err or r.out).strip()
            return ("undefined", "") if "failed to get domain" in said.lower() else ("unknown", said)
        state, _, reason = r.out.strip().partition(" (")
        return state, reason.rstrip(")")

    def agent_call(self, domain: str, retry_s: float = 20):
        """The guest agent of ``domain`` through ``virsh qemu-agent-command`` (``guest.Agent``'s call)."""
        return virsh_agent_call(self.guest, domain, self.uri, retry_s)

    def nodedev(self, call: str, device: str) -> None:
        """``virsh nodedev-detach`` or ``nodedev-reattach`` of ``device`` (libvirt's name)."""
        with self._changing(call, device, device):
            self.virsh(call, device)

    def nodedev_xml(self, device: str) -> str:
        """``virsh nodedev-dumpxml`` of ``device`` (empty when libvirt does not know it)."""
        r = self.read("nodedev-dumpxml", device)
        return r.out if r.ok else ""

    def shell(self, *args: str) -> str:
        """The virsh command line, for showing in a notebook."""
        return shlex.join(["virsh", *args])


TRANSIENT_AGENT_ERRORS = ("not available for now", "is not connected", "not responding")


def virsh_agent_call(via: Guest, domain: str, uri: str = DEFAULT_URI, retry_s: float = 20) -> AgentCall:
    """Send guest-agent JSON with ``virsh qemu-agent-command`` run on ``via``
    (L1 reaching its own guest L2). A briefly unavailable agent is retried for
    ``retry_s`` seconds (libvirt sent nothing then, so a retry runs nothing twice)."""

    def call(msg: dict, timeout: float) -> dict:
        deadline = time.monotonic() + retry_s
        while True:
            # the way to L2's agent, not a change in L1 (the command L2 runs is recorded as L2's own)
            r = Virsh(via, uri).read("qemu-agent-command", domain, json.dumps(msg), "--timeout",
                                     str(max(int(timeout), 1)), timeout=timeout + 30)
            if r.ok:
                return json.loads(r.out)
            said = (r.err.strip() or r.out.strip())
            transient = any(t in said for t in TRANSIENT_AGENT_ERRORS) and msg.get("execute") != "guest-ping"
            if not transient or time.monotonic() > deadline:
                raise GuestError(f"guest agent of {domain} did not answer: {said}")
            time.sleep(2)
    return call
