"""A libvirt to talk to: the host's through libvirt-python, or L1's through
``virsh`` run inside L1. Both offer the same few calls, so defining, starting
and removing a domain is one piece of code for L1 (at L0) and L2 (in L1)."""
from __future__ import annotations

import atexit
import json
import os
import queue
import shlex
import subprocess
import threading
import time

from . import record
from .errors import RunbookError
from . import guest as guest_mod
from .guest import SSH, AgentCall, Guest, GuestError, Result


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


class VirshShell:
    """One interactive ``virsh`` in a machine reached over SSH (L1), kept open for the
    guest-agent messages to its guest (L2). A message then costs a line written and a line
    read, about 30 ms in the lab's L1, instead of an SSH command and a new virsh process
    (0.2-0.3 s under TCG, twice for each command L2 runs). Each message is recorded as the
    one-shot ``virsh -c URI qemu-agent-command ...`` it stands for, with its exit code.

    Lines go in as virsh's own shell reads them: the JSON in single quotes (a quote inside
    it written as the JSON escape \\u0027), then ``echo MARK``; what virsh printed before
    MARK is the answer, lines starting with ``error:`` a failure. A shell that ended (L1's
    SSH connection closed, L1 rebooted) is started again for the next message; one that
    ended during a message that is safe to repeat (anything but guest-exec) is asked again."""

    _open: dict[tuple, "VirshShell"] = {}
    _lock = threading.Lock()

    def __init__(self, via: SSH, uri: str):
        self.via, self.uri = via, uri
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()
        self.marks = 0
        self.lock = threading.Lock()

    @classmethod
    def of(cls, via: Guest, uri: str) -> "VirshShell | None":
        """The shell kept for ``via`` and ``uri``; None where ``via`` is not reached over SSH
        (or NESTED_NVME_VIRSH_SHELL=0 asks for one-shot virsh)."""
        if not isinstance(via, SSH) or os.environ.get("NESTED_NVME_VIRSH_SHELL", "1") == "0":
            return None
        key = (via.control_path(), via.target(), via.port, uri)
        with cls._lock:
            if key not in cls._open:
                cls._open[key] = cls(via, uri)
            return cls._open[key]

    @classmethod
    def close_all(cls) -> None:
        with cls._lock:
            for sh in cls._open.values():
                sh._stop()
            cls._open.clear()

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.proc = None

    def argv(self) -> list[str]:
        # COLUMNS: virsh's line editor echoes each line it reads after its prompt, and scrolls a
        # line longer than the screen's width (80 without a terminal) sideways instead
        return self.via.argv(f"COLUMNS=1000000 virsh -c {shlex.quote(self.uri)} 2>&1")

    def _start(self, timeout: float) -> str | None:
        """Start virsh and read past its banner; None, or why it could not start."""
        self._stop()
        self.lines = queue.Queue()
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, bufsize=1, errors="replace")
        except OSError as e:
            self.proc = None
            return f"could not start ssh: {e}"
        out, lines = self.proc.stdout, self.lines

        def pump() -> None:
            for line in out:
                lines.put(line.rstrip("\n"))
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        ok, said = self._exchange("", timeout)
        if not ok:
            self._stop()
            return said or "virsh did not start"
        return None

    def _exchange(self, line: str, timeout: float) -> tuple[bool | None, str]:
        """Send ``line`` (may be empty) and a mark; (True, output) when the mark came back,
        (None, output) when the shell ended first ("unsent": before it could be written),
        (False, ...) when time ran out."""
        self.marks += 1
        mark = f"__nested_nvme_mark_{os.getpid()}_{self.marks}__"
        try:
            self.proc.stdin.write((line + "\n" if line else "") + f"echo {mark}\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self._stop()
            return None, "unsent"
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._stop()
                return False, f"timed out after {timeout:.0f} s over SSH to {self.via.target()}"
            if item is None:
                self._stop()
                return None, "\n".join(got)
            if item.strip() == mark:
                return True, "\n".join(got)
            if item.startswith("virsh # ") or not item.strip():
                continue  # virsh's prompt with the line it read, and its blank lines
            got.append(item)

    def read(self, domain: str, msg: dict, timeout: int) -> Result:
        """``virsh qemu-agent-command DOMAIN JSON --timeout N`` in the kept shell."""
        payload = json.dumps(msg).replace("'", "\\u0027")
        if "'" in domain or "\n" in domain:
            raise GuestError(f"domain name {domain!r} cannot be passed to virsh's shell")
        line = f"qemu-agent-command '{domain}' '{payload}' --timeout {int(timeout)}"
        repeatable = msg.get("execute") != "guest-exec"
        with self.lock:
            res = None
            for attempt in (1, 2):
                if not self._alive():
                    if why := self._start(min(timeout + 30, 60)):
                        res = Result(255, "", f"virsh in {self.via.name}: {why}")
                        break
                ok, said = self._exchange(line, timeout + 30)
                if ok is None and attempt == 1 and (repeatable or said == "unsent"):
                    continue  # the shell ended before answering (or before reading it): again, in a new one
                if ok is None:
                    res = Result(255, "", f"virsh in {self.via.name} ended: {said or 'no output'}")
                elif ok is False:
                    res = Result(124, "", said)
                else:
                    said = [x for x in said.splitlines() if "Reconnected to the hypervisor" not in x]
                    answer = [x for x in said if x.startswith("{")]
                    if answer and not any(x.startswith("error:") for x in said):
                        res = Result(0, answer[-1] + "\n", "")
                    else:
                        res = Result(1, "", "\n".join(said) or "virsh printed no answer")
                break
        cmd = shlex.join(["virsh", "-c", self.uri, "qemu-agent-command", domain, json.dumps(msg),
                          "--timeout", str(int(timeout))])
        res.cmd = cmd
        if guest_mod.ON_RUN is not None:  # a read, as Virsh.read records the one-shot command
            guest_mod.ON_RUN(self.via.name, cmd, res.rc, True)
        return res


atexit.register(VirshShell.close_all)


def virsh_agent_call(via: Guest, domain: str, uri: str = DEFAULT_URI, retry_s: float = 20) -> AgentCall:
    """Send guest-agent JSON with ``virsh qemu-agent-command`` run on ``via``
    (L1 reaching its own guest L2), through a kept virsh shell where ``via`` is reached over
    SSH (``VirshShell``). A briefly unavailable agent is retried for ``retry_s`` seconds
    (libvirt sent nothing then, so a retry runs nothing twice)."""

    def call(msg: dict, timeout: float) -> dict:
        deadline = time.monotonic() + retry_s
        while True:
            # the way to L2's agent, not a change in L1 (the command L2 runs is recorded as L2's own)
            shell = VirshShell.of(via, uri)
            if shell is not None:
                r = shell.read(domain, msg, max(int(timeout), 1))
            else:
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
