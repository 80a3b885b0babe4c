"""The kept virsh shell (helpers.virt.VirshShell) that carries guest-agent messages to L2,
against a stand-in for virsh's interactive shell on a pipe (tests/fixtures/fake_virsh.py). The
real one is exercised by every lab run (stages 04 and 05 reach L2 only through it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import guest as guest_mod
from helpers.guest import SSH, Agent, GuestError, Local
from helpers.virt import VirshShell, virsh_agent_call

FAKE = Path(__file__).parent / "fixtures" / "fake_virsh.py"


class FakeShell(VirshShell):
    starts = 0

    def argv(self) -> list[str]:
        FakeShell.starts += 1
        return [sys.executable, str(FAKE)]


@pytest.fixture
def shell(monkeypatch):
    via = SSH(host="l1.invalid", port=2222, name="l1")
    sh = FakeShell(via, "qemu:///system")
    monkeypatch.setattr(VirshShell, "of", classmethod(lambda cls, v, uri: sh))
    FakeShell.starts = 0
    yield sh
    sh._stop()


def test_answers_and_records_the_one_shot_command(shell, monkeypatch):
    seen = []
    monkeypatch.setattr(guest_mod, "ON_RUN", lambda *a: seen.append(a))
    r = shell.read("nvmetest", {"execute": "guest-info", "arguments": {"say": "it's"}}, 5)
    assert r.rc == 0 and '"say": "it\'s"' in r.out  # the quote went in as \u0027 and came back
    assert seen[0][0] == "l1" and seen[0][1].startswith("virsh -c qemu:///system qemu-agent-command nvmetest ")
    assert seen[0][2:] == (0, True)
    shell.read("nvmetest", {"execute": "guest-ping"}, 5)
    assert FakeShell.starts == 1  # one virsh for both messages


def test_an_agent_command_runs_through_it(shell):
    agent = Agent(call=virsh_agent_call(SSH(host="l1.invalid", name="l1"), "nvmetest"), name="l2", poll_first=0.02)
    r = agent.run("echo hi")
    assert (r.rc, r.out) == (0, "hi\n")


def test_virsh_errors_fail_with_its_words(shell):
    r = shell.read("nosuch", {"execute": "guest-ping"}, 5)
    assert r.rc == 1 and "failed to get domain 'nosuch'" in r.err
    call = virsh_agent_call(SSH(host="l1.invalid", name="l1"), "nosuch", retry_s=0)
    with pytest.raises(GuestError, match="failed to get domain 'nosuch'"):
        call({"execute": "guest-exec", "arguments": {}}, 5)


def test_a_shell_that_ended_is_started_again(shell):
    assert shell.read("nvmetest", {"execute": "guest-ping"}, 5).ok
    shell.proc.kill()
    shell.proc.wait()
    assert shell.read("nvmetest", {"execute": "guest-ping"}, 5).ok
    assert FakeShell.starts == 2


def test_a_message_safe_to_repeat_is_asked_again_when_the_shell_ends_under_it(shell, monkeypatch):
    asked = []
    real = FakeShell._exchange

    def once_dies(self, line, timeout):
        if "guest-exec-status" in line and not asked:
            asked.append(line)
            line = line.replace("guest-exec-status", "die")
        return real(self, line, timeout)
    monkeypatch.setattr(FakeShell, "_exchange", once_dies)
    r = shell.read("nvmetest", {"execute": "guest-exec-status", "arguments": {"pid": 7}}, 5)
    assert r.ok and '"exited": true' in r.out and FakeShell.starts == 2


def test_guest_exec_is_not_sent_twice(shell, monkeypatch):
    real = FakeShell._exchange
    monkeypatch.setattr(FakeShell, "_exchange",
                        lambda self, line, timeout: real(self, line.replace('"guest-exec"', '"die"'), timeout))
    r = shell.read("nvmetest", {"execute": "guest-exec", "arguments": {}}, 5)
    assert r.rc == 255 and "ended" in r.err and FakeShell.starts == 1


def test_a_shell_that_does_not_answer_times_out_and_is_replaced(shell, monkeypatch):
    real = FakeShell._exchange
    monkeypatch.setattr(FakeShell, "_exchange",
                        lambda self, line, timeout: real(self, line, 1 if "hang" in line else timeout))
    r = shell.read("nvmetest", {"execute": "hang"}, 1)
    assert r.rc == 124 and "timed out" in r.err and not shell._alive()
    assert shell.read("nvmetest", {"execute": "guest-ping"}, 5).ok and FakeShell.starts == 2


def test_only_over_ssh_and_not_when_turned_off(monkeypatch):
    assert VirshShell.of(Local(), "qemu:///system") is None
    via = SSH(host="l1.invalid", name="l1")
    monkeypatch.setenv("NESTED_NVME_VIRSH_SHELL", "0")
    assert VirshShell.of(via, "qemu:///system") is None
    monkeypatch.delenv("NESTED_NVME_VIRSH_SHELL")
    try:
        assert VirshShell.of(via, "qemu:///system") is VirshShell.of(via, "qemu:///system")
    finally:
        VirshShell.close_all()
