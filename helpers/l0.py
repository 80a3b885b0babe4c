"""L0, the machine that runs L1: this machine (the default), or a server reached
over SSH (``host.ssh``). Either way it is a ``Guest`` like L1 and L2, and its
libvirt is one URI; everything here follows from the parameters alone.

- ``guest(p)``: L0's command interface (``Local`` or ``SSH``);
- ``libvirt_uri(p)``: the URI this process opens (``host.libvirt_uri`` when L0
  is this machine; ``qemu+ssh://...`` when it is remote);
- ``libvirt(p)``: a libvirt-python connection to it (one per URI and process);
- ``runner_dir(p)``: this machine's folder for what the SSH client needs about
  a remote L0 (the ssh wrapper libvirt runs; in the lab, L1's key and host key);
- ``check(p)``: host.ssh checked before anything changes (identity, reachable,
  host key known, libvirt reachable over SSH), one clear message each.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shlex
from pathlib import Path
from urllib.parse import quote, urlsplit

from .errors import RunbookError
from .guest import SSH, Guest, Local
from .params import Params


def remote(p: Params) -> bool:
    return p.host.ssh is not None


def guest(p: Params) -> Guest:
    """L0's command interface."""
    s = p.host.ssh
    if s is None:
        return Local()
    if s.config_host:  # user, port, key and known_hosts come from the user's ssh config
        return SSH(host=s.config_host, user=None, port=None, name="l0")
    return SSH(host=s.address, user=s.user, port=s.port, identity=s.identity, known_hosts=s.known_hosts, name="l0")


def runner_dir(p: Params) -> Path:
    """This machine's folder for a remote L0's client-side files, derived from L0's
    address and L1's name (under $XDG_CACHE_HOME or ~/.cache)."""
    s = p.host.ssh
    who = s.config_host if s and s.config_host else f"{s.user}@{s.address}:{s.port}" if s else "local"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nested-nvme"
    tag = hashlib.sha1(who.encode()).hexdigest()[:10]
    return base / f"l0-{tag}" / p.l1.name


def ssh_wrapper(p: Params) -> Path:
    """The ``ssh`` libvirt runs for qemu+ssh (the URI's ``command=``): libvirt's ssh
    transport passes the port, user and keyfile but no known_hosts (virnetsocket.c,
    virNetSocketNewConnectSSH), so this wrapper adds the same options the runbook's
    own SSH uses: keys only, the host key checked against host.ssh.known_hosts."""
    g = guest(p)
    path = runner_dir(p).parent / "ssh"
    body = "#!/bin/sh\n# written by the nested NVMe runbook: ssh as helpers.guest.SSH runs it\nexec ssh " + \
        " ".join(shlex.quote(o) for o in g.options()) + ' "$@"\n'
    if not path.exists() or path.read_text() != body:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.chmod(0o700)
        tmp.replace(path)
    return path


def libvirt_uri(p: Params) -> str:
    """The libvirt URI this process opens for L0."""
    s = p.host.ssh
    if s is None:
        return p.host.libvirt_uri
    if s.libvirt_uri:
        return s.libvirt_uri
    local = urlsplit(p.host.libvirt_uri)  # qemu:///system -> driver qemu, path /system
    driver = local.scheme.split("+")[0] or "qemu"
    path = local.path or "/system"
    query = [f"command={quote(str(ssh_wrapper(p)), safe='/')}", "no_tty=1"]
    if s.config_host:
        return f"{driver}+ssh://{s.config_host}{path}?" + "&".join(query)
    if s.identity:
        query.insert(0, f"keyfile={quote(str(s.identity), safe='/')}")
    host = f"[{s.address}]" if ":" in s.address else s.address
    return f"{driver}+ssh://{quote(s.user)}@{host}:{s.port}{path}?" + "&".join(query)


_CONNECTIONS: dict = {}


def _connection(uri: str):
    from .virt import PyLibvirt
    if uri not in _CONNECTIONS:
        if not _CONNECTIONS:
            atexit.register(_close_all)
        _CONNECTIONS[uri] = PyLibvirt(uri)
    return _CONNECTIONS[uri]


def _close_all() -> None:
    """Close the connections before the interpreter tears libvirt's module down."""
    for lv in _CONNECTIONS.values():
        try:
            lv._conn.close()
        except Exception:
            pass
    _CONNECTIONS.clear()


def libvirt(p: Params):
    """L0's libvirt (libvirt-python), one connection per URI in this process."""
    return _connection(libvirt_uri(p))


def where(p: Params) -> str:
    """L0 in a few words, for messages."""
    s = p.host.ssh
    if s is None:
        return "this machine"
    return f"{s.config_host} (ssh config)" if s.config_host else f"{s.user}@{s.address}:{s.port}"


def check(p: Params) -> None:
    """Before anything changes: a remote L0 can be reached, its host key is known, and
    its libvirt answers over SSH. Raises RunbookError naming the one thing to fix."""
    s = p.host.ssh
    if s is None:
        return
    for key, f in (("identity", s.identity), ("known_hosts", s.known_hosts)):
        if f and not Path(f).exists():
            raise RunbookError(f"host.ssh.{key}: {f} does not exist on this machine",
                               hint="give the path of your private key for L0 (`ssh-keygen -t ed25519` makes one; "
                                    "its .pub goes into L0's authorized_keys)" if key == "identity" else
                                    "add L0's host key to it once: `ssh-keyscan -p PORT ADDRESS >> FILE`, then "
                                    "compare the fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` "
                                    "run on L0")
    g = guest(p)
    r = g.run("true", timeout=30)
    if not r.ok:
        said = (r.err or r.out).strip()
        low = said.lower()
        if "host key verification failed" in low or "no ed25519 host key is known" in low or \
                "host key for" in low and "not known" in low:
            raise RunbookError(f"L0 ({where(p)}): its host key is not in "
                               f"{s.known_hosts or '~/.ssh/known_hosts'} ({said.splitlines()[-1]})",
                               hint="add L0's host key once (`ssh-keyscan -p PORT ADDRESS >> KNOWN_HOSTS`) after "
                                    "checking its fingerprint on L0's console; the runbook never accepts an unknown "
                                    "host key")
        if "identification has changed" in low:
            raise RunbookError(f"L0 ({where(p)}): its host key differs from the one in "
                               f"{s.known_hosts or '~/.ssh/known_hosts'}",
                               hint="if L0 was reinstalled, replace its line in known_hosts (`ssh-keygen -R`); "
                                    "otherwise stop: someone may be in between")
        if "permission denied" in low:
            raise RunbookError(f"L0 ({where(p)}) refuses the key: {said.splitlines()[-1]}",
                               hint="put the public key of host.ssh.identity into L0's authorized_keys for "
                                    f"{s.user or 'the user'}, or fix host.ssh.identity")
        raise RunbookError(f"L0 ({where(p)}) cannot be reached over SSH: "
                           f"{said.splitlines()[-1] if said else f'exit code {r.rc}'}",
                           hint="check host.ssh.address and port, that sshd runs on L0, and that this machine "
                                "reaches it (`ssh -p PORT USER@ADDRESS true`)")
    try:
        lv = libvirt(p)
        lv.lib_version()
    except RunbookError as e:
        raise RunbookError(f"L0 ({where(p)}) answers SSH, but its libvirt cannot be reached over SSH at "
                           f"{libvirt_uri(p)}: {e.message}",
                           hint="on L0: libvirtd (or virtqemud) must run and `virt-ssh-helper` (libvirt >= 6.8) or "
                                "`nc` must be installed; try `virsh -c URI version` from this machine") from None


class Log:
    """A log file on L0 (L1's serial console), read through L0's command interface
    where a wait shows its last lines (``helpers.wait.tail`` calls it)."""

    def __init__(self, guest: Guest, path):
        self.guest, self.path = guest, str(path)
        self.__doc__ = self.path

    def __call__(self) -> str:
        r = self.guest.read(["tail", "-n", "400", self.path], timeout=60)
        if not r.ok:
            raise OSError((r.err or r.out).strip() or f"cannot read {self.path}")
        return r.out

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path
