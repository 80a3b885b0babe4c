"""The ways into L1 and L2, from the parameters and what stage 02 recorded."""
from __future__ import annotations

import re

from pathlib import Path

from .errors import RunbookError
from .guest import SSH, Agent, Guest, GuestError
from .virt import Virsh, virsh_agent_call
from .params import Params
from .state import State


def _path(p) -> Path | None:
    return Path(p).expanduser() if p else None


def l1_ssh_spec(p: Params, lab_key: Path | None = None, known_hosts: Path | None = None) -> dict:
    """How to reach L1's sshd: 127.0.0.1 and the forwarded port in the lab,
    L1's address on a bridge otherwise."""
    net = p.l1.network
    host, port = ("127.0.0.1", net.ssh_port) if net.mode == "user" else (net.address, 22)
    return {"host": host, "port": port, "user": p.l1.ssh.user,
            "identity": str(_path(p.l1.ssh.identity) or lab_key or "") or None,
            "known_hosts": str(_path(p.l1.ssh.known_hosts) or known_hosts or "") or None,
            "config": str(_path(p.l1.ssh.config)) if p.l1.ssh.config else None}


def lab_credentials(p: Params) -> tuple[Path | None, Path | None]:
    """In the lab, the key into L1 and the file pinning L1's host key, where this
    process's ssh reads them: the run's copies in host.workdir when L0 is this
    machine; this machine's own copies (``l0.runner_dir``) when L0 is remote, since
    the ssh client runs here and only jumps through L0. None, None on a real host."""
    if p.l1.image != "lab":
        return None, None
    from . import l0
    from .paths import paths
    if l0.remote(p):
        d = l0.runner_dir(p)
        return d / "lab_key", d / "known_hosts"
    ps = paths(p)
    return ps.lab_key, ps.known_hosts


def l1_guest(p: Params, state: State | None = None) -> SSH:
    """SSH into L1, from the parameters alone: when L0 is remote, through L0
    (a jump with L0's own key and known_hosts), since L1's forwarded port is on
    L0's 127.0.0.1."""
    from . import l0
    spec = l1_ssh_spec(p, *lab_credentials(p))
    jump = l0.guest(p) if l0.remote(p) else None
    return SSH(host=spec["host"], port=int(spec["port"]), user=spec["user"],
               identity=_path(spec.get("identity")), known_hosts=_path(spec.get("known_hosts")),
               config=_path(spec.get("config")), jump=jump, name="l1")


def l2_crash(p: Params, l1: Guest) -> str | None:
    """The panic line in L2's console log (in L1), if L2's kernel crashed."""
    from .paths import paths
    r = l1.run(["grep", "-m1", "-E", "Kernel panic|double fault|general protection fault", paths(p).l2_console])
    return r.out.strip() or None if r.ok else None


STALL = re.compile(r"watchdog: BUG: soft lockup[^\r\n]*|rcu: INFO: rcu_\w+ detected stalls[^\r\n]*")
# a panicked kernel halts for good (no panic= on L1's command line): from L0 it looks like a
# stall, its vCPUs halted; the lab met "corrupted stack end detected inside scheduler" in the
# thread of L2's vCPU, under TCG
PANIC = re.compile(r"Kernel panic - not syncing:[^\r\n]*")


def l1_stall(p: Params, l0: Guest | None = None) -> str | None:
    """The kernel panic line of L1's current boot in its console log (on L0), else its first
    soft-lockup or RCU-stall line, if any: L1's vCPUs stopped making progress."""
    from . import l0 as l0_mod
    from .paths import paths
    r = (l0 or l0_mod.guest(p)).run(["tail", "-c", str(512 * 1024), str(paths(p).l1_console)], timeout=60)
    if not r.ok:
        return None
    text = r.out
    text = text[text.rfind("Booting `") + 1:]  # GRUB's line that starts each boot
    m = PANIC.search(text) or STALL.search(text)
    return m.group(0).strip() if m else None


def l1_silent(l1: Guest, timeout: float = 20) -> str | None:
    """Why L1 does not run a trivial command within ``timeout`` seconds, or None
    when it does: a stall that left no line in its console still shows here."""
    try:
        r = l1.run(["true"], timeout=timeout)
    except GuestError as e:
        return str(e)
    return None if r.ok else (r.err.strip().splitlines() or [f"exit code {r.rc}"])[-1]


def l1_domain_state(p: Params, l0: Guest | None = None) -> tuple[str, str]:
    """L1's state and its reason on L0's libvirt: ('running', 'booted'),
    ('shut off', 'destroyed'), ('undefined', '') ... (``virsh domstate --reason``)."""
    from . import l0 as l0_mod
    from .virt import Virsh
    return Virsh(l0 or l0_mod.guest(p), p.host.libvirt_uri).domstate(p.l1.name)


def l1_not_running(p: Params, l0: Guest | None = None) -> str | None:
    """Why L1 is not running, or None when it runs."""
    state, reason = l1_domain_state(p, l0)
    if state in ("running", "unknown"):
        return None
    if state == "undefined":
        return f"L1 ({p.l1.name}) is not defined on L0's libvirt any more"
    return f"L1 ({p.l1.name}) is not running: {state}" + (f" ({reason})" if reason else "")


def back_from_02(params_file) -> str:
    return (f"start it again with `python -m helpers run --params {params_file} --from 02` (stage 02 starts "
            "L1 and waits for it, stage 03 finds its kernel argument already set, stage 04 passes the NVMe "
            "through again)")


def l1_ssh_lost(p: Params, l1: Guest) -> str | None:
    """When L1 has booted and runs but SSH into it fails while its guest agent
    answers: what is wrong with SSH (the sshd stopped, the port refuses). None when
    SSH works, when the agent does not answer either (L1 is booting, or stalled), or
    while L1's systemd is still starting (sshd comes a little after the agent)."""
    why = l1_silent(l1)
    if why is None:
        return None
    from . import l0
    from .ops.l1 import l1_agent, sshd_stopped
    try:
        agent = l1_agent(l0.libvirt(p), p.l1.name)
    except RunbookError:
        return None
    if not agent.ping(timeout=10) or l1_booting(agent):
        return None
    unit = sshd_stopped(agent)
    where = getattr(l1, "host", "L1") + (f":{l1.port}" if hasattr(l1, "port") else "")
    return (f"SSH into L1 is lost ({where}: {why}) while L1 runs and its guest agent answers"
            + (f": {unit}.service is stopped in L1" if unit else ""))


def l1_booting(agent: Agent) -> bool:
    """Is L1's systemd still bringing the system up (``is-system-running``: starting)?"""
    try:
        return agent.run("systemctl is-system-running", timeout=20).out.strip() in ("initializing", "starting")
    except Exception:
        return False


def check_l1(p: Params, l1: Guest, params_file, l0: Guest | None = None) -> None:
    """Before a stage works in L1: L1 runs, and SSH into it works. Each failure is
    named as what it is, with the way back. An L1 that is booting (a reboot that a
    killed run was waiting for) is waited for, with the boot timeout."""
    if why := l1_not_running(p, l0):
        raise RunbookError(f"{why}; it was stopped outside the runbook (the runbook stops L1 only in "
                           "teardown)", hint=back_from_02(params_file))
    if why := l1_ssh_lost(p, l1):
        raise RunbookError(why, hint=f"stage 02 starts L1's SSH server again through the guest agent: "
                                     f"`python -m helpers run --params {params_file} --from 02`")
    if l1_silent(l1, timeout=10) is not None:
        from .ops.l1 import wait_for_ssh
        from .paths import paths
        print("L1 does not answer SSH yet: it is booting (or stalled); waiting for it", flush=True)
        from . import l0 as l0_mod
        wait_for_ssh(l1, p.l1.boot_timeout_s, l0_mod.Log(l0 or l0_mod.guest(p), paths(p).l1_console))


L2_RESTART_HINT = ("resume with `python -m helpers run --from 04` (stage 04 restarts an L2 that crashed or "
                   "stopped answering); under TCG emulation nested KVM does this now and then")


def l2_console_tail(p: Params, l1: Guest, lines: int = 8) -> str:
    from .paths import paths
    r = l1.run(["tail", "-n", str(lines), paths(p).l2_console])
    return " | ".join(line.strip() for line in r.out.splitlines() if line.strip()) if r.ok else ""


def l2_stopped_answering(p: Params, l1: Guest) -> bool:
    """L2 booted (the lab's L2 prints L2-READY on its console) and its guest agent no
    longer answers a ping: it hung. (An L2 that is still booting is not 'hung'.)"""
    from .paths import paths
    booted = l1.run(["grep", "-q", "L2-READY", paths(p).l2_console]).ok
    return booted and not Agent(call=virsh_agent_call(l1, p.l2.name), name="l2").ping(timeout=10)


def l2_guest(p: Params, state: State, l1: Guest) -> Agent:
    """L2's guest agent, reached with `virsh qemu-agent-command` inside L1.
    When the agent stops answering because L2's kernel crashed, or L2 hangs, say so."""
    raw = virsh_agent_call(l1, p.l2.name)

    def call(msg: dict, timeout: float) -> dict:
        try:
            return raw(msg, timeout)
        except GuestError as e:
            if msg.get("execute") == "guest-ping":
                raise e
            if panic := l2_crash(p, l1):
                raise RunbookError(f"L2 crashed: {panic}", hint=L2_RESTART_HINT) from None
            if "not connected" in str(e) or "not responding" in str(e):
                raise RunbookError(f"L2 stopped answering ({e}); the last lines of its console: "
                                   f"{l2_console_tail(p, l1) or '(none)'}", hint=L2_RESTART_HINT) from None
            if "timed out" in str(e) and (named := l2_agent_timed_out(p, l1, str(e))):
                raise named from None
            raise e
    return Agent(call=call, name="l2")


def l2_agent_timed_out(p: Params, l1: Guest, said: str) -> RunbookError | None:
    """A command through L2's guest agent that got no answer in time, named for what it met:
    L2 no longer running in L1, L2 hung (its agent silent to a ping too), or an answer that
    was late. None when L1 itself no longer answers: the runner then names what happened
    to L1 (its console's panic or stall line, or its silence)."""
    if l1_silent(l1, timeout=20) is not None:
        return None
    state, reason = Virsh(l1).domstate(p.l2.name)
    console = l2_console_tail(p, l1) or "(none)"
    if state == "unknown":
        return RunbookError(f"a command through L2's guest agent got no answer ({said}), and L2's state in L1 could "
                            f"not be read ({reason}); the last lines of its console: {console}", hint=L2_RESTART_HINT)
    if state != "running":
        return RunbookError(f"L2 is {state} in L1 ({reason or 'no reason given'}): a command through its guest "
                            f"agent got no answer ({said}); the last lines of its console: {console}",
                            hint=L2_RESTART_HINT)
    if not Agent(call=virsh_agent_call(l1, p.l2.name), name="l2").ping(timeout=10):
        return RunbookError(f"L2 hung: it runs in L1, but its guest agent answered neither the runbook's command "
                            f"({said}) nor a ping since; the last lines of its console: {console}",
                            hint=L2_RESTART_HINT)
    return RunbookError(f"a command through L2's guest agent got no answer in time ({said}); L2 answers a ping "
                        "again now", hint=L2_RESTART_HINT)
