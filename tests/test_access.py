"""The way into L2: transient agent errors are retried; a crashed L2 is named as such."""
import json

import pytest
import yaml

from helpers import params
from helpers.access import l1_silent, l1_stall, l2_guest
from helpers.errors import RunbookError
from helpers.guest import Result
from helpers.run.diagnose import explain_l1
from machines import Machine

P = params.load("parameters/lab.yaml")


def test_a_crashed_l2_is_reported_with_its_panic_and_the_way_out():
    l1 = Machine(answers={r"qemu-agent-command": Result(1, "", "error: internal error: unable to execute QEMU agent command"),
                          r"^grep -m1": "[   30.6] Kernel panic - not syncing: Fatal exception in interrupt\n"})
    with pytest.raises(RunbookError, match=r"L2 crashed: .*Kernel panic") as e:
        l2_guest(P, None, l1).run("df -Th /data")
    assert "--from 04" in e.value.hint


def test_a_briefly_unavailable_agent_is_retried():
    answers = iter([Result(1, "", "error: Guest agent is not responding: Guest agent not available for now"),
                    Result(0, json.dumps({"return": {"pid": 7}}), ""),
                    Result(0, json.dumps({"return": {"exited": True, "exitcode": 0, "out-data": "b2sK"}}), "")])
    l1 = Machine(answers={r"qemu-agent-command": lambda cmd: next(answers)})
    r = l2_guest(P, None, l1).run("echo ok")
    assert r.ok and r.out == "ok\n"
    assert len(l1.ran("qemu-agent-command")) == 3


def test_an_agent_that_is_not_there_without_a_crash_is_a_guest_error():
    from helpers.guest import GuestError
    l1 = Machine(answers={r"qemu-agent-command": Result(1, "", "error: failed to get domain 'nvmetest'"),
                          r"^grep -m1": Result(1, "", "")})
    with pytest.raises(GuestError, match="failed to get domain"):
        l2_guest(P, None, l1).run("true")


def test_the_kvm_smoke_verdict_is_kept_for_the_rest_of_the_boot():
    from helpers.checks.smoke import kvm_smoke
    m = Machine(files={"/proc/sys/kernel/random/boot_id": "boot-1\n"}, programs={"qemu-system-x86_64"},
                answers={r"^ls -1A /boot$": "vmlinuz-6.1.0-56-amd64\n",
                         r"-accel kvm": "Linux version 6.1\nKernel panic - not syncing: VFS: Unable to mount root fs\n"})
    first = kvm_smoke(m, 20)
    assert first.usable and len(m.ran("-accel kvm")) == 1
    second = kvm_smoke(m, 20)
    assert second.usable and second.cached and not first.cached and len(m.ran("-accel kvm")) == 1
    assert second.reason == first.reason  # the same words: reruns show the same verdict
    m.files["/proc/sys/kernel/random/boot_id"] = "boot-2\n"  # after a reboot it is measured again
    kvm_smoke(m, 20)
    assert len(m.ran("-accel kvm")) == 2


def _lab_in(tmp_path):
    data = yaml.safe_load(open("parameters/lab.yaml"))
    data["host"]["workdir"] = str(tmp_path)
    data["nvme"]["backing_file"] = str(tmp_path / "nvme.raw")
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, params.load(path)


STALLED = ("[   47.908160] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
           "[   72.679046] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kworker/u4:4:152]\n")


def test_an_l1_stall_is_read_off_the_current_boot_of_its_console(tmp_path):
    path, p = _lab_in(tmp_path)
    console = tmp_path / f"{p.l1.name}-console.log"
    assert l1_stall(p) is None  # no log yet
    console.write_text("  Booting `Debian GNU/Linux'\r\n\r\nl1 login: " + STALLED)
    assert l1_stall(p) == "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
    console.write_text(console.read_text() + "  Booting `Debian GNU/Linux'\r\nl1 login: \r\n")
    assert l1_stall(p) is None  # that stall was in an earlier boot


def test_the_runner_names_an_l1_stall_as_the_cause(tmp_path):
    path, p = _lab_in(tmp_path)
    (tmp_path / f"{p.l1.name}-console.log").write_text("  Booting `Debian GNU/Linux'\nl1 login: " + STALLED)
    failed = {"stage": "03", "error": "GuestError: `update-grub` failed with exit code 124: timed out", "hint": "x"}
    explain_l1(failed, p)
    assert failed["error"].startswith("L1 stalled (its console: 'rcu: INFO: rcu_preempt detected stalls")
    assert "update-grub" in failed["error"] and "--stages 99" in failed["hint"]
    calm = {"stage": "03", "error": "GuestError: boom", "hint": "x"}
    (tmp_path / f"{p.l1.name}-console.log").write_text("  Booting `Debian GNU/Linux'\nl1 login:\n")
    explain_l1(calm, p)
    assert calm == {"stage": "03", "error": "GuestError: boom", "hint": "x"}


PANICKED = ("[  296.706897] kvm [1141]: vcpu0, guest rIP: 0xffffffffabe73744 Unhandled WRMSR(0xc0010007) = 0xffff\r\n"
            "[  358.173158] Kernel panic - not syncing: corrupted stack end detected inside scheduler\r\n"
            "[  358.173798] CPU: 0 PID: 1221 Comm: CPU 0/KVM Not tainted 6.1.0-57-cloud-amd64 #1\r\n")


def test_an_l1_kernel_panic_is_named_before_a_stall_and_says_where_the_trace_is(tmp_path):
    """What the lab met (2026-12-05): L1's kernel panicked in L2's vCPU thread and halted,
    which from L0 looked like a stall."""
    path, p = _lab_in(tmp_path)
    console = tmp_path / f"{p.l1.name}-console.log"
    console.write_text("  Booting `Debian GNU/Linux'\r\nl1 login: " + STALLED + PANICKED)
    assert l1_stall(p) == "Kernel panic - not syncing: corrupted stack end detected inside scheduler"
    failed = {"stage": "05", "error": "RunbookError: guest agent of nvmetest did not answer", "hint": "x"}
    explain_l1(failed, p)
    assert failed["error"].startswith("L1's kernel panicked (its console: 'Kernel panic - not syncing: corrupted")
    assert "nvmetest did not answer" in failed["error"]
    assert str(console) in failed["hint"] and "--stages 99" in failed["hint"]
    console.write_text(console.read_text() + "  Booting `Debian GNU/Linux'\r\nl1 login: \r\n")
    assert l1_stall(p) is None  # that panic was in an earlier boot


def test_an_l1_that_no_longer_runs_a_command_is_called_silent():
    answering = Machine(answers={r"^true$": ""})
    assert l1_silent(answering) is None
    hung = Machine(answers={r"^true$": Result(124, "", "timed out after 20 s over SSH to root@127.0.0.1")})
    assert l1_silent(hung) == "timed out after 20 s over SSH to root@127.0.0.1"


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def test_the_runner_names_a_silent_l1_after_stage_03_as_a_stall(tmp_path, monkeypatch):
    from helpers import access
    monkeypatch.setattr(access, "l1_domain_state", lambda p, l0=None: ("running", "booted"))
    monkeypatch.setattr(access, "l1_ssh_lost", lambda p, l1: None)  # the agent does not answer either
    path, p = _lab_in(tmp_path)
    (tmp_path / f"{p.l1.name}-console.log").write_text("  Booting `Debian GNU/Linux'\nl1 login:\n")  # no stall line
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"l1": {"ssh": {"host": "127.0.0.1", "port": _closed_port(), "user": "root",
                                                 "known_hosts": str(tmp_path / "kh")}}}))
    failed = {"stage": "04", "error": "RunbookError: nvmetest: guest agent through L1: not ready after 300 s", "hint": "x"}
    explain_l1(failed, p, state)
    assert failed["error"].startswith("L1 stalled (it no longer answers: ") and "not ready after 300 s" in failed["error"]
    assert "--stages 99" in failed["hint"]
    early = {"stage": "02", "error": "RunbookError: nested-kvm: guest agent: not ready after 600 s", "hint": "x"}
    explain_l1(early, p, state)  # before stage 04 a silent L1 is that stage's own failure
    assert early == {"stage": "02", "error": "RunbookError: nested-kvm: guest agent: not ready after 600 s", "hint": "x"}


def test_a_guest_that_stops_answering_during_the_smoke_boot_is_a_stall_not_a_kvm_verdict(monkeypatch):
    from helpers.checks import smoke
    from helpers.facts import kvm
    clock = [1000.0]
    monkeypatch.setattr(kvm.time, "monotonic", lambda: clock[0])

    def ssh_gave_up(cmd):
        clock[0] += 20 + 30  # the SSH timeout (smoke timeout + 30 s) went by
        return Result(124, "", "timed out after 50 s over SSH to root@127.0.0.1")

    m = Machine(files={"/proc/sys/kernel/random/boot_id": "boot-1\n"}, programs={"qemu-system-x86_64"},
                answers={r"^ls -1A /boot$": "vmlinuz-6.1.0-56-amd64\n", r"-accel kvm": ssh_gave_up}, name="l1")
    with pytest.raises(RunbookError, match=r"l1 stalled during the KVM smoke boot: no answer within 50 s") as e:
        smoke.kvm_smoke(m, 20)
    assert "--stages 99" in e.value.hint
    assert not m.ran("cat > /run/nested-nvme-kvm-smoke.json")  # no verdict kept for this boot

    def qemu_hung(cmd):  # `timeout` ended QEMU: KVM itself hangs, the guest answered
        clock[0] += 25
        return Result(124, "Probing EDD (edd=off to disable)... ok\n", "")

    m.answers[r"-accel kvm"] = qemu_hung
    sm = smoke.kvm_smoke(m, 20)
    assert sm.status == "not usable" and "hung" in sm.reason


def test_an_l1_stopped_outside_the_runbook_is_named_with_the_way_back(tmp_path, monkeypatch):
    from helpers import access
    path, p = _lab_in(tmp_path)
    state = tmp_path / "state.json"
    state.write_text("{}")
    (tmp_path / "summary.json").write_text(json.dumps({"params": "/p/lab.yaml"}))
    monkeypatch.setattr(access, "l1_domain_state", lambda p, l0=None: ("shut off", "destroyed"))
    failed = {"stage": "04", "error": "GuestError: `lspci` failed with exit code 255: Connection refused", "hint": "x"}
    explain_l1(failed, p, state)
    assert failed["error"].startswith(f"L1 ({p.l1.name}) is not running: shut off (destroyed), stopped outside the runbook; ")
    assert "python -m helpers run --params /p/lab.yaml --from 02" in failed["hint"]
    with pytest.raises(RunbookError) as e:
        access.check_l1(p, Machine(), "/p/lab.yaml")
    assert str(e.value.message) == (f"L1 ({p.l1.name}) is not running: shut off (destroyed); it was stopped outside "
                                    "the runbook (the runbook stops L1 only in teardown)")


def test_virsh_domstate_reason_is_read():
    from helpers.access import l1_domain_state
    from helpers.params import Params
    p = Params.model_validate({"l1": {"name": "x"}})
    l0 = Machine(answers={r"domstate --reason x$": "shut off (destroyed)\n"})
    assert l1_domain_state(p, l0) == ("shut off", "destroyed")
    gone = Machine(answers={r"domstate": Result(1, "", "error: failed to get domain 'x'")})
    assert l1_domain_state(p, gone) == ("undefined", "")


def test_ssh_lost_while_the_agent_answers_is_named_as_such(tmp_path, monkeypatch):
    from helpers import access
    from helpers.ops import l1 as l1_ops
    path, p = _lab_in(tmp_path)
    agent = Machine(answers={r"systemctl cat": "ssh inactive\n"})
    agent.ping = lambda timeout=5: True
    monkeypatch.setattr(l1_ops, "l1_agent", lambda lv, name: agent)
    monkeypatch.setattr("helpers.virt.PyLibvirt.__init__", lambda self, uri="": None)
    refused = Machine(answers={r"^true$": Result(255, "", "ssh: connect to host 127.0.0.1 port 2222: Connection refused")})
    refused.host, refused.port = "127.0.0.1", 2222
    assert access.l1_ssh_lost(p, refused) == (
        "SSH into L1 is lost (127.0.0.1:2222: ssh: connect to host 127.0.0.1 port 2222: Connection refused) "
        "while L1 runs and its guest agent answers: ssh.service is stopped in L1")
    assert access.l1_ssh_lost(p, Machine(answers={r"^true$": ""})) is None


def test_an_l2_that_booted_and_no_longer_answers_is_told_from_one_still_booting():
    from helpers.access import l2_stopped_answering
    from helpers.params import Params
    p = Params.model_validate({"l2": {"name": "nvmetest"}})
    gone = Result(1, "", "error: Guest agent is not responding: QEMU guest agent is not connected")
    hung = Machine(answers={r"^grep -q L2-READY": "", r"qemu-agent-command nvmetest": gone})
    assert l2_stopped_answering(p, hung) is True
    booting = Machine(answers={r"^grep -q L2-READY": Result(1, "", ""), r"qemu-agent-command nvmetest": gone})
    assert l2_stopped_answering(p, booting) is False
    fine = Machine(answers={r"^grep -q L2-READY": "", r"qemu-agent-command nvmetest": '{"return": {}}'})
    assert l2_stopped_answering(p, fine) is False


TIMED_OUT = Result(124, "", "timed out after 60 s over SSH to root@127.0.0.1")


def _l2_timing_out(domstate: str, ping_answers: bool, l1_answers: bool = True) -> Machine:
    def agent(cmd):
        if "guest-ping" in cmd:
            return Result(0, json.dumps({"return": {}}), "") if ping_answers else TIMED_OUT
        if "guest-exec-status" in cmd:
            return TIMED_OUT
        return Result(0, json.dumps({"return": {"pid": 7}}), "")
    return Machine(answers={r"qemu-agent-command": agent, r"^grep -m1": Result(1, "", ""),
                            r"^true$": Result(0, "", "") if l1_answers else TIMED_OUT,
                            r"domstate": domstate, r"^tail -n": "[ 9.1] fio: start\nL2-READY uptime=5.1s\n"})


def test_an_agent_command_that_times_out_in_a_hung_l2_is_named_with_its_console():
    l1 = _l2_timing_out("running (booted)\n", ping_answers=False)
    with pytest.raises(RunbookError, match=r"^L2 hung: it runs in L1, but its guest agent answered neither") as e:
        l2_guest(P, None, l1).run("fio --name=x")
    assert "timed out after 60 s" in str(e.value) and "L2-READY uptime=5.1s" in str(e.value)
    assert "--from 04" in e.value.hint


def test_an_agent_command_that_times_out_names_an_l2_that_is_no_longer_running():
    l1 = _l2_timing_out("shut off (crashed)\n", ping_answers=False)
    with pytest.raises(RunbookError, match=r"^L2 is shut off in L1 \(crashed\)"):
        l2_guest(P, None, l1).run("fio --name=x")


def test_a_late_answer_from_an_l2_that_answers_again_is_said_as_such():
    l1 = _l2_timing_out("running (booted)\n", ping_answers=True)
    with pytest.raises(RunbookError, match=r"got no answer in time .*L2 answers a ping again now"):
        l2_guest(P, None, l1).run("fio --name=x")


def test_an_agent_command_that_times_out_because_l1_is_silent_is_left_to_the_l1_diagnosis():
    from helpers.guest import GuestError
    l1 = _l2_timing_out("running (booted)\n", ping_answers=False, l1_answers=False)
    with pytest.raises(GuestError, match="timed out after 60 s over SSH"):
        l2_guest(P, None, l1).run("fio --name=x")
