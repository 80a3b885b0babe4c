"""What uses a block device on a machine, read without touching it: the partitions of a
namespace and everything stacked on them (device-mapper targets: LVM, dm-crypt, multipath,
linear; md arrays; bcache; loop devices backed by them), the filesystems mounted from any of
those, active swap, the signatures blkid finds (LVM2_member, zfs_member, linux_raid_member,
bcache), LVM's physical volumes and ZFS's pools when their tools are there, and the
processes holding any of them (or the controller's character devices) open.

Facts only: nothing here refuses. ``checks.passthrough`` judges what may go.

The reading is a POSIX sh fragment (``USES_SCRIPT``) that ``facts.pci.describe`` runs in the
same round trip as the device's PCI facts; it starts from the shell variables ``$blocks``
(the namespaces' block devices) and ``$chars`` (the controller's and namespaces' character
devices, nvme0 and ng0n1) and prints one tab-separated record per line:

    blk   NAME KIND MAJ:MIN SECTORS NSID LOGICAL_BLOCK DM_NAME DM_UUID
    on    NAME WHAT_IT_SITS_ON           (a partition on its namespace, a holder on what it holds)
    bcache NAME                          (registered with bcache: backing or cache device)
    loop  LOOPN BACKING_FILE             (every loop device; the parser keeps those backed by ours)
    sysmnt MOUNTPOINT NAME DISK          (/, /boot, /boot/efi: which block device and disk)
    mnt   <a /proc/self/mountinfo line on one of our devices>
    mntns PID COMM <a mountinfo line of another mount namespace (one process of each) on one of ours>
    swap  <a /proc/swaps line>
    open  PID COMM PATH
    fdunreadable N
    tool  blkid|pvs|zpool
    blkid <a line of blkid -p -o export>
    pvs   <a line of pvs>
    zpool <a line of zpool status -PL>
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Paths are formatted in ({sys}, {proc}, {dev}) so a test can point them at a fixture tree.
USES_SCRIPT = r"""
blk() {{  # name kind: one 'blk' record
  q={sys}/class/block/$1; d=; s=; i=; lb=; dn=; du=
  read -r d 2>/dev/null <"$q/dev"; read -r s 2>/dev/null <"$q/size"
  read -r i 2>/dev/null <"$q/nsid"; read -r lb 2>/dev/null <"$q/queue/logical_block_size"
  read -r dn 2>/dev/null <"$q/dm/name"; read -r du 2>/dev/null <"$q/dm/uuid"
  printf 'blk\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$d" "$s" "$i" "$lb" "$dn" "$du"
  devs="$devs$d "; names="$names$1 "
  [ -e "$q/bcache" ] && printf 'bcache\t%s\n' "$1"
}}
devs=" "; names=" "; todo=
for n in $blocks; do
  blk "$n" namespace; todo="$todo $n"
  for q in {sys}/class/block/$n/$n*; do
    [ -e "$q/partition" ] || continue
    blk "${{q##*/}}" partition; printf 'on\t%s\t%s\n' "${{q##*/}}" "$n"; todo="$todo ${{q##*/}}"
  done
done
loops=
for f in {sys}/class/block/loop*/loop/backing_file; do
  [ -r "$f" ] || continue
  b=; read -r b 2>/dev/null <"$f"; l=${{f%/loop/backing_file}}; l=${{l##*/}}
  printf 'loop\t%s\t%s\n' "$l" "$b"
  case "$b" in /dev/*) loops="$loops $l=${{b#/dev/}}";; esac
done
while [ -n "${{todo# }}" ]; do  # everything stacked on them: holders, and loop devices backed by them
  set -- $todo; x=$1; shift; todo="$*"
  for h in {sys}/class/block/$x/holders/*; do
    [ -e "$h" ] || [ -L "$h" ] || continue
    y=${{h##*/}}; printf 'on\t%s\t%s\n' "$y" "$x"
    case "$names" in *" $y "*) continue;; esac
    blk "$y" holder; todo="$todo $y"
  done
  for lb in $loops; do
    [ "${{lb#*=}}" = "$x" ] || continue
    y=${{lb%%=*}}; printf 'on\t%s\t%s\n' "$y" "$x"
    case "$names" in *" $y "*) continue;; esac
    blk "$y" loop; todo="$todo $y"
  done
done
srcs=" "; for n in $names; do srcs="$srcs/dev/$n "; done
mi() {{  # a mountinfo file, the record's tag: its lines on our devices
  mf=$1; mt=$2
  while IFS= read -r l; do
    set -f; set -- $l; set +f
    mp=$5; dv=$3; r=${{l#* - }}; set -f; set -- $r; set +f; src=$2
    if [ "$mt" = mnt ]; then case "$mp" in /|/boot|/boot/efi)
      w=; k=; if cd -P {sys}/dev/block/$dv 2>/dev/null; then w=${{PWD##*/}}
        if [ -e ../dev ]; then cd -P .. && k=${{PWD##*/}}; else k=$w; fi; fi
      printf 'sysmnt\t%s\t%s\t%s\n' "$mp" "$w" "$k";;
    esac; fi
    case "$devs" in *" $dv "*) printf '%s\t%s\n' "$mt" "$l"; continue;; esac
    case "$srcs" in *" $src "*) printf '%s\t%s\n' "$mt" "$l";; esac
  done <"$mf"
}}
mi {proc}/self/mountinfo mnt
cd /
# other mount namespaces (containers, services with private mounts): one process of each
sn=$(ls -l {proc}/self/ns/mnt 2>/dev/null); sn=${{sn##* -> }}
ls -l {proc}/[0-9]*/ns/mnt 2>/dev/null | {{
  seen=" $sn "
  while IFS= read -r l; do
    n=${{l##* -> }}; p=${{l% -> *}}; p=${{p%/ns/mnt}}; pid=${{p##*/}}
    case "$seen" in *" $n "*) continue;; esac
    seen="$seen$n "; c=; read -r c 2>/dev/null <"{proc}/$pid/comm"
    [ -r "{proc}/$pid/mountinfo" ] && mi "{proc}/$pid/mountinfo" "mntns	$pid	$c"
  done
}}
while IFS= read -r l; do printf 'swap\t%s\n' "$l"; done <{proc}/swaps 2>/dev/null
watch=" $names$chars "; u=0
for d in {proc}/[0-9]*/fd; do [ -e "$d" ] && ! [ -r "$d" ] && u=$((u+1)); done
printf 'fdunreadable\t%s\n' "$u"
ls -l {proc}/[0-9]*/fd {proc}/self/fd 2>/dev/null | grep -E '^/|-> /dev/' | while IFS= read -r l; do
  case "$l" in
    /*) pid=${{l%/fd:}}; pid=${{pid##*/}};;
    *" -> /dev/"*) t=${{l##* -> }}; case "$watch" in *" ${{t#/dev/}} "*)
      c=; read -r c 2>/dev/null <{proc}/$pid/comm; printf 'open\t%s\t%s\t%s\n' "$pid" "$c" "$t";; esac;;
  esac
done
if command -v blkid >/dev/null 2>&1; then
  printf 'tool\tblkid\n'; a=
  for n in $names; do case "$n" in nvme*) a="$a {dev}/$n";; esac; done
  [ -n "$a" ] && blkid -p -o export $a 2>/dev/null | while IFS= read -r l; do printf 'blkid\t%s\n' "$l"; done
fi
if command -v pvs >/dev/null 2>&1; then
  printf 'tool\tpvs\n'
  pvs --noheadings --separator '|' -o pv_name,vg_name 2>/dev/null | while IFS= read -r l; do printf 'pvs\t%s\n' "$l"; done
fi
if command -v zpool >/dev/null 2>&1; then
  printf 'tool\tzpool\n'
  zpool status -PL 2>/dev/null | while IFS= read -r l; do printf 'zpool\t%s\n' "$l"; done
fi
exit 0
"""

SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi")
SECTOR = 512  # /sys/class/block/*/size counts 512-byte sectors, whatever the device's block size


@dataclass
class BlockDev:
    """A namespace, one of its partitions, or something stacked on them."""

    name: str                       # nvme0n1, nvme0n1p1, dm-0, md127, bcache0, loop3
    kind: str                       # namespace, partition, holder, loop
    dev: str = ""                   # major:minor
    size_bytes: int | None = None
    nsid: int | None = None
    logical_block: int | None = None
    dm_name: str = ""               # device-mapper's name (vg0-root, h23a-lin)
    dm_uuid: str = ""               # LVM-..., CRYPT-LUKS2-..., mpath-..., or empty (dmsetup create)
    on: list[str] = field(default_factory=list)   # what it sits on

    @property
    def holder_kind(self) -> str:
        """lvm, dm-crypt, multipath, device-mapper, md, bcache, loop (or '' for a namespace/partition)."""
        if self.kind == "loop" or self.name.startswith("loop"):
            return "loop"
        if self.name.startswith("dm-"):
            uuid = self.dm_uuid.upper()
            return ("lvm" if uuid.startswith("LVM-") else "dm-crypt" if uuid.startswith("CRYPT-")
                    else "multipath" if uuid.startswith("MPATH-") else "device-mapper")
        if self.name.startswith("md"):
            return "md"
        if self.name.startswith("bcache"):
            return "bcache"
        return "" if self.kind in ("namespace", "partition") else "holder"

    @property
    def label(self) -> str:
        """dm-0 (vg0-root), md127, loop0."""
        return f"{self.name} ({self.dm_name})" if self.dm_name else self.name


@dataclass
class Mount:
    name: str             # the block device it is on: nvme0n1p1, dm-0
    mountpoint: str
    fstype: str
    source: str           # as mountinfo says: /dev/nvme0n1p1, /dev/mapper/vg0-data
    ns_pid: int | None = None   # mounted in another mount namespace: a process in it
    ns_comm: str = ""


@dataclass
class Swap:
    name: str             # nvme0n1p2, dm-1 (the device, or the one whose filesystem holds the swap file)
    path: str             # /dev/nvme0n1p2, /data/swapfile
    size_kib: int | None


@dataclass
class Opener:
    pid: int
    comm: str
    path: str             # /dev/nvme0n1, /dev/nvme0, /dev/ng0n1, /dev/dm-0


@dataclass
class Uses:
    """Everything that uses the namespaces of one controller, on one machine."""

    devices: dict[str, BlockDev] = field(default_factory=dict)   # namespaces, partitions, all stacked on them
    mounts: list[Mount] = field(default_factory=list)
    swaps: list[Swap] = field(default_factory=list)
    openers: list[Opener] = field(default_factory=list)
    signatures: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> blkid fields (TYPE, PTTYPE, LABEL ...)
    bcache: list[str] = field(default_factory=list)   # registered with bcache (a backing or cache device)
    pvs: dict[str, str] = field(default_factory=dict)     # name -> volume group (lvm2's pvs, when there)
    zpools: dict[str, str] = field(default_factory=dict)  # name -> pool (zpool status -PL, when there)
    tools: list[str] = field(default_factory=list)        # which of blkid, pvs, zpool were there
    fd_unreadable: int = 0                                # processes whose open files could not be read
    system_mounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # '/' -> (vda1, vda), whatever disk

    def of(self, names: list[str], chars: list[str]) -> "Uses":
        """The part of these uses that concerns ``names`` (namespaces), what sits on them, and
        the character devices ``chars`` (nvme0, ng0n1): one controller's share."""
        keep = {n for n in self.devices if self.bases(n) & set(names)}
        return Uses({n: d for n, d in self.devices.items() if n in keep},
                    [m for m in self.mounts if m.name in keep], [s for s in self.swaps if s.name in keep],
                    [o for o in self.openers if o.path.removeprefix("/dev/") in keep | set(chars)], {n: s for n, s in self.signatures.items() if n in keep},
                    [b for b in self.bcache if b in keep], {n: v for n, v in self.pvs.items() if n in keep},
                    {n: p for n, p in self.zpools.items() if n in keep}, list(self.tools), self.fd_unreadable,
                    dict(self.system_mounts))

    def bases(self, name: str) -> set[str]:
        """The namespaces ``name`` sits on, through partitions and holders."""
        seen, todo, out = set(), [name], set()
        while todo:
            n = todo.pop()
            if n in seen or n not in self.devices:
                continue
            seen.add(n)
            d = self.devices[n]
            if d.kind == "namespace":
                out.add(n)
            todo.extend(d.on)
        return out

    def chain(self, name: str) -> str:
        """``name`` and what it sits on, down to a partition or namespace:
        'nvme0n1p1', 'dm-0 (vg0-data, on nvme0n1p1)', 'dm-1 (secret, on dm-0 on nvme0n1p3)'."""
        d = self.devices.get(name)
        if d is None or d.kind in ("namespace", "partition") or not d.on:
            return name
        below, n, seen = [], d.on[0], {name}
        while n in self.devices and n not in seen:
            seen.add(n)
            below.append(n)
            b = self.devices[n]
            if b.kind in ("namespace", "partition") or not b.on:
                break
            n = b.on[0]
        return f"{name} ({d.dm_name + ', ' if d.dm_name else ''}on {' on '.join(below)})"

    def holders(self) -> list[BlockDev]:
        """Everything stacked on the namespaces (not the namespaces and their partitions)."""
        return [d for d in self.devices.values() if d.kind in ("holder", "loop")]

    def signature(self, name: str) -> str:
        s = self.signatures.get(name, {})
        return s.get("TYPE") or (f"partition table {s['PTTYPE']}" if s.get("PTTYPE") else "")


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _unescape(path: str) -> str:
    """mountinfo's octal escapes: '/mnt/a\\040b' -> '/mnt/a b'."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


@dataclass
class _Pending:
    """What ``parse_uses`` reads before it can place it: mount, swap and zpool lines are matched
    to the devices once every device is known; blkid's lines belong to the last DEVNAME."""

    loops: dict[str, str] = field(default_factory=dict)      # loopN -> backing file
    blkid: dict[str, str] | None = None                      # the signature being read
    mounts: list[tuple[int | None, str, str]] = field(default_factory=list)  # (ns pid, ns comm, mountinfo line)
    swaps: list[str] = field(default_factory=list)
    zpool: list[str] = field(default_factory=list)


def _read_blk(u: Uses, p: _Pending, rest: list[str]) -> None:
    if len(rest) < 8:
        return
    name, kind, dev, sectors, nsid, lb, dm_name, dm_uuid = rest[:8]
    d = u.devices.setdefault(name, BlockDev(name, kind))
    d.kind, d.dev, d.nsid, d.logical_block, d.dm_name, d.dm_uuid = kind, dev, _int(nsid), _int(lb), dm_name, dm_uuid
    d.size_bytes = _int(sectors) * SECTOR if _int(sectors) is not None else None


def _read_on(u: Uses, p: _Pending, rest: list[str]) -> None:
    if len(rest) < 2:
        return
    d = u.devices.setdefault(rest[0], BlockDev(rest[0], "holder"))
    if rest[1] not in d.on:
        d.on.append(rest[1])


def _read_pair(u: Uses, p: _Pending, tag: str, rest: list[str]) -> None:
    """The records of one or two fields: bcache, loop, sysmnt, fdunreadable, tool."""
    if tag == "bcache" and rest:
        u.bcache.append(rest[0])
    elif tag == "loop" and len(rest) >= 2:
        p.loops[rest[0]] = rest[1]
    elif tag == "sysmnt" and len(rest) >= 3:
        u.system_mounts[rest[0]] = (rest[1], rest[2])
    elif tag == "fdunreadable" and rest:
        u.fd_unreadable = _int(rest[0]) or 0
    elif tag == "tool" and rest:
        u.tools.append(rest[0])


def _read_lines(u: Uses, p: _Pending, tag: str, rest: list[str]) -> None:
    """The records that carry another program's line: mnt, mntns, swap, open, zpool."""
    if tag == "mnt":
        p.mounts.append((None, "", "\t".join(rest)))
    elif tag == "mntns" and len(rest) >= 3 and rest[0].isdigit():
        p.mounts.append((int(rest[0]), rest[1], "\t".join(rest[2:])))
    elif tag == "swap":
        p.swaps.append("\t".join(rest))
    elif tag == "open" and len(rest) >= 3 and rest[0].isdigit():
        u.openers.append(Opener(int(rest[0]), rest[1], rest[2]))
    elif tag == "zpool":
        p.zpool.append("\t".join(rest))


def _read_blkid(u: Uses, p: _Pending, rest: list[str]) -> None:
    line = "\t".join(rest)
    if line.startswith("DEVNAME="):
        p.blkid = u.signatures.setdefault(line.split("=", 1)[1].rsplit("/", 1)[-1], {})
    elif "=" in line and p.blkid is not None:
        k, v = line.split("=", 1)
        p.blkid[k] = v


def _read_pvs(u: Uses, p: _Pending, rest: list[str]) -> None:
    if not rest:
        return
    pv, _, vg = "\t".join(rest).strip().partition("|")
    if pv.startswith("/dev/"):
        u.pvs[pv.strip().removeprefix("/dev/")] = vg.strip()


def _read_record(u: Uses, p: _Pending, tag: str, rest: list[str]) -> None:
    """One record of ``USES_SCRIPT`` into ``u`` (or ``p``, to place later); other tags are ignored."""
    if tag == "blk":
        _read_blk(u, p, rest)
    elif tag == "on":
        _read_on(u, p, rest)
    elif tag in ("bcache", "loop", "sysmnt", "fdunreadable", "tool"):
        _read_pair(u, p, tag, rest)
    elif tag in ("mnt", "mntns", "swap", "open", "zpool"):
        _read_lines(u, p, tag, rest)
    elif tag == "blkid":
        _read_blkid(u, p, rest)
    elif tag == "pvs":
        _read_pvs(u, p, rest)


def _by_source(u: Uses) -> dict[str, str]:
    """/dev/NAME and /dev/mapper/DM_NAME -> the device's name."""
    by_src = {f"/dev/{n}": n for n in u.devices}
    by_src.update({f"/dev/mapper/{d.dm_name}": d.name for d in u.devices.values() if d.dm_name})
    return by_src


def _place_mounts(u: Uses, lines: list[tuple[int | None, str, str]]) -> None:
    """Mountinfo lines on one of the devices (by major:minor, else by source), each mount once."""
    by_dev = {d.dev: d.name for d in u.devices.values() if d.dev}
    by_src = _by_source(u)
    for ns_pid, ns_comm, line in lines:
        f = line.split()
        if len(f) < 7 or " - " not in line:
            continue
        fstype, source = (line.split(" - ", 1)[1].split() + ["", ""])[:2]
        name = by_dev.get(f[2]) or by_src.get(source)
        if name and not any(m.name == name and m.mountpoint == _unescape(f[4]) for m in u.mounts):
            u.mounts.append(Mount(name, _unescape(f[4]), fstype, source, ns_pid, ns_comm))


def _place_swaps(u: Uses, lines: list[str]) -> None:
    """/proc/swaps lines on one of the devices, or swap files on one of its filesystems."""
    by_src = _by_source(u)
    for line in lines:
        f = line.split()
        if f and f[0] != "Filename":
            path = _unescape(f[0])
            name = by_src.get(path) or next((m.name for m in u.mounts if path.startswith(m.mountpoint.rstrip("/") + "/")),
                                            None)  # a swap file on one of its filesystems
            if name:
                u.swaps.append(Swap(name, path, _int(f[2]) if len(f) > 2 else None))


def _place_zpools(u: Uses, lines: list[str]) -> None:
    """`zpool status -PL`'s vdevs that are one of the devices -> their pool."""
    pool = ""
    for line in lines:
        s = line.strip()
        if s.startswith("pool:"):
            pool = s.split(":", 1)[1].strip()
        elif s.startswith("/dev/") and pool:
            dev = s.split()[0].removeprefix("/dev/")
            if dev in u.devices:
                u.zpools[dev] = pool


def parse_uses(records: list[list[str]]) -> Uses:
    """A Uses from the tab-split records of ``USES_SCRIPT`` (other records are ignored)."""
    u, p = Uses(), _Pending()
    for r in records:
        _read_record(u, p, r[0], r[1:])
    _place_mounts(u, p.mounts)
    _place_swaps(u, p.swaps)
    _place_zpools(u, p.zpool)
    return u


def lvm_vg(dm_name: str) -> str:
    """The volume group of an LVM device-mapper name: 'vg--a-root' -> 'vg-a' (dashes doubled inside names)."""
    return re.split(r"(?<!-)-(?!-)", dm_name, maxsplit=1)[0].replace("--", "-")
