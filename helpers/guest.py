"""One way to run a command on a machine: the host (L0), L1 or L2.

Every fact and operation reads or changes a machine through a ``Guest``:
``guest.run(cmd) -> Result(rc, out, err)``. Implementations:

- ``Local``: this machine, optionally with files read under another root
  (fixture trees in tests);
- ``SSH``: OpenSSH with keys only and pinned host keys, jumps supported;
- ``Agent``: the QEMU guest agent, through a libvirt connection or through
  ``virsh`` run on the machine one level down.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import RunbookError

Command = str | Sequence[str]


class GuestError(RuntimeError):
    """A command could not be run, or failed when it had to succeed."""


@dataclass
class Result:
    """What a command gave back."""

    rc: int
    out: str
    err: str
    cmd: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "Result":
        """Raise GuestError with the command's own words when it failed."""
        if self.rc != 0:
            msg = (self.err or self.out).strip().splitlines()
            tail = msg[-1] if msg else "no output"
            raise GuestError(f"`{self.cmd}` failed with exit code {self.rc}: {tail}")
        return self


def as_shell(cmd: Command) -> str:
    """A command as one shell string."""
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


# Each command run, for ``helpers.record`` (which sets it when a run is recorded):
# ON_RUN(machine, command, exit code, whether it only reads).
ON_RUN: Callable[[str, str, int, bool], None] | None = None
_reading = 0


@contextlib.contextmanager
def reading():
    """Commands run inside only read (facts)."""
    global _reading
    _reading += 1
    try:
        yield
    finally:
        _reading -= 1


class Guest:
    """A machine we can run commands on. Subclasses implement ``_run``."""

    name = "guest"
    _snap: dict[str, tuple[str, str]] | None = None  # path -> (kind, body), inside snapshot()

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        raise NotImplementedError

    def run(self, cmd: Command, timeout: float = 120, input: str | None = None,
            check: bool = False) -> Result:
        """Run ``cmd`` (a shell string or an argv list) and return its result."""
        res = self._run(as_shell(cmd), timeout, input)
        res.cmd = as_shell(cmd)
        if ON_RUN is not None:
            ON_RUN(self.name, res.cmd, res.rc, _reading > 0)
        return res.check() if check else res

    @contextlib.contextmanager
    def snapshot(self, *paths: str):
        """Read many files and directories in one round trip: inside the block,
        ``read_text``, ``exists`` and ``listdir`` of those paths answer from
        that reading (a path with ``*`` is a shell glob). Local reads directly."""
        if self._snap is not None or isinstance(self, Local) or not paths:
            yield self
            return
        self._snap = read_many(self, paths)
        try:
            yield self
        finally:
            self._snap = None

    def _snapped(self, path: str) -> tuple[str, str] | None:
        return self._snap.get(path) if self._snap else None

    def read(self, cmd: Command, timeout: float = 120) -> Result:
        """``run`` for a command that only reads (recorded as such)."""
        with reading():
            return self.run(cmd, timeout=timeout)

    # File helpers, built on run(); Local overrides them with direct reads.
    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it cannot be read."""
        if snap := self._snapped(path):
            return snap[1] if snap[0] == "F" else None
        r = self.read(["cat", path])
        return r.out if r.ok else None

    def exists(self, path: str) -> bool:
        if snap := self._snapped(path):
            return snap[0] != "N"
        return self.read(["test", "-e", path]).ok

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted; empty when it does not exist."""
        if snap := self._snapped(path):
            return sorted(snap[1].split()) if snap[0] == "D" else []
        r = self.read(["ls", "-1A", path])
        return sorted(r.out.split()) if r.ok else []

    def readlink(self, path: str) -> str | None:
        r = self.read(["readlink", path])
        return r.out.strip() if r.ok and r.out.strip() else None

    def which(self, program: str) -> bool:
        return self.read(f"command -v {shlex.quote(program)}").ok

    # Writing files: on the machine itself, whichever it is (never by this process's
    # own file calls, so a remote L0 gets its files over SSH like L1 does).
    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``path`` atomically (a temp file beside it, then renamed),
        with ``mode``; the folder must exist. Raises GuestError with the machine's words."""
        q = shlex.quote(str(path))
        self.run(f"t=$(mktemp {q}.XXXXXX) && cat > \"$t\" && chmod {mode:o} \"$t\" && mv -f \"$t\" {q} "
                 f"|| {{ rc=$?; rm -f \"$t\"; exit $rc; }}", input=text, check=True)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """mkdir -p; the last folder gets ``mode``."""
        self.run(["mkdir", "-p", "-m", f"{mode:o}", str(path)], check=True)

    def remove(self, path: str) -> bool:
        """Remove a file; False when there was none."""
        if not self.exists(str(path)):
            return False
        self.run(["rm", "-f", str(path)], check=True)
        return True

    def rmdir(self, path: str) -> bool:
        """Remove an empty folder; False when it is not there or not empty."""
        return self.run(["rmdir", str(path)]).ok

    def is_dir(self, path: str) -> bool:
        return self.read(["test", "-d", str(path)]).ok

    def size(self, path: str) -> int | None:
        """A file's size in bytes, or None when it is not there."""
        r = self.read(["stat", "-c", "%s", str(path)])
        return int(r.out.strip()) if r.ok and r.out.strip().isdigit() else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# Shell builtins only (one process in all, however many files): a header line
# "#<kind> <path>" per path, then its content, each line prefixed with "|", or
# with "/" for a last line without newline. Kinds: F readable regular file,
# D directory (content: its entries), E exists but is special or unreadable
# (/dev/kvm), N does not exist.
_READ_MANY = r"""for f in "$@"; do
  if [ -d "$f" ]; then echo "#D $f"
    for e in "$f"/* "$f"/.[!.]* "$f"/..?*; do if [ -e "$e" ] || [ -L "$e" ]; then echo "|${e##*/}"; fi; done
  elif [ -f "$f" ] && [ -r "$f" ] && { : < "$f"; } 2>/dev/null; then echo "#F $f"
    while IFS= read -r l; do printf '|%s\n' "$l"; done < "$f"; [ -z "$l" ] || printf '/%s\n' "$l"
  elif [ -e "$f" ] || [ -L "$f" ]; then echo "#E $f"
  else echo "#N $f"; fi
done"""


def read_many(guest: Guest, paths: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Kind and text of each path (globs expanded by the guest's shell), in one command."""
    args = " ".join(p if "*" in p else shlex.quote(p) for p in paths)
    with reading():
        r = guest.run(f"set -- {args}; {_READ_MANY}", timeout=60)
    found: dict[str, tuple[str, str]] = {}
    kind, path, text = "", "", []
    for line in r.out.split("\n") + ["#"]:
        if line.startswith("#"):
            if path:
                found[path] = (kind, "".join(text))
            kind, _, path = line[1:].partition(" ")
            text = []
        elif line.startswith("|"):
            text.append(line[1:] + "\n")
        elif line.startswith("/"):
            text.append(line[1:])
    return found


@dataclass
class Local(Guest):
    """This machine. ``root`` maps absolute paths for file reads (fixture
    trees); ``commands`` answers chosen commands with recorded output."""

    root: Path | None = None
    commands: dict[str, Result | str] = field(default_factory=dict)
    name: str = "l0"

    def _path(self, path: str) -> Path:
        return Path(path) if self.root is None else Path(self.root) / path.lstrip("/")

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        if cmd in self.commands:
            rec = self.commands[cmd]
            return rec if isinstance(rec, Result) else Result(0, rec, "")
        if self.root is not None:
            return Result(127, "", f"{cmd}: not recorded in the fixture")
        try:
            p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                               timeout=timeout, input=input, errors="replace")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"timed out after {timeout:.0f} s")
        return Result(p.returncode, p.stdout, p.stderr)

    def read_text(self, path: str) -> str | None:
        try:
            return self._path(path).read_text(errors="replace")
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(path)))
        except OSError:
            return []

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(self._path(path))
        except OSError:
            return None

    def which(self, program: str) -> bool:
        if self.root is not None:
            return any(self.exists(f"{d}/{program}") for d in
                       ("/usr/bin", "/usr/sbin", "/bin", "/sbin"))
        return super().which(program)


@dataclass
class SSH(Guest):
    """OpenSSH to ``user@host:port``: keys only, host key checked.

    ``known_hosts`` pins the host key (the lab writes the key of the image it
    built); ``jump`` is another SSH guest to hop through (``-J``);
    ``config`` is an ssh_config file (the user's own by default).
    """

    host: str
    user: str | None = "root"
    port: int | None = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    jump: "SSH | None" = None
    config: Path | None = None
    connect_timeout: int = 10
    multiplex: bool = True
    name: str = "ssh"

    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def port_args(self) -> list[str]:
        return ["-p", str(self.port)] if self.port else []

    def options(self) -> list[str]:
        """ssh options shared by the command and by a jump to it."""
        opts = ["-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "LogLevel=ERROR"]
        if self.config:
            opts = ["-F", str(self.config)] + opts
        if self.identity:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.multiplex:  # one TCP connection for the many short commands facts run
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path()}",
                     "-o", "ControlPersist=60"]
        return opts

    def control_path(self) -> str:
        """A shared connection per target AND credentials: a different key or
        known_hosts file never rides on a connection checked with others."""
        ident = "|".join(str(x) for x in (self.host, self.port, self.user, self.identity, self.known_hosts,
                                          self.config, self.jump and self.jump.control_path()))
        return f"/tmp/nested-nvme-ssh-{hashlib.sha1(ident.encode()).hexdigest()[:16]}"

    def close(self) -> None:
        """End the shared connection (after the machine behind it stopped or restarted)."""
        if self.multiplex:
            try:
                subprocess.run(["ssh", "-o", f"ControlPath={self.control_path()}", "-O", "exit", self.target()],
                               capture_output=True, timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def argv(self, cmd: str) -> list[str]:
        argv = ["ssh", *self.options(), *self.port_args()]
        if self.jump:
            j = self.jump
            proxy = shlex.join(["ssh", *j.options(), *j.port_args(), "-W", "%h:%p", j.target()])
            argv += ["-o", f"ProxyCommand={proxy}"]
        return argv + [self.target(), "--", cmd]

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        try:
            p = subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout,
                               input=input if input is not None else "", errors="replace")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"timed out after {timeout:.0f} s over SSH to {self.target()}")
        except FileNotFoundError:
            raise GuestError("ssh is not installed: install openssh-client")
        if p.returncode == 255:
            return Result(255, p.stdout, p.stderr or f"ssh to {self.target()} port {self.port or 22} failed")
        return Result(p.returncode, p.stdout, p.stderr)


AgentCall = Callable[[dict, float], dict]


def libvirt_agent_call(dom) -> AgentCall:
    """Send guest-agent JSON through a libvirt-python domain, or through whatever a
    callable ``dom()`` returns at each call (a domain looked up again on a
    connection that survives a libvirtd restart)."""
    import libvirt_qemu

    def call(msg: dict, timeout: float) -> dict:
        d = dom() if callable(dom) else dom
        if d is None:
            raise GuestError("the domain is not defined (any more)")
        return json.loads(libvirt_qemu.qemuAgentCommand(d, json.dumps(msg), max(int(timeout), 1), 0))
    return call


@dataclass
class Agent(Guest):
    """The QEMU guest agent: guest-exec, then poll guest-exec-status."""

    call: AgentCall = None  # type: ignore[assignment]
    name: str = "agent"
    poll: float = 0.2

    def ping(self, timeout: float = 5) -> bool:
        try:
            self.call({"execute": "guest-ping"}, timeout)
            return True
        except Exception:
            return False

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        args = {"path": "/bin/sh", "arg": ["-c", cmd], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input.encode()).decode()
        try:
            pid = self.call({"execute": "guest-exec", "arguments": args}, 30)["return"]["pid"]
        except (GuestError, RunbookError):
            raise
        except Exception as e:  # libvirt errors carry a clear message
            raise GuestError(f"guest agent of {self.name}: {e}") from None
        deadline = time.monotonic() + timeout
        while True:
            st = self.call({"execute": "guest-exec-status", "arguments": {"pid": pid}}, 30)["return"]
            if st.get("exited"):
                break
            if time.monotonic() > deadline:
                return Result(124, "", f"timed out after {timeout:.0f} s in {self.name}")
            time.sleep(self.poll)
        dec = lambda k: base64.b64decode(st.get(k, "")).decode(errors="replace")  # noqa: E731
        rc = st.get("exitcode", 128 + st.get("signal", 0))
        return Result(rc, dec("out-data"), dec("err-data"))
