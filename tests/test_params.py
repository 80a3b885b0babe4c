"""Parameter files: the shipped ones load; bad ones are refused with the key and what is expected."""
import textwrap
from pathlib import Path

import pytest

from helpers import params
from helpers.params import fit

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["lab.yaml", "seed-xeon4214.yaml"])
def test_shipped_parameter_files_load(name):
    p = params.load(ROOT / "parameters" / name)
    assert p.l1.machine if hasattr(p.l1, "machine") else True
    assert p.nvme.serial == "1234"


def test_lab_targets_tcg_and_loopback():
    p = params.load(ROOT / "parameters" / "lab.yaml")
    assert p.lab and p.host.accel in ("auto", "tcg") and not p.host.require_iommu
    assert p.l1.network.mode == "user"


def test_seed_matches_the_blog_post():
    p = params.load(ROOT / "parameters" / "seed-xeon4214.yaml")
    assert (p.l1.sockets, p.l1.cores, p.l1.threads) == (1, 8, 2)
    assert params.parse_cpuset(p.l1.cpuset) == list(range(16, 24)) + list(range(40, 48))
    assert p.l1.memory_mib == 32768 and p.l1.cpu_mode == "host-passthrough"
    assert p.l1.network.bridge == "bridge0" and p.nvme.size_gib == 100
    assert (p.l2.vcpus, p.l2.memory_mib) == (4, 8192)


BAD = [
    ("l1:\n  cores: two\n", "l1.cores", "valid integer"),
    ("l1:\n  coers: 2\n", "l1.coers", "unknown key"),
    ("nvme:\n  size_gib: -1\n", "nvme.size_gib", "greater than 0"),
    ("l2:\n  select:\n    bdf: 00:02.0\n", "l2.select.bdf", "DDDD:BB:DD.F"),
    ("l2:\n  select:\n    bdf: 0000:00:02.9\n", "l2.select.bdf", "DDDD:BB:DD.F"),
    ("l1:\n  cpuset: 16-23;40-47\n", "l1.cpuset", "16-23,40-47"),
    ("host:\n  accel: hardware\n", "host.accel", "'auto', 'kvm' or 'tcg'"),
    ("l1:\n  network:\n    mode: bridge\n", "l1.network", "needs 'bridge'"),
    ("l1:\n  network:\n    ssh_port: 70000\n", "l1.network.ssh_port", "less than or equal to 65535"),
    ("l1:\n  memory_mib: 100\n", "l1.memory_mib", "greater than or equal to 512"),
    ("verify:\n  mkfs: perhaps\n", "verify.mkfs", "valid boolean"),
    ("- just\n- a list\n", "", "expected a mapping"),
    ("l1: [unclosed\n", "", "not valid YAML"),
    ("bench:\n  profiles: [randread-4k, random]\n", "bench.profiles.1", "randread-4k"),
    ("nvme:\n  serial: ''\n", "nvme.serial", "at least 1 character"),
    ("l2:\n  memory_mib: 4096\n", "l2.memory_mib", "less than L1's"),
]


@pytest.mark.parametrize("text,key,expected", BAD)
def test_bad_file_is_refused_with_file_key_and_expectation(tmp_path, text, key, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(textwrap.dedent(text))
    with pytest.raises(params.ParamsError) as e:
        params.load(f)
    msg = str(e.value)
    assert str(f) in msg
    assert key in msg
    assert expected in msg


def test_missing_file_names_the_lab_file(tmp_path):
    with pytest.raises(params.ParamsError, match="no such parameter file"):
        params.load(tmp_path / "nope.yaml")


def test_host_check_refuses_cpus_and_memory_the_host_lacks():
    p = params.load(ROOT / "parameters" / "seed-xeon4214.yaml")
    with pytest.raises(params.ParamsError) as e:
        fit.check_cpus_memory(p, cpus=[0, 1], memory_mib=24000, path="seed.yaml")
    msg = str(e.value)
    assert "l1.cpuset" in msg and "[16, 17" in msg and "l1.memory_mib: 32768" in msg


def test_host_check_accepts_what_fits():
    p = params.load(ROOT / "parameters" / "lab.yaml")
    fit.check_cpus_memory(p, cpus=[0, 1], memory_mib=24000)


def test_parse_cpuset():
    assert params.parse_cpuset("0-2,5") == [0, 1, 2, 5]


def test_parameters_readme_is_current():
    from helpers import params_doc
    assert (ROOT / "parameters" / "README.md").read_text() == params_doc.readme(), \
        "parameters/README.md is not current: run `python -m helpers.params_doc`"


def test_parameters_readme_documents_every_key_and_consent():
    from helpers import params_doc
    text = params_doc.readme()
    for name, model in params_doc._sections():
        for key in model.model_fields:
            assert f"| `{name + '.' if name else ''}{key}` |" in text
    for key in ("verify.mkfs", "verify.force_wipe", "l2.baseline_consent", "nvme.remove_backing_file"):
        assert f"| `{key}` | false |" in text.split("## The top level")[0]
