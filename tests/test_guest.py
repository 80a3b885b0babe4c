"""The command-running interface: local, real SSH to a local sshd, the guest agent protocol."""
import base64
import shutil
import socket
import subprocess
import time

import pytest

from pathlib import Path

from helpers.guest import SSH, Agent, Guest, GuestError, Local, Result


def test_local_runs_commands_and_reports_exit_codes():
    g = Local()
    r = g.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.rc, r.out, r.err) == (3, "out\n", "err\n")
    with pytest.raises(GuestError, match="exit code 3: err"):
        g.run("echo err >&2; exit 3", check=True)
    assert g.run("cat", input="hello").out == "hello"


def test_local_timeout_is_honoured():
    t0 = time.monotonic()
    r = Local().run("sleep 5", timeout=0.5)
    assert r.rc == 124 and "timed out" in r.err and time.monotonic() - t0 < 3


def test_fixture_root_and_recorded_commands(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("intel_iommu=on\n")
    g = Local(root=tmp_path, commands={"dmesg": "DMAR: IOMMU enabled\n"})
    assert g.read_text("/proc/cmdline") == "intel_iommu=on\n"
    assert g.exists("/proc/cmdline") and not g.exists("/proc/modules")
    assert g.listdir("/proc") == ["cmdline"]
    assert g.run("dmesg").out.startswith("DMAR")
    assert g.run("uname -r").rc == 127  # nothing recorded: no silent fall-through to the real host


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1, keys only, with its own host key."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not shutil.which("ssh") or not shutil.which(sshd_bin):
        pytest.skip("openssh-server/openssh-client not installed (scripts/setup.sh installs them)")
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "user")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "stranger")], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
PidFile {d}/sshd.pid
AllowTcpForwarding yes
""")
    subprocess.run(["mkdir", "-p", "/run/sshd"], check=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    hostkey = (d / "host.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {hostkey[0]} {hostkey[1]}\n")
    (d / "wrong_known_hosts").write_text(
        f"[127.0.0.1]:{port} " + " ".join((d / "stranger.pub").read_text().split()[:2]) + "\n")
    yield {"dir": d, "port": port}
    proc.terminate()
    proc.wait(5)


def _ssh(sshd, **kw):
    d = sshd["dir"]
    args = dict(host="127.0.0.1", port=sshd["port"], user="root", identity=d / "user",
                known_hosts=d / "known_hosts", config=d / "empty_config")
    (d / "empty_config").write_text("")
    args.update(kw)
    return SSH(**args)


def test_ssh_runs_a_command_with_a_pinned_host_key(sshd):
    r = _ssh(sshd).run("echo hello; echo oops >&2; exit 4")
    assert (r.rc, r.out, r.err) == (4, "hello\n", "oops\n")


def test_ssh_passes_stdin(sshd):
    assert _ssh(sshd).run("cat", input="from stdin").out == "from stdin"


def test_ssh_refuses_a_host_whose_key_does_not_match(sshd):
    r = _ssh(sshd, known_hosts=sshd["dir"] / "wrong_known_hosts").run("true")
    assert r.rc == 255 and "host key" in r.err.lower()


def test_ssh_refuses_a_key_that_is_not_authorized(sshd):
    r = _ssh(sshd, identity=sshd["dir"] / "stranger").run("true")
    assert r.rc == 255 and "permission denied" in r.err.lower()


def test_ssh_jumps_through_another_host(sshd):
    # L0 -> "L1" -> "L2": both hops are the same local sshd; each hop checks its host key.
    hop = _ssh(sshd)
    r = _ssh(sshd, jump=hop).run("echo through")
    assert r.ok and r.out == "through\n"
    assert "ProxyCommand=" in " ".join(_ssh(sshd, jump=hop).argv("true"))


class FakeAgent:
    """The guest agent protocol as QEMU speaks it (for a unit test of the client only)."""

    def __init__(self):
        self.sent = []

    def __call__(self, msg, timeout):
        self.sent.append(msg)
        if msg["execute"] == "guest-exec":
            self.cmd = msg["arguments"]["arg"][1]
            self.polls = 0
            return {"return": {"pid": 42}}
        if msg["execute"] == "guest-exec-status":
            self.polls += 1
            if self.polls < 2:
                return {"return": {"exited": False}}
            p = subprocess.run(["sh", "-c", self.cmd], capture_output=True)
            return {"return": {"exited": True, "exitcode": p.returncode,
                               "out-data": base64.b64encode(p.stdout).decode(),
                               "err-data": base64.b64encode(p.stderr).decode()}}
        return {"return": {}}


def test_agent_execs_and_polls_until_the_command_exits():
    fake = FakeAgent()
    r = Agent(call=fake, name="l2", poll=0.01).run("echo in-guest; exit 2")
    assert (r.rc, r.out) == (2, "in-guest\n")
    assert [m["execute"] for m in fake.sent] == ["guest-exec", "guest-exec-status", "guest-exec-status"]
    assert fake.sent[0]["arguments"]["capture-output"] is True


def test_agent_timeout():
    class Never(FakeAgent):
        def __call__(self, msg, timeout):
            return {"return": {"pid": 1}} if msg["execute"] == "guest-exec" else {"return": {"exited": False}}
    r = Agent(call=Never(), poll=0.01).run("sleep 100", timeout=0.1)
    assert r.rc == 124


def test_result_check_keeps_the_command():
    with pytest.raises(GuestError, match="`nvme list` failed with exit code 1: no device"):
        Result(1, "", "no device\n", "nvme list").check()


def test_shared_connections_are_per_credentials(tmp_path):
    a = SSH(host="127.0.0.1", port=2222, identity=tmp_path / "k1", known_hosts=tmp_path / "kh1")
    b = SSH(host="127.0.0.1", port=2222, identity=tmp_path / "k1", known_hosts=tmp_path / "kh2")
    assert a.control_path() != b.control_path()
    assert a.control_path() == SSH(host="127.0.0.1", port=2222, identity=tmp_path / "k1",
                                   known_hosts=tmp_path / "kh1").control_path()
    assert "ControlMaster=auto" in " ".join(a.argv("true"))


class ShellGuest(Guest):
    """The base class's file helpers over `sh -c`, counting round trips."""

    name = "shell"

    def __init__(self):
        self.calls = 0

    def _run(self, cmd, timeout, input):
        self.calls += 1
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, input=input)
        return Result(p.returncode, p.stdout, p.stderr)


def test_snapshot_answers_reads_from_one_round_trip(tmp_path):
    (tmp_path / "a.txt").write_text("line 1\nline 2 with ünicode\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "d").mkdir()
    for n in ("n1", "n2"):
        (tmp_path / "d" / n).mkdir()
        (tmp_path / "d" / n / "cpulist").write_text(f"{n}\n")
    g = ShellGuest()
    paths = [str(tmp_path / "a.txt"), str(tmp_path / "empty"), str(tmp_path / "d"), str(tmp_path / "nope"),
             "/dev/null", str(tmp_path / "d" / "n*" / "cpulist")]
    with g.snapshot(*paths):
        assert g.calls == 1
        assert g.read_text(str(tmp_path / "a.txt")) == "line 1\nline 2 with ünicode\n"
        assert g.read_text(str(tmp_path / "empty")) == ""
        assert g.listdir(str(tmp_path / "d")) == ["n1", "n2"]
        assert g.read_text(str(tmp_path / "d" / "n2" / "cpulist")) == "n2\n"  # from the glob
        assert g.exists(str(tmp_path / "d")) and g.exists("/dev/null")
        assert g.read_text("/dev/null") is None  # a special file is not read
        assert not g.exists(str(tmp_path / "nope")) and g.read_text(str(tmp_path / "nope")) is None
        assert g.listdir(str(tmp_path / "nope")) == []
        assert g.calls == 1
        assert g.read_text("/etc/hostname") == Path("/etc/hostname").read_text()  # not snapped: asked
        assert g.calls == 2
    (tmp_path / "a.txt").write_text("changed\n")
    assert g.read_text(str(tmp_path / "a.txt")) == "changed\n"  # outside the block: read again
    assert g.calls == 3


def test_snapshot_answers_like_direct_reads(tmp_path):
    from helpers.facts import cpu, iommu, kvm, system
    paths = [*cpu.READS, *kvm.READS, *iommu.READS, *system.READS]
    g = ShellGuest()
    def answers(p):
        return g.read_text(p), g.exists(p), g.listdir(p) if Path(p).is_dir() else None
    paths = [p for p in paths if "*" not in p and p != "/proc/meminfo"]  # meminfo changes between reads
    direct = {p: answers(p) for p in paths}
    g.calls = 0
    with g.snapshot(*paths):
        snapped = {p: answers(p) for p in paths}
    assert g.calls == 1 and snapped == direct
