"""L0 as a machine behind the command interface: this one, or a server over SSH
(host.ssh). The parameters, the libvirt URI, the way into L1 through L0, the
checks before anything changes (against a real sshd of the test's own), the
file writes of the Guest, and the lab image code run on L0 over SSH."""
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from helpers import l0, params
from helpers.access import l1_guest
from helpers.errors import RunbookError
from helpers.guest import SSH, Local

ROOT = Path(__file__).resolve().parent.parent


def load(tmp_path, ssh: dict | None = None, **host) -> params.Params:
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    if ssh is not None:
        data["host"]["ssh"] = ssh
    data["host"].update(host)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    return params.load(f)


def test_local_l0_is_the_default_and_unchanged(tmp_path):
    p = load(tmp_path)
    assert not l0.remote(p) and isinstance(l0.guest(p), Local)
    assert l0.libvirt_uri(p) == "qemu:///system"
    l1 = l1_guest(p)
    assert l1.jump is None and str(l1.identity) == "/var/lib/nested-nvme/lab_key"


def test_host_ssh_gives_an_ssh_l0_and_a_qemu_ssh_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    key = tmp_path / "id"
    p = load(tmp_path, {"address": "10.0.0.7", "port": 2201, "user": "ops", "identity": str(key),
                        "known_hosts": str(tmp_path / "kh")})
    g = l0.guest(p)
    assert isinstance(g, SSH) and (g.host, g.port, g.user, g.identity) == ("10.0.0.7", 2201, "ops", key)
    uri = urlsplit(l0.libvirt_uri(p))
    assert (uri.scheme, uri.netloc, uri.path) == ("qemu+ssh", "ops@10.0.0.7:2201", "/system")
    q = parse_qs(uri.query)
    assert q["keyfile"] == [str(key)] and q["no_tty"] == ["1"]
    wrapper = Path(q["command"][0])  # libvirt's ssh transport takes no known_hosts: the wrapper pins it
    text = wrapper.read_text()
    assert wrapper.stat().st_mode & 0o777 == 0o700
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in text and "StrictHostKeyChecking=yes" in text
    assert "BatchMode=yes" in text and "PasswordAuthentication=no" in text


def test_a_uri_given_is_used_and_an_ssh_config_entry_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    p = load(tmp_path, {"config_host": "lab-server", "libvirt_uri": "qemu+ssh://lab-server/system"})
    assert l0.libvirt_uri(p) == "qemu+ssh://lab-server/system"
    g = l0.guest(p)
    argv = g.argv("true")
    assert "lab-server" in argv and "-p" not in argv and not any("@" in a for a in argv)
    p = load(tmp_path, {"config_host": "lab-server"})
    assert l0.libvirt_uri(p).startswith("qemu+ssh://lab-server/system?command=")


def test_ssh_into_l1_jumps_through_a_remote_l0_with_l0s_own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    p = load(tmp_path, {"address": "10.0.0.7", "identity": str(tmp_path / "id"), "known_hosts": str(tmp_path / "kh")})
    l1 = l1_guest(p)
    assert (l1.host, l1.port) == ("127.0.0.1", 2222)  # the forwarded port on L0's loopback
    assert l1.jump is not None and l1.jump.host == "10.0.0.7"
    proxy = next(a for a in l1.argv("true") if a.startswith("ProxyCommand="))
    assert f"-i {tmp_path / 'id'}" in proxy and f"UserKnownHostsFile={tmp_path / 'kh'}" in proxy
    assert "-W %h:%p" in proxy and "root@10.0.0.7" in proxy
    assert str(l1.identity).startswith(str(tmp_path / "cache" / "nested-nvme"))  # this machine's copy


@pytest.mark.parametrize("ssh, said", [
    ({"address": "a", "config_host": "b"}, "give either `address`"),
    ({"user": "root"}, "give either `address`"),
    ({"config_host": "b", "identity": "/root/.ssh/id"}, "with `config_host` the ssh config entry says"),
    ({"address": "a;rm -rf /"}, "is not a host name or address"),
    ({"address": "a", "identity": "id_ed25519"}, "relative path"),
    ({"address": "a", "password": "x"}, "SSH is by key only"),
])
def test_host_ssh_mistakes_are_refused_with_one_line(tmp_path, ssh, said):
    with pytest.raises(params.ParamsError) as e:
        load(tmp_path, ssh)
    assert said in str(e.value) and "host.ssh" in str(e.value)


def test_guest_file_writes_are_atomic_with_their_mode(tmp_path):
    g = Local()
    f = tmp_path / "d" / "f"
    g.mkdir(str(f.parent), 0o750)
    assert oct(f.parent.stat().st_mode & 0o777) == "0o750"
    g.write_text(str(f), "one\n", 0o600)
    assert f.read_text() == "one\n" and oct(f.stat().st_mode & 0o777) == "0o600"
    g.write_text(str(f), "two\n")
    assert f.read_text() == "two\n" and g.size(str(f)) == 4 and sorted(p.name for p in f.parent.iterdir()) == ["f"]
    assert g.remove(str(f)) and not f.exists() and not g.remove(str(f))
    assert g.rmdir(str(f.parent)) and not f.parent.exists()


# ---------------------------------------------------------------- against a real sshd

def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An OpenSSH server of the test's own on 127.0.0.1: its own host key, key-only."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.fail("openssh-server is not installed (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("l0sshd")
    d.chmod(0o700)
    for name in ("host", "user", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = _free_port()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join((d / 'host.pub').read_text().split()[:2])}\n")
    (d / "empty_known_hosts").write_text("")
    (d / "sshd_config").write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
                                   f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
                                   "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                                   f"StrictModes no\nPidFile {d}/sshd.pid\nUsePAM no\n")
    subprocess.run(["mkdir", "-p", "/run/sshd"], check=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield {"d": d, "port": port}
    proc.terminate()
    proc.wait(10)


def remote(tmp_path, sshd, **change):
    d = sshd["d"]
    ssh = {"address": "127.0.0.1", "port": sshd["port"], "identity": str(d / "user"),
           "known_hosts": str(d / "known_hosts")}
    ssh.update(change)
    return load(tmp_path, ssh)


@pytest.mark.parametrize("change, said, hint", [
    ({"identity": "/nonexistent/id"}, "host.ssh.identity: /nonexistent/id does not exist on this machine",
     "authorized_keys"),
    ("empty_known_hosts", "its host key is not in", "ssh-keyscan"),
    ("stranger", "refuses the key", "authorized_keys"),
    ({"port": 1}, "cannot be reached over SSH", "check host.ssh.address and port"),
])
def test_host_ssh_is_checked_before_anything_with_one_clear_message(tmp_path, monkeypatch, sshd, change, said, hint):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = sshd["d"]
    if change == "empty_known_hosts":
        change = {"known_hosts": str(d / "empty_known_hosts")}
    elif change == "stranger":
        change = {"identity": str(d / "stranger")}
    with pytest.raises(RunbookError) as e:
        l0.check(remote(tmp_path, sshd, **change))
    assert said in e.value.message and hint in e.value.hint


@pytest.mark.host
def test_libvirt_is_reached_over_ssh_and_a_wrong_uri_is_named(tmp_path, monkeypatch, sshd):
    """A real libvirtd behind the test's sshd: qemu+ssh through the wrapper works; a URI
    naming no libvirt socket on L0 is refused before anything changes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    p = remote(tmp_path, sshd)
    l0.check(p)
    assert l0.libvirt(p).lib_version() > 6_008_000
    wrapper = l0.ssh_wrapper(p)
    bad = remote(tmp_path, sshd, libvirt_uri=f"qemu+ssh://root@127.0.0.1:{sshd['port']}/system?"
                                              f"command={wrapper}&no_tty=1&socket=/nonexistent/libvirt-sock")
    with pytest.raises(RunbookError) as e:
        l0.check(bad)
    assert "answers SSH, but its libvirt cannot be reached over SSH" in e.value.message
    assert "virt-ssh-helper" in e.value.hint


def test_the_lab_image_code_runs_on_l0_over_ssh_with_the_same_recipe(tmp_path, sshd):
    """A remote L0 builds the images with this package's lab code, copied there through
    the command interface: run there, it computes the recipe this process computes
    from L0's apt sources read over SSH."""
    from helpers.lab import images
    from helpers.lab.sources import recipe_hash
    g = l0.guest(remote(tmp_path, sshd))
    r = images.run_remote(g, ["--print-recipe"], timeout=120)
    assert r.ok, r.err
    assert r.out.strip() == recipe_hash(g) == recipe_hash(Local())
    copied = r.err.split("lab code copied to ", 1)[1].split()[0]
    assert copied.startswith("/tmp/nested-nvme-lab.") and not g.exists(copied)  # its temp copy is gone


def test_ssh_writes_files_on_l0(tmp_path, sshd):
    g = l0.guest(remote(tmp_path, sshd))
    f = tmp_path / "via-ssh" / "known_hosts"
    g.mkdir(str(f.parent))
    g.write_text(str(f), "[127.0.0.1]:2222 ssh-ed25519 AAAA\n", 0o644)
    assert f.read_text() == "[127.0.0.1]:2222 ssh-ed25519 AAAA\n" and g.read_text(str(f)) == f.read_text()
