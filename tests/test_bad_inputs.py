"""A user's mistakes, as a new user makes them: each is refused before anything
is created or changed, with exit 2 and the exact message, one line a problem,
and no Python traceback.

Every case runs the command line in this process (``cli.main``) with the
workdir, the backing file and the lab's image cache pointed into tmp_path and
stage notebooks that would only leave a mark; after it, those folders are
empty, no stage ran and no libvirt domain of the case's name exists. An
exception escaping ``main`` fails the test: that is the traceback a user would
have seen.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import params
from helpers.params import fit
from helpers.run import cli
from helpers.lab import images

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "bad-input-test-l1"
FAT = "tests-vfat"

# The first nine lines of every case's file; a case's own lines start on line 10,
# either more keys of l1 (indented two spaces) or further sections.
HEADER = """\
lab: {lab}
host:
  workdir: {workdir}
nvme:
  backing_file: {backing}
l1:
  name: {name}
  network:
    ssh_port: {port}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class World:
    """A case's tmp paths, its parameter file and its command line."""

    def __init__(self, tmp_path: Path, monkeypatch):
        self.tmp = tmp_path
        self.work = tmp_path / "work"
        self.cache = tmp_path / "cache"
        self.out = tmp_path / "out"
        self.marks = tmp_path / "ran"
        self.nbs = tmp_path / "nbs"
        self.port = free_port()
        self.cache.mkdir()
        monkeypatch.setattr(images, "CACHE_DIR", self.cache)
        self.nbs.mkdir()
        for stage in ("01_a", "02_b", "03_c", "04_d", "05_e", "99_z"):
            nb = nbformat.v4.new_notebook()
            cell = nbformat.v4.new_code_cell('params_file = ""\nstate_file = ""\ninteractive = False')
            cell.metadata["tags"] = ["parameters"]
            nb.cells = [cell, nbformat.v4.new_code_cell(
                f"from pathlib import Path\nPath({str(self.marks)!r}).mkdir(exist_ok=True)\n"
                f"Path({str(self.marks / stage)!r}).touch()")]
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            nbformat.write(nb, self.nbs / f"{stage}.ipynb")

    def file(self, tail: str = "", fname: str = "p.yaml", **header) -> Path:
        values = dict(lab="true", workdir=self.work, backing=self.work / "nvme.raw", name=DOMAIN, port=self.port)
        values.update(header)
        f = self.tmp / fname
        f.write_text(HEADER.format(**values) + tail)
        return f

    def run_args(self, *args: str) -> list[str]:
        return ["run", "--outputs", str(self.out), "--notebooks", str(self.nbs), *args]

    def cli(self, capsys, argv: list[str]) -> tuple[int, str, str]:
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse's own exit, after its one line
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err

    def assert_nothing_created(self):
        assert not self.marks.exists(), f"a stage ran: {sorted(os.listdir(self.marks))}"
        assert not self.out.exists() or not any(self.out.iterdir()), "a run folder was made"
        assert not self.work.exists() or not any(self.work.iterdir()), "something was made in the workdir"
        assert not any(self.cache.iterdir()), "something was made in the image cache"
        r = subprocess.run(["virsh", "-c", "qemu:///system", "dominfo", DOMAIN], capture_output=True, text=True)
        assert r.returncode != 0, f"a libvirt domain {DOMAIN} exists"


@pytest.fixture
def world(tmp_path, monkeypatch):
    return World(tmp_path, monkeypatch)


def refused(world: World, capsys, argv: list[str], expected: str, **fmt) -> None:
    """The command exits 2 with exactly ``expected`` (one ERROR line, one line a
    problem), prints nothing else, and nothing was created."""
    rc, out, err = world.cli(capsys, argv)
    want = "ERROR: " + expected.format(tmp=world.tmp, work=world.work, port=world.port, **fmt) + "\n"
    assert (rc, err) == (2, want)
    assert "Traceback" not in err and out == ""
    world.assert_nothing_created()


# ---------------------------------------------------------------- parameter files, through `run`

CASES = [
    # -- the file itself
    ("a folder", None, "{f}: a folder, not a parameter file: give a YAML file such as parameters/lab.yaml"),
    ("not UTF-8", None, "{f}:3: not UTF-8 text (byte 25 is 0xe9): save the file as UTF-8"),
    ("empty", None, "{f}: no settings in it (empty, or only comments): start from a copy of parameters/lab.yaml "
                    "(the lab) or parameters/seed-xeon4214.yaml (a real host)"),
    ("only comments", None, "{f}: no settings in it (empty, or only comments): start from a copy of "
                            "parameters/lab.yaml (the lab) or parameters/seed-xeon4214.yaml (a real host)"),
    ("a notebook", None, "{f}: a Jupyter notebook, not a parameter file: give a YAML file such as "
                         "parameters/lab.yaml"),
    ("a notebook renamed .yaml", None, "{f}: a Jupyter notebook, not a parameter file: give a YAML file such as "
                                       "parameters/lab.yaml"),
    ("no such file", None, "{f}: no such parameter file (the lab's is parameters/lab.yaml)"),
    ("a list", None, "{f}: expected a mapping of sections (host, l1, nvme, l2, ...) at the top"),
    ("a tab", None, "{f}:2: not valid YAML: found character '\\t' that cannot start any token "
                    "(while scanning for the next token)"),
    ("a NUL byte", None, "{f}:2: not valid YAML: character 0x0000 is not allowed: remove it"),
    ("two documents", "---\nlab: true\n",
     "{f}:10: not valid YAML: but found another document (expected a single document in the stream)"),
    ("a python tag", "  cores: !!python/object:os.system x\n",
     "{f}:10: not valid YAML: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object:os.system'"),
    ("a list as a key", "  ? [a, b]\n  : x\n", "{f}:10: a key is a plain name, not a list or a mapping"),
    ("key twice in a section", "  cores: 2\n  cores: 4\n",
     "{f}:11: l1.cores: given twice (first on line 10, again on line 11): keep one"),
    ("section twice", "l1:\n  cores: 2\n", "{f}:10: l1: given twice (first on line 6, again on line 10): keep one"),
    ("a section that is a number", "l2: 5\n", "{f}:10: l2: expected the section's keys below it, not a single value"),
    ("an empty section", "l2:\n", "{f}:10: l2: an empty section: give its keys below it, or remove the line for "
                                  "the defaults"),
    # -- messages
    ("a misspelt key", "  memroy_mib: 4096\n",
     "{f}:10: l1.memroy_mib: unknown key; did you mean `memory_mib`? (the keys are in parameters/README.md)"),
    ("a key in the wrong section", "  serial: '1234'\n",
     "{f}:10: l1.serial: unknown key here; it belongs in nvme or nvme.select or l2.select (see parameters/README.md)"),
    ("a key nothing resembles", "verify:\n  frobnicate: 1\n",
     "{f}:11: verify.frobnicate: unknown key; verify has mkfs, force_wipe, mount_point (see parameters/README.md)"),
    ("a wrong type", "  cores: two\n",
     "{f}:10: l1.cores: Input should be a valid integer, unable to parse string as an integer (got 'two')"),
    ("a nested section twice", "  network:\n    mode: bridge\n",
     "{f}:10: l1.network: given twice (first on line 8, again on line 10): keep one"),
    # -- paths
    ("workdir relative", {"workdir": "nested"},
     "{f}:3: host.workdir: `nested` is a relative path: give an absolute one, e.g. /var/lib/nested-nvme"),
    ("workdir /", {"workdir": "/"},
     "{f}:3: host.workdir: / is a system folder: teardown removes what the runbook made in host.workdir, so give "
     "a folder of the runbook's own, e.g. /var/lib/nested-nvme"),
    ("workdir /var/lib/", {"workdir": "/var/lib/"},
     "{f}:3: host.workdir: /var/lib is a system folder: teardown removes what the runbook made in host.workdir, "
     "so give a folder of the runbook's own, e.g. /var/lib/nested-nvme"),
    ("workdir a file", {"workdir": "{tmp}/afile"},
     "{f}:3: host.workdir: {tmp}/afile is a file: give a folder (it is created if missing), e.g. "
     "/var/lib/nested-nvme"),
    ("backing file relative", {"backing": "nvme.raw"},
     "{f}:5: nvme.backing_file: `nvme.raw` is a relative path: give an absolute one, e.g. "
     "/var/lib/nested-nvme/nvme.raw"),
    ("backing file a folder", {"backing": "{tmp}/adir"},
     "{f}:5: nvme.backing_file: {tmp}/adir is a folder: give the path of a file, e.g. /var/lib/nested-nvme/nvme.raw"),
    ("backing file under /dev", {"backing": "/dev/shm/nvme.raw"},
     "{f}:5: nvme.backing_file: /dev/shm/nvme.raw is under /dev, where the kernel shows devices and its own state: "
     "give a file on a disk, e.g. /var/lib/nested-nvme/nvme.raw"),
    ("identity under /proc", "  ssh:\n    identity: /proc/self/environ\n",
     "{f}:11: l1.ssh.identity: /proc/self/environ is under /proc, where the kernel shows devices and its own "
     "state: give a file on a disk, e.g. /root/.ssh/id_ed25519"),
    ("known_hosts relative", "  ssh:\n    known_hosts: known_hosts\n",
     "{f}:11: l1.ssh.known_hosts: `known_hosts` is a relative path: give an absolute one, e.g. "
     "/root/.ssh/known_hosts"),
    ("mount point relative", "verify:\n  mount_point: data\n",
     "{f}:11: verify.mount_point: `data` is a relative path: give an absolute one in L2, e.g. /data"),
    ("mount point /", "verify:\n  mount_point: /\n",
     "{f}:11: verify.mount_point: / is L2's root filesystem: give a folder of its own for the NVMe, e.g. /data"),
    ("mount point /etc", "verify:\n  mount_point: /etc\n",
     "{f}:11: verify.mount_point: /etc is a system folder of L2 and mounting the NVMe there would hide it: give "
     "a folder of its own, e.g. /data"),
    ("l2 image relative", {"lab": "false"}, "  image: {tmp}/l1.qcow2\nl2:\n  image: nvmetest.qcow2\n",
     "{f}:12: l2.image: `nvmetest.qcow2` is a relative path: give an absolute one in L1, e.g. /root/nvmetest.qcow2"),
    ("l1 image a folder", {"lab": "false"}, "  image: {tmp}/adir\nl2:\n  image: /root/l2.qcow2\n",
     "{f}:10: l1.image: {tmp}/adir is a folder: give the path of a file, e.g. /var/lib/libvirt/images/l1.qcow2"),
    # -- settings that contradict each other
    ("a real host with the lab's image", {"lab": "false"}, "",
     "{f}:1: l1.image: a real host (lab: false) needs its own image: give the absolute path of L1's disk image on "
     "L0, or set `lab: true` for the emulated lab\n"
     "{f}:1: l2.image: a real host (lab: false) needs its own image: give the absolute path of L2's disk image "
     "inside L1, or set `lab: true` for the emulated lab"),
    ("the lab with a real image", "  image: {tmp}/l1.qcow2\n",
     "{f}:10: l1.image: the lab (lab: true) builds its own image: set `image: lab`, or `lab: false` to use "
     "{tmp}/l1.qcow2"),
    ("select.serial is not nvme.serial", "l2:\n  select:\n    serial: '5678'\n",
     "{f}:12: l2.select.serial: `5678` matches no NVMe: the one the runbook gives L1 has serial `1234` "
     "(nvme.serial); make them equal, or leave l2.select.serial empty"),
    ("a CPU beyond any host", "  cpuset: 0-99999999999999\n",
     "{f}:10: l1.cpuset: CPU 99999999999999 is beyond any host's (Linux numbers CPUs 0-8191): give CPUs of this "
     "host, or leave l1.cpuset empty"),
    ("an unquoted serial", "l2:\n  select:\n    serial: 1234\n",
     "{f}:12: l2.select.serial: expected text, got the number 1234: write it in quotes, '1234'"),
    ("a backwards cpuset", "  cpuset: 1-0\n",
     "{f}:10: l1.cpuset: `1-0` runs backwards: write the lower CPU first, `0-1`"),
    ("L2 bigger than L1", "l2:\n  memory_mib: 4096\n",
     "{f}:11: l2.memory_mib: 4096 MiB must be less than L1's 2048 MiB"),
    ("the backing file is L1's image", {"lab": "false", "backing": "{tmp}/l1.qcow2"},
     "  image: {tmp}/l1.qcow2\nl2:\n  image: /root/l2.qcow2\n",
     "{f}:5: nvme.backing_file: {tmp}/l1.qcow2 is also l1.image: give the NVMe a file of its own"),
    # -- names
    ("a name too long for a file name", {"name": "n" * 250},
     "{f}:7: l1.name: 250 characters make the runbook's file <name>-console.log 262 characters long, more than "
     "the 255 a file name may have: use at most 243"),
    ("a name that reads as an option", "l2:\n  name: -nvmetest\n",
     "{f}:11: l2.name: `-nvmetest` starts with `-`: start the name with a letter or a digit"),
    # -- secrets
    ("an SSH password", "  ssh:\n    password: hunter2\n",
     "{f}:11: l1.ssh.password: SSH is by key only: give `l1.ssh.identity`, the path of your private key "
     "(the value is not shown)"),
    ("an SSH passphrase", "  ssh:\n    passphrase: hunter2\n",
     "{f}:11: l1.ssh.passphrase: SSH is by key only: give `l1.ssh.identity`, the path of your private key "
     "(the value is not shown)"),
    ("a private key in the file", "  ssh:\n    identity: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n"
                                  "      hunter2\n      -----END OPENSSH PRIVATE KEY-----\n",
     "{f}:11: l1.ssh.identity: holds a private key itself: take it out of this file and give the path of the key "
     "file in l1.ssh.identity (the value is not shown)"),
    ("a secret in a wrong type", "bench:\n  secret_key: 5\n",
     "{f}:11: bench.secret_key: a parameter file holds no secrets: remove this key (its value is not shown)"),
]


def _write_special(world: World, name: str) -> Path:
    """The files a header cannot make."""
    f = world.tmp / "p.yaml"
    if name == "a folder":
        f.mkdir()
    elif name == "not UTF-8":
        f.write_bytes(b"lab: true\nname: lab\n# caf\xe9 au lait\n")
    elif name == "empty":
        f.write_text("")
    elif name == "only comments":
        f.write_text("# the lab\n# lab: true\n")
    elif name == "a notebook":
        f = world.nbs / "01_a.ipynb"
    elif name == "a notebook renamed .yaml":
        f.write_text((world.nbs / "01_a.ipynb").read_text())
    elif name == "no such file":
        f = world.tmp / "nope.yaml"
    elif name == "a list":
        f.write_text("- lab: true\n")
    elif name == "a NUL byte":
        f.write_text("lab: true\n\0\n")
    elif name == "a tab":
        f.write_text("lab: true\n\tname: x\n")
    return f


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_parameter_file_is_refused_before_anything(world, capsys, case):
    name, *spec, expected = case
    header, tail = {}, ""
    for s in spec:
        if isinstance(s, dict):
            header = {k: v.format(tmp=world.tmp) for k, v in s.items()}
        elif isinstance(s, str):
            tail = s.format(tmp=world.tmp)
    (world.tmp / "afile").write_text("x")
    (world.tmp / "adir").mkdir()
    f = _write_special(world, name) if spec == [None] else world.file(tail, **header)
    refused(world, capsys, world.run_args("--params", str(f)), expected, f=f)


def test_bridge_mode_without_its_address_is_one_line(world, capsys):
    f = world.tmp / "p.yaml"
    f.write_text(f"lab: true\nhost:\n  workdir: {world.work}\nl1:\n  name: {DOMAIN}\n  network:\n    mode: bridge\n")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}:6: l1.network: mode 'bridge' needs 'bridge' (e.g. bridge0) and 'address' (L1's SSH address)", f=f)


def test_a_bridge_this_host_lacks(world, capsys):
    f = world.file("    mode: bridge\n    bridge: nobr0\n    address: 192.0.2.10\n")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}: l1.network.bridge: no bridge `nobr0` on this host: create it (e.g. `nmcli con add type bridge "
            "ifname nobr0`), or give one `ip -br link show type bridge` lists", f=f)


def test_a_bridge_name_that_is_no_interface_name(world, capsys):
    f = world.file("    mode: bridge\n    bridge: ../eth0\n    address: 192.0.2.10\n")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}:11: l1.network.bridge: `../eth0` is not a network interface name: at most 15 letters, digits, "
            "'-', '_' or '.', e.g. bridge0", f=f)


def test_a_token_is_refused_and_never_shown(world, capsys):
    f = world.tmp / "p.yaml"
    f.write_text(f"lab: true\nhost:\n  workdir: {world.work}\n  api_token: hunter2\n")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}:4: host.api_token: a parameter file holds no secrets: remove this key (its value is not shown)", f=f)


def test_no_refused_secret_is_printed_back(world, capsys):
    for tail in ("  ssh:\n    password: hunter2\n", "  ssh:\n    key: hunter2\n", "bench:\n  secret: [hunter2]\n"):
        f = world.file(tail)
        rc, _, err = world.cli(capsys, ["check-params", str(f)])
        assert rc == 2 and "hunter2" not in err and len(err.splitlines()) == 1
    world.assert_nothing_created()


def test_every_problem_of_a_file_is_one_line_in_file_order(world, capsys):
    f = world.file("  cores: two\n  memroy_mib: 1\nverify:\n  mount_point: data\n")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}:10: l1.cores: Input should be a valid integer, unable to parse string as an integer (got 'two')\n"
            "{f}:11: l1.memroy_mib: unknown key; did you mean `memory_mib`? (the keys are in parameters/README.md)\n"
            "{f}:13: verify.mount_point: `data` is a relative path: give an absolute one in L2, e.g. /data", f=f)


# ---------------------------------------------------------------- what must exist, what only the host can tell

def test_missing_ssh_files_and_image_are_named_with_what_to_do(world, capsys):
    t = world.tmp
    f = world.file(f"  image: {t}/l1.qcow2\n  ssh:\n    identity: {t}/id\n    known_hosts: {t}/kh\n"
                   f"    config: {t}/cfg\nl2:\n  image: /root/l2.qcow2\n", lab="false")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}: l1.ssh.identity: {tmp}/id does not exist: give your private key authorized in L1 "
            "(`ssh-keygen -t ed25519` makes one; its .pub goes in L1's authorized_keys)\n"
            "{f}: l1.ssh.known_hosts: {tmp}/kh does not exist: add L1's host key to it once "
            "(`ssh-keyscan ADDRESS >> FILE`, then compare the fingerprint with L1's console)\n"
            "{f}: l1.ssh.config: {tmp}/cfg does not exist: give an existing ssh config file, or remove the key\n"
            "{f}: l1.image: {tmp}/l1.qcow2 does not exist: put L1's disk image there (prepared beforehand), "
            "or fix the path", f=f)


def test_cpus_and_memory_this_host_lacks(world, capsys):
    cpus, mem = fit.cpus_and_memory()
    f = world.file(f"  cpuset: {cpus[-1] + 1}-{cpus[-1] + 2}\n  memory_mib: {mem + 1024}\n")
    refused(world, capsys, world.run_args("--params", str(f)),
            "{f}: l1.cpuset: CPUs [{a}, {b}] are not on this host (it has {n}: {lo}-{hi}); leave it empty to let "
            "the runbook choose\n{f}: l1.memory_mib: {m} MiB asked, this host has {mem} MiB",
            f=f, a=cpus[-1] + 1, b=cpus[-1] + 2, n=len(cpus), lo=cpus[0], hi=cpus[-1], m=mem + 1024, mem=mem)


def test_a_backing_file_bigger_than_the_free_space_and_the_filesystem(world, capsys):
    f = world.file(backing=f"{world.work}/nvme.raw\n  size_gib: 65536")
    rc, out, err = world.cli(capsys, world.run_args("--params", str(f)))
    room = fit.room_for(world.work / "nvme.raw")
    number = r"[0-9.]+"  # the free space moves while the test runs; the rest is exact
    expected = [f"ERROR: {f}: nvme.size_gib: 65536 GiB for {world.work}/nvme.raw, but {room.fstype} on {room.mount} "
                f"holds files of at most {room.biggest / 1024 ** 3:g} GiB: lower nvme.size_gib, or put "
                "nvme.backing_file on another filesystem"] if room.biggest else []
    expected.append(re.escape(f"{f}: nvme.size_gib: 65536 GiB for {world.work}/nvme.raw, but ") + number +
                    re.escape(f" GiB are free on {room.mount}: lower nvme.size_gib to at most ") + number +
                    re.escape(", free space there, or put nvme.backing_file where there is room"))
    lines = err.splitlines()
    assert rc == 2 and len(lines) == len(expected)
    if room.biggest:
        assert lines[0] == expected[0]
    assert re.fullmatch(("ERROR: " if not room.biggest else "") + expected[-1], lines[-1])
    world.assert_nothing_created()


def test_free_space_and_biggest_file_messages_exactly(world):
    p = params.load(world.file())
    p.nvme.size_gib = 8
    room = fit.Room(world.work, "/mnt/usb", "vfat", 5 * 1024 ** 3, 4 * 1024 ** 3 - 1)
    assert fit.space_problems(p, room) == [
        ("nvme.size_gib", f"8 GiB for {world.work}/nvme.raw, but vfat on /mnt/usb holds files of at most 4 GiB: "
                          "lower nvme.size_gib, or put nvme.backing_file on another filesystem"),
        ("nvme.size_gib", f"8 GiB for {world.work}/nvme.raw, but 5.0 GiB are free on /mnt/usb: lower "
                          "nvme.size_gib to at most 5, free space there, or put nvme.backing_file where there is room")]
    assert fit.biggest_file("ext4", 4096) == 16 * 1024 ** 4
    assert fit.biggest_file("xfs", 4096) is None
    world.assert_nothing_created()


def test_a_port_held_by_another_process_is_named_with_its_pid(world, capsys):
    f = world.file()
    with socket.socket() as s:
        s.bind(("127.0.0.1", world.port))
        s.listen()
        taken = fit.listening_ports()
        free = next(n for n in range(world.port + 1, 65536) if n not in taken)
        cmd = " ".join(Path("/proc/self/cmdline").read_bytes().decode().split("\0")).strip()[:80]
        refused(world, capsys, world.run_args("--params", str(f)),
                "{f}: l1.network.ssh_port: 127.0.0.1:{port} is taken by pid {pid} ({cmd}): stop it, or choose a "
                "free port such as {free}", f=f, pid=os.getpid(), cmd=cmd, free=free)


def _fake_qemu(tmp: Path, port: int, domain: str) -> subprocess.Popen:
    """A process named like QEMU, for domain ``domain``, listening on 127.0.0.1:port (no VM):
    Python under a link named qemu-system-x86_64."""
    qemu = tmp / "qemu-system-x86_64"
    qemu.symlink_to(Path(sys.executable).resolve())
    code = ("import socket,sys,time\ns=socket.socket();s.bind(('127.0.0.1',%d));s.listen();"
            "print('up',flush=True);time.sleep(60)" % port)
    proc = subprocess.Popen([str(qemu), "-c", code, "-name", f"guest={domain},debug-threads=on"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_a_port_held_by_this_very_l1_is_fine_and_another_l1_is_not(world, capsys):
    f = world.file()
    proc = _fake_qemu(world.tmp, world.port, DOMAIN)
    try:
        rc, out, err = world.cli(capsys, ["check-params", str(f)])
        assert (rc, err) == (0, "") and "valid, and this host can run it" in out
        other = world.file(fname="other.yaml", name="another-l1")
        rc, out, err = world.cli(capsys, ["check-params", str(other)])
        assert rc == 2 and err.startswith(
            f"ERROR: {other}: l1.network.ssh_port: 127.0.0.1:{world.port} is taken by pid {proc.pid} "
            f"(QEMU of domain {DOMAIN}): stop it, or choose a free port such as ")
    finally:
        proc.kill()
        proc.wait()
    world.assert_nothing_created()


def test_check_params_says_when_it_checked_the_schema_only(world, capsys):
    f = ROOT / "parameters" / "seed-xeon4214.yaml"
    rc, out, err = world.cli(capsys, ["check-params", str(f), "--schema-only"])
    assert (rc, err) == (0, "")
    assert out == (f"{f}: valid for the schema; not checked against this host "
                   f"(to check it: python -m helpers check-params {f})\n")


# ---------------------------------------------------------------- the command line

CLI = [
    ("no command", [], "no command: type `python -m helpers run` (stages 01-05 on parameters/lab.yaml), "
                       "`python -m helpers check-params FILE` or `python -m helpers compare RUN_DIR RUN_DIR`"),
    ("an unknown command", ["rnu"], "argument {{run,check-params,compare,fleet}}: invalid choice: 'rnu' (choose "
                                    "from 'run', 'check-params', 'compare', 'fleet'): see `python -m helpers --help`"),
    ("empty --stages", ["--stages", ""], "--stages is empty: give the stages to run, e.g. `--stages 01,02`, or "
                                         "`--stages 99` to tear down"),
    ("--stages of commas", ["--stages", ",,"], "--stages is empty: give the stages to run, e.g. `--stages 01,02`, "
                                               "or `--stages 99` to tear down"),
    ("stages out of order", ["--stages", "03,01"], "--stages 03,01: stages run in order: type `--stages 01,03`"),
    ("a stage twice", ["--stages", "1,01"], "--stages 1,01: stage 01 given twice: type `--stages 01`"),
    ("a stage that is not a number", ["--stages", "build"],
     "--stages build: `build` is not a stage number: stages are 01, 02, 03, 04, 05, 99"),
    ("a stage with no notebook", ["--stages", "07"],
     "--stages 07: no notebook for stage(s) 07: stages are 01, 02, 03, 04, 05, 99"),
    ("--from 99", ["--from", "99"], "--from 99: stage 99 is not followed by others (teardown runs alone): "
                                    "type `--stages 99`"),
    ("empty --from", ["--from", ""], "--from is empty: give the stage to start from, e.g. `--from 03`"),
    ("--from a missing stage", ["--from", "7"], "--from 07: no such stage: stages are 01, 02, 03, 04, 05, 99"),
    ("--stages with --from", ["--stages", "01", "--from", "02"],
     "--stages and --from cannot be used together: type one of them, e.g. `--from 03` or `--stages 03,04`"),
    ("--run-id outside --outputs", ["--run-id", "../x"],
     "--run-id '../x': not a plain folder name: give a name such as `try-2` (letters, digits, '.', '_', '-'; it "
     "becomes a folder under --outputs)"),
    ("--run-id with a slash", ["--run-id", "a/b"],
     "--run-id 'a/b': not a plain folder name: give a name such as `try-2` (letters, digits, '.', '_', '-'; it "
     "becomes a folder under --outputs)"),
    ("--run-id absolute", ["--run-id", "/tmp/x"],
     "--run-id '/tmp/x': not a plain folder name: give a name such as `try-2` (letters, digits, '.', '_', '-'; it "
     "becomes a folder under --outputs)"),
    ("a zero cell timeout", ["--cell-timeout", "0"],
     "argument --cell-timeout: `0` is not a number of seconds above 0: see `python -m helpers run --help`"),
]


@pytest.mark.parametrize("case", CLI, ids=[c[0] for c in CLI])
def test_a_bad_command_line_is_refused_with_what_to_type(world, capsys, case):
    name, args, expected = case
    argv = args if name in ("no command", "an unknown command") else world.run_args("--params", str(world.file()),
                                                                                     *args)
    refused(world, capsys, argv, expected)


def test_an_outputs_that_is_a_file_is_refused(world, capsys):
    (world.tmp / "afile").write_text("x")
    argv = ["run", "--outputs", str(world.tmp / "afile"), "--notebooks", str(world.nbs),
            "--params", str(world.file())]
    refused(world, capsys, argv, "--outputs {tmp}/afile is a file, not a folder: give a folder (it is created if "
                                 "missing), e.g. `--outputs outputs`")
    argv[2] = str(world.tmp / "afile" / "runs")
    refused(world, capsys, argv, "--outputs {tmp}/afile/runs is under {tmp}/afile, a file, not a folder: give a "
                                 "folder (it is created if missing), e.g. `--outputs outputs`")


def test_an_outputs_in_the_kernels_trees_is_refused(world, capsys):
    argv = ["run", "--outputs", "/proc/runs", "--notebooks", str(world.nbs), "--params", str(world.file())]
    refused(world, capsys, argv, "--outputs /proc/runs is under /proc, where the kernel keeps its own state: give a "
                                 "folder on a disk, e.g. `--outputs outputs`")


def test_a_run_id_that_is_a_file_under_outputs_is_refused(world, capsys):
    world.out.mkdir()
    (world.out / "r1").write_text("x")
    argv = world.run_args("--params", str(world.file()), "--run-id", "r1")
    rc, out, err = world.cli(capsys, argv)
    assert (rc, err) == (2, f"ERROR: --run-id r1: {world.out}/r1 is a file, not a run folder: give another name\n")
    assert sorted(os.listdir(world.out)) == ["r1"] and not world.marks.exists()


def test_a_teardown_alone_is_not_refused_for_what_only_a_build_needs(world):
    p = params.load(world.file(backing=f"{world.work}/nvme.raw\n  size_gib: 65536"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", world.port))
        s.listen()
        keys = [k for k, _ in fit.host_problems(p)]
        assert keys[-1] == "l1.network.ssh_port" and "nvme.size_gib" in keys
        assert fit.host_problems(p, ["99"]) == []
    world.assert_nothing_created()


def test_no_traceback_reaches_the_user_from_the_real_command(tmp_path):
    """The same refusals through ``python -m helpers``: exit 2, one line, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"l1:\n  cores: \xff\n")
    for argv in (["check-params", str(bad)], ["check-params", str(tmp_path)], [],
                 ["run", "--stages", "", "--outputs", str(tmp_path / "out"), "--notebooks", str(tmp_path)],
                 ["run", "--run-id", "../x", "--outputs", str(tmp_path / "out"), "--notebooks", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", "helpers", *argv], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()
