"""The commands shown next to each changing step ("by hand") come from the same data the
step uses, and where they can run here they do what the step does."""
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import by_hand, nb, ui
from helpers.bench import fio
from helpers import l0 as l0_mod
from helpers.guest import Local
from helpers.lab import images
from helpers.lab.sources import recipe_hash
from helpers.ops import l1 as l1_ops
from helpers.ops import l1_files
from helpers.stages import build_l1, teardown, verify_benchmark
from helpers.steps import Action, Plan, Step

ROOT = Path(__file__).resolve().parent.parent


def test_prompt_lines_as_the_seed_writes_them():
    b = by_hand.ByHand("root@L1", ["reboot", "# log in again"])
    assert b.text() == "[root@L1] ~$ reboot\n# log in again"
    assert (b + by_hand.ByHand("root@L1", ["uptime"])).commands[-1] == "uptime"
    with pytest.raises(ValueError):
        b + by_hand.ByHand("root@L0", ["true"])


def test_virsh_names_the_uri_only_when_it_is_not_the_system_one():
    assert by_hand.virsh("define", "l1.xml") == "virsh define l1.xml"
    assert by_hand.virsh("start", "x", uri="qemu+ssh://h/system") == "virsh -c qemu+ssh://h/system start x"


def test_node_device_name_keeps_the_hexadecimal_digits():
    assert by_hand.node_device("0000:00:10.0") == "pci_0000_00_10_0"
    assert by_hand.node_device("0000:0a:1f.3") == "pci_0000_0a_1f_3"


def test_define_and_start_are_the_seeds_commands():
    assert by_hand.define("nested-kvm", "nested-kvm.xml").commands[0].startswith("virsh define nested-kvm.xml")
    assert by_hand.start("nested-kvm").commands[0] == "virsh start nested-kvm"


def test_l2_start_names_the_nodedev_detach_libvirt_does_for_a_managed_hostdev():
    text = by_hand.l2_define_start("nvmetest", "nvmetest.xml", "0000:00:10.0", 5).text()
    assert "virsh nodedev-detach pci_0000_00_10_0" in text
    assert "[root@L1] ~$ virsh start nvmetest" in text and "/dev/vfio/5" in text


def test_teardown_names_the_reattach_and_the_checks():
    text = by_hand.remove_l2("nvmetest", "/var/lib/libvirt/images/nvmetest.qcow2", "0000:00:10.0").text()
    assert "virsh destroy nvmetest" in text and "virsh undefine nvmetest" in text
    assert "virsh nodedev-reattach pci_0000_00_10_0" in text and "Kernel driver in use: nvme" in text
    assert by_hand.remove_files([], [Path("/x/nvme.raw")]).commands == [
        "# no file to remove", "# kept: /x/nvme.raw (nvme.remove_backing_file is false)"]


@pytest.mark.parametrize("size, arg", [(1, "1G"), (100, "100G"), (0.5, "512M")])
def test_sizes_for_qemu_img(size, arg):
    assert by_hand.size_arg(size) == arg


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img not installed")
def test_the_backing_file_command_makes_the_same_file_as_the_step(tmp_path):
    cmd = by_hand.backing_file(tmp_path / "byhand.raw", 0.5)[0].split("#")[0]
    subprocess.run(cmd, shell=True, check=True, capture_output=True)
    l1_files.apply_op(l1_files.plan_backing_file(Local(), tmp_path / "step.raw", 0.5), _State())
    assert (tmp_path / "byhand.raw").stat().st_size == (tmp_path / "step.raw").stat().st_size
    assert (tmp_path / "byhand.raw").stat().st_blocks * 512 < 1024 ** 2  # sparse, like the step's


class _State:
    def remember_created(self, *a):
        pass


def test_fio_is_the_command_the_benchmark_runs():
    cmd = fio.fio_command("/dev/nvme0n1", ["randread-4k"], 0.5, 32)
    assert by_hand.fio("/dev/nvme0n1", cmd, 3, "root@L1").commands[0].startswith(shlex.join(cmd))


def test_known_hosts_line_is_the_one_the_step_writes(tmp_path):
    l1_files.apply_op(l1_files.plan_known_hosts(Local(), tmp_path / "kh", "127.0.0.1", 2222, "ssh-ed25519 AAAAkey root@l1"), _State())
    line = l1_ops.known_hosts_line("127.0.0.1", 2222, "ssh-ed25519 AAAAkey root@l1")
    assert (tmp_path / "kh").read_text() == line + "\n"
    assert l1_ops.known_hosts_line("10.0.0.5", 22, "ssh-ed25519 AAAAkey") == "10.0.0.5 ssh-ed25519 AAAAkey"


# --- the stages' by-hand commands, from the parameters and the run state ---------------------

@pytest.fixture
def ctx(tmp_path, monkeypatch):
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["nvme"]["backing_file"] = str(tmp_path / "work" / "nvme.raw")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    c = nb.stage("02", str(f), str(tmp_path / "state.json"), show_picture=False)
    # the lab images of the current recipe, in an image cache of the test's own (found on L0, not in the state)
    cache = tmp_path / "cache"
    monkeypatch.setattr(images, "CACHE_DIR", cache)
    folder = cache / recipe_hash(c.l0)
    folder.mkdir(parents=True)
    (folder / "l1.raw").write_text("")
    (folder / "key").write_text("")
    (folder / "images.json").write_text(json.dumps({
        "l1_disk": "l1.raw", "ssh_key": "key", "ssh_host_pubkey": "ssh-ed25519 AAAA x", "recipe": folder.name,
        "l2_root_in_l1": "/var/lib/l2.raw", "l2_kernel_in_l1": "k", "l2_initrd_in_l1": "i", "l2_cmdline": "c",
        "virt_packages_cached": []}))
    c.cache = folder
    return c


def test_stage_02_files_and_define(ctx, tmp_path, monkeypatch):
    """The plans' commands are the by-hand ones (one source: helpers.by_hand)."""
    class NoL1:
        def __init__(self, uri=None):
            pass

        def is_active(self, name):
            return False
    monkeypatch.setattr(l0_mod, "libvirt", lambda p: NoL1())
    plan = build_l1.PrepareFiles().plan(ctx)
    text = "\n".join(c for a in plan.actions for c in a.commands)
    assert f"truncate -s 1G {tmp_path}/work/nvme.raw" in text
    assert f"-b {ctx.cache}/l1.raw" in text and "'[127.0.0.1]:2222 ssh-ed25519 AAAA'" in text
    assert [a.machine for a in plan.actions] == ["L0"] * 5 and not (tmp_path / "work").exists()
    assert by_hand.define("nested-kvm", "nested-kvm.xml").commands[0].startswith("virsh define nested-kvm.xml")


def test_stage_05_and_99(ctx, tmp_path):
    assert verify_benchmark.by_hand_mkfs(ctx, "/dev/nvme0n1").commands[-1] == "mkfs.xfs -f /dev/nvme0n1"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "known_hosts").write_text("x")
    plan = teardown.RemoveFiles().plan(ctx)  # the plan's commands are the by-hand ones
    assert plan.actions[0].commands[0] == f"rm -f {tmp_path}/work/known_hosts"


class _Echo(Step):
    """A step that plans one command and, applied, runs it (for the display tests)."""
    label = "step"

    def __init__(self, seen):
        self.seen = seen

    def plan(self, ctx):
        self.seen.append("planned")
        return Plan(self.label, [Action("L0", "define nested-kvm", by_hand.define("nested-kvm", "nested-kvm.xml").commands)])

    def apply(self, ctx, plan):
        self.seen.append("ran")
        return "result"

    def show(self, plan, result):
        self.seen.append(result)


def test_a_batch_step_shows_its_commands_after_its_result_computed_before_it_runs(ctx, monkeypatch):
    seen = []
    monkeypatch.setattr(ui, "show_plan", lambda plan, mode: seen.append(plan.actions[0].commands[0]))
    ctx.step(_Echo(seen))
    assert seen == ["planned", "virsh define nested-kvm.xml   # nested-kvm.xml: the XML below (its content), saved to that file", "ran", "result"]


def test_show_by_hand_without_commands_shows_nothing(monkeypatch):
    shown = []
    monkeypatch.setattr(ui, "_display", shown.append)
    ui.show_by_hand([])
    assert shown == []
    ui.show_by_hand(by_hand.ByHand("root@L2", ["mkfs.xfs -f /dev/nvme0n1"]))
    assert "[root@L2] ~$ mkfs.xfs -f /dev/nvme0n1" in shown[0].html and "By hand" in shown[0].html
    assert repr(shown[0]) == "By hand, the same step at the prompt shown:\n[root@L2] ~$ mkfs.xfs -f /dev/nvme0n1"


def test_an_interactive_step_previews_its_commands(ctx):
    ctx.interactive = True
    run = ctx.step(_Echo([]))
    run.button.button.click()
    assert "define nested-kvm" in run.button.preview and "virsh define nested-kvm.xml" in run.button.preview
    assert not run.applied and run.button.confirm.layout.display == ""  # Confirm applies it



