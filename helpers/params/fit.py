"""Does this host fit a parameter file? What only the host can tell, checked before
anything is created: the files it names exist, the CPUs and memory are there, the NVMe's
backing file fits in the free space and in the biggest file its filesystem holds, L1's
forwarded SSH port is free (or held by this very L1), and L1's bridge exists.

``check_fit`` is called by ``check-params`` and by ``run`` before a stage runs.
It only reads: /proc, /sys, statvfs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .fields import ParamsError, parse_cpuset
from .schema import Params

GIB = 1024 ** 3
TIB = 1024 ** 4
LISTEN = "0A"
# Addresses whose listener keeps QEMU from binding 127.0.0.1:port (as /proc/net/tcp{,6} write them).
LOOPBACK_OR_ANY = {"0100007F", "00000000", "00000000000000000000000000000000",
                   "0000000000000000FFFF00000100007F", "0000000000000000FFFF000000000000"}


# ---------------------------------------------------------------- reading the host

def cpus_and_memory(sys_root: Path = Path("/")) -> tuple[list[int], int]:
    """This host's online CPUs and total memory in MiB."""
    online = (sys_root / "sys/devices/system/cpu/online").read_text().strip()
    kib = int(re.search(r"MemTotal:\s+(\d+)", (sys_root / "proc/meminfo").read_text()).group(1))
    return parse_cpuset(online), kib // 1024


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists."""
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem ``path`` is on."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    best = ("/", "")
    target = str(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def biggest_file(fstype: str, block_size: int) -> int | None:
    """The biggest file a filesystem of this type holds, in bytes; None: no limit that matters."""
    if fstype in ("vfat", "msdos", "fat"):
        return 4 * GIB - 1
    if fstype == "ext4":
        return block_size * 2 ** 32
    if fstype in ("ext2", "ext3"):
        return {1024: 16 * GIB, 2048: 256 * GIB}.get(block_size, 2 * TIB)
    return None


@dataclass
class Room:
    """Where a file would go: its filesystem, free bytes, biggest file."""

    checked: Path
    mount: str
    fstype: str
    free: int
    biggest: int | None


def room_for(path: Path) -> Room:
    here = nearest_existing(path)
    st = os.statvfs(here)
    mount, fstype = mount_of(here.resolve())
    return Room(here, mount, fstype, st.f_bavail * st.f_frsize, biggest_file(fstype, st.f_bsize))


def listening_inodes(port: int, net_root: Path = Path("/proc/net"), tables: list[str] | None = None) -> list[int]:
    """Socket inodes listening on ``port`` where they keep 127.0.0.1:port from QEMU
    (``tables``: the texts of /proc/net/tcp and tcp6 read elsewhere, e.g. on a remote L0)."""
    inodes = []
    if tables is None:
        tables = []
        for name in ("tcp", "tcp6"):
            try:
                tables.append((net_root / name).read_text())
            except OSError:
                continue
    for table in tables:
        for row in table.splitlines()[1:]:
            f = row.split()
            if len(f) < 10 or f[3] != LISTEN:
                continue
            addr, _, hexport = f[1].partition(":")
            if int(hexport, 16) == port and addr in LOOPBACK_OR_ANY:
                inodes.append(int(f[9]))
    return inodes


def listening_ports(net_root: Path = Path("/proc/net")) -> set[int]:
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            rows = (net_root / name).read_text().splitlines()[1:]
        except OSError:
            continue
        ports |= {int(r.split()[1].rsplit(":", 1)[1], 16) for r in rows if len(r.split()) > 3 and r.split()[3] == LISTEN}
    return ports


def socket_holder(inode: int, proc: Path = Path("/proc")) -> tuple[int, list[str]] | None:
    """(pid, argv) of a process holding the socket ``inode``."""
    wanted = f"socket:[{inode}]"
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) == wanted:
                    argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
                    return int(pid_dir.name), [a.decode(errors="replace") for a in argv if a]
        except OSError:  # the process ended, or is not ours to read
            continue
    return None


def qemu_domain(argv: list[str]) -> str | None:
    """The libvirt domain a QEMU command line runs (``-name guest=NAME,...``), if it is QEMU."""
    if not argv or "qemu" not in Path(argv[0]).name:
        return None
    for i, a in enumerate(argv[:-1]):
        if a == "-name":
            first = argv[i + 1].split(",")[0]
            return first.removeprefix("guest=")
    return None


# ---------------------------------------------------------------- judging

def file_problems(p: Params, image: bool = True) -> list[tuple[str, str]]:
    """Files the parameters name that must exist already."""
    ssh = p.l1.ssh
    wanted = [
        ("l1.ssh.identity", ssh.identity, "give your private key authorized in L1 (`ssh-keygen -t ed25519` "
                                          "makes one; its .pub goes in L1's authorized_keys)"),
        ("l1.ssh.known_hosts", ssh.known_hosts, "add L1's host key to it once (`ssh-keyscan ADDRESS >> FILE`, "
                                                "then compare the fingerprint with L1's console)"),
        ("l1.ssh.config", ssh.config, "give an existing ssh config file, or remove the key"),
    ]
    if image and p.l1.image not in ("lab", "lab-l2"):
        wanted.append(("l1.image", Path(p.l1.image), "put L1's disk image there (prepared beforehand), "
                                                     "or fix the path"))
    return [(key, f"{path} does not exist: {fix}") for key, path, fix in wanted if path and not path.exists()]


def space_problems(p: Params, room: Room | None = None) -> list[tuple[str, str]]:
    """The backing file, when it is still to be made: it fits in the free space
    and in the biggest file its filesystem holds."""
    f = Path(p.nvme.backing_file)
    if p.nvme.host or f.exists():  # a host NVMe has no backing file
        return []
    room = room or room_for(f)
    size = p.nvme.size_gib * GIB
    out = []
    if room.biggest is not None and size > room.biggest:
        out.append(("nvme.size_gib", f"{p.nvme.size_gib:g} GiB for {f}, but {room.fstype} on {room.mount} holds "
                                     f"files of at most {room.biggest / GIB:g} GiB: lower nvme.size_gib, or put "
                                     "nvme.backing_file on another filesystem"))
    if size > room.free:
        most = int(room.free / GIB * 10) / 10
        lower = f"lower nvme.size_gib to at most {most:g}, " if most > 0 else ""
        out.append(("nvme.size_gib", f"{p.nvme.size_gib:g} GiB for {f}, but {room.free / GIB:.1f} GiB are free on "
                                     f"{room.mount}: {lower}free space there, "
                                     "or put nvme.backing_file where there is room"))
    return out


def port_problem(p: Params, proc: Path = Path("/proc")) -> tuple[str, str] | None:
    """L1's forwarded SSH port on 127.0.0.1 must be free, or held by this very L1
    (a QEMU whose command line names the same domain)."""
    net = p.l1.network
    if net.mode != "user":
        return None
    inodes = listening_inodes(net.ssh_port, proc / "net")
    if not inodes:
        return None
    holders = [h for h in (socket_holder(i, proc) for i in inodes) if h]
    if holders and all(qemu_domain(argv) == p.l1.name for _, argv in holders):
        return None  # the runbook's own L1, up already
    taken = listening_ports(proc / "net")
    free = next(n for n in range(net.ssh_port + 1, 65536) if n not in taken) if net.ssh_port < 65535 else 2222
    if holders:
        pid, argv = holders[0]
        domain = qemu_domain(argv)
        who = f"QEMU of domain {domain}" if domain else " ".join(argv)[:80]
        by = f"pid {pid} ({who})"
    else:
        by = "a process this host does not show (another network namespace?)"
    return ("l1.network.ssh_port", f"127.0.0.1:{net.ssh_port} is taken by {by}: stop it, or choose a free port "
                                   f"such as {free}")


def bridge_problem(p: Params, sys_root: Path = Path("/")) -> tuple[str, str] | None:
    """mode bridge: the bridge exists on this host."""
    net = p.l1.network
    if net.mode != "bridge" or (sys_root / "sys/class/net" / net.bridge / "bridge").is_dir():
        return None
    return ("l1.network.bridge", f"no bridge `{net.bridge}` on this host: create it (e.g. `nmcli con add type "
                                 f"bridge ifname {net.bridge}`), or give one `ip -br link show type bridge` lists")


def host_problems(p: Params, stages: list[str] | None = None) -> list[tuple[str, str]]:
    """Everything this host says against the parameters, as (key, message).
    ``stages``: the stages about to run (None: all); a teardown alone needs
    only the SSH files."""
    if stages is not None and set(stages) <= {"99"}:
        return file_problems(p, image=False)
    out = file_problems(p)
    out += space_problems(p)
    for problem in (port_problem(p), bridge_problem(p)):
        if problem:
            out.append(problem)
    return out


def remote_problems(p: Params, g, stages: list[str] | None = None) -> list[tuple[str, str]]:
    """``host_problems`` for an L0 reached over SSH: the same questions, asked on L0
    through its command interface (the SSH files into L1 stay on this machine, where
    the ssh client runs)."""
    out = [(k, m) for k, m in file_problems(p, image=False)]
    if stages is not None and set(stages) <= {"99"}:
        return out
    if p.l1.image not in ("lab", "lab-l2") and not g.exists(p.l1.image):
        out.append(("l1.image", f"{p.l1.image} does not exist on L0: put L1's disk image there (prepared "
                                "beforehand), or fix the path"))
    f = str(p.nvme.backing_file)
    if not p.nvme.host and not g.exists(f):  # a host NVMe has no backing file
        from ..facts.system import free_disk
        d = free_disk(g, f)
        if d.avail_bytes is not None:
            bs = g.run(["stat", "-f", "-c", "%S", d.checked or "/"])
            block = int(bs.out.strip()) if bs.ok and bs.out.strip().isdigit() else 4096
            out += space_problems(p, Room(Path(d.checked or "/"), d.mount or "/", d.fstype, d.avail_bytes,
                                          biggest_file(d.fstype, block)))
    net = p.l1.network
    if net.mode == "user":
        tables = [t for t in (g.read_text("/proc/net/tcp"), g.read_text("/proc/net/tcp6")) if t]
        inodes = listening_inodes(net.ssh_port, tables=tables)
        if inodes:
            r = g.run("for f in /proc/[0-9]*/fd/*; do case $(readlink $f 2>/dev/null) in " +
                      "|".join(f"'socket:[{i}]'" for i in inodes) +
                      ") p=${f#/proc/}; p=${p%%/*}; echo $p; tr '\\0' ' ' < /proc/$p/cmdline; echo; exit 0;; "
                      "esac; done", timeout=60)
            lines = r.out.splitlines()
            argv = lines[1].split() if len(lines) > 1 else []
            if qemu_domain(argv) != p.l1.name:
                who = f"pid {lines[0]} ({' '.join(argv)[:80]})" if lines else "a process L0 does not show"
                out.append(("l1.network.ssh_port", f"127.0.0.1:{net.ssh_port} on L0 is taken by {who}: stop it, "
                                                   "or choose another free port"))
    elif not g.is_dir(f"/sys/class/net/{net.bridge}/bridge"):
        out.append(("l1.network.bridge", f"no bridge `{net.bridge}` on L0: create it, or give one "
                                         "`ip -br link show type bridge` lists on L0"))
    return out



def check_cpus_memory(p: Params, cpus: list[int], memory_mib: int, path: str | Path = "parameters") -> None:
    """Refuse what this host cannot give: CPUs it lacks, more memory than it has."""
    problems = []
    if p.l1.cpuset:
        missing = sorted(set(parse_cpuset(p.l1.cpuset)) - set(cpus))
        if missing:
            problems.append(f"{path}: l1.cpuset: CPUs {missing} are not on this host "
                            f"(it has {len(cpus)}: {cpus[0]}-{cpus[-1]}); leave it empty to let the runbook choose")
    if p.l1.memory_mib > memory_mib:
        problems.append(f"{path}: l1.memory_mib: {p.l1.memory_mib} MiB asked, this host has {memory_mib} MiB")
    if problems:
        raise ParamsError("\n".join(problems))


def check_fit(p: Params, path: str | Path, stages: list[str] | None = None) -> None:
    """Refuse, one line a problem, what this host cannot give the parameters. With
    host.ssh, L0 is first checked to answer (RunbookError naming what to fix), then
    asked the same questions over SSH."""
    from .. import l0
    if l0.remote(p):
        l0.check(p)
        g = l0.guest(p)
        lines = []
        if stages is None or not set(stages) <= {"99"}:
            online = (g.read_text("/sys/devices/system/cpu/online") or "0").strip()
            m = re.search(r"MemTotal:\s+(\d+)", g.read_text("/proc/meminfo") or "")
            try:
                check_cpus_memory(p, parse_cpuset(online), int(m.group(1)) // 1024 if m else 0, path)
            except ParamsError as e:
                lines += str(e).splitlines()
        lines += [f"{path}: {key}: {msg}" for key, msg in remote_problems(p, g, stages)]
        if lines:
            raise ParamsError("\n".join(lines))
        return
    lines = []
    if stages is None or not set(stages) <= {"99"}:
        cpus, mem = cpus_and_memory()
        try:
            check_cpus_memory(p, cpus, mem, path)
        except ParamsError as e:
            lines += str(e).splitlines()
    try:
        lines += [f"{path}: {key}: {msg}" for key, msg in host_problems(p, stages)]
    except OSError as e:  # the host would not tell: say so rather than guess
        lines.append(f"{path}: cannot check this host ({e}): check-params with --schema-only checks the file alone")
    if lines:
        raise ParamsError("\n".join(lines))
