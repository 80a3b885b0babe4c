"""choose_cpuset and format_cpuset: one NUMA node, whole cores first."""
import pytest

from helpers.numa import choose_cpuset, format_cpuset
from helpers.params import parse_cpuset

# The seed's host: two-socket Xeon Silver 4214, 12 cores x 2 threads per socket;
# node 0 = 0-11,24-35, node 1 = 12-23,36-47, CPU n's sibling is n+24.
SEED_NODES = {0: list(range(0, 12)) + list(range(24, 36)), 1: list(range(12, 24)) + list(range(36, 48))}
SEED_SIBLINGS = {c: [c % 24, c % 24 + 24] for c in range(48)}
# This lab machine: one node, 2 CPUs, no SMT siblings.
LAB_NODES = {0: [0, 1]}
LAB_SIBLINGS = {0: [0], 1: [1]}


def node_of(cpu, nodes):
    return next(n for n, cpus in nodes.items() if cpu in cpus)


@pytest.mark.parametrize("cpus, text", [
    ([], ""), ([3], "3"), ([0, 1], "0-1"), ([5, 1, 2, 3, 3], "1-3,5"),
    (list(range(16, 24)) + list(range(40, 48)), "16-23,40-47"), ([0, 2, 4], "0,2,4"),
])
def test_format_cpuset(cpus, text):
    assert format_cpuset(cpus) == text
    if text:
        assert parse_cpuset(text) == sorted(set(cpus))


def test_seed_8_cores_2_threads_is_the_seeds_cpuset():
    cpuset, why = choose_cpuset(SEED_NODES, SEED_SIBLINGS, vcpus=16, threads=2)
    cpus = parse_cpuset(cpuset)
    assert len(cpus) == 16
    assert {node_of(c, SEED_NODES) for c in cpus} == {1}            # one node
    assert all(set(SEED_SIBLINGS[c]) <= set(cpus) for c in cpus)      # whole cores
    assert cpuset == "16-23,40-47"                                    # exactly the seed's
    assert "node 1" in why and "whole cores" in why


def test_seed_whole_node():
    cpuset, why = choose_cpuset(SEED_NODES, SEED_SIBLINGS, vcpus=24, threads=2)
    assert cpuset == "12-23,36-47"
    assert "node 1" in why


def test_seed_one_thread_per_core_avoids_siblings():
    cpuset, why = choose_cpuset(SEED_NODES, SEED_SIBLINGS, vcpus=8, threads=1)
    cpus = parse_cpuset(cpuset)
    assert len(cpus) == 8 and {node_of(c, SEED_NODES) for c in cpus} == {1}
    assert len({c % 24 for c in cpus}) == 8, "two vCPUs on one physical core"
    assert "separate physical cores" in why


def test_seed_more_vcpus_than_cores_fills_siblings_in_one_node():
    cpuset, why = choose_cpuset(SEED_NODES, SEED_SIBLINGS, vcpus=20, threads=1)
    cpus = parse_cpuset(cpuset)
    assert len(cpus) == 20 and {node_of(c, SEED_NODES) for c in cpus} == {1}


def test_only_the_node_that_fits_is_chosen():
    nodes = {0: list(range(0, 8)), 1: [8, 9]}
    siblings = {c: [c] for c in range(10)}
    cpuset, why = choose_cpuset(nodes, siblings, vcpus=4, threads=1)
    assert {node_of(c, nodes) for c in parse_cpuset(cpuset)} == {0}
    assert "node 0" in why and "only node" in why


def test_siblings_outside_the_node_do_not_count_as_whole_cores():
    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    siblings = {0: [0, 4], 4: [0, 4], 1: [1, 5], 5: [1, 5], 2: [2, 6], 6: [2, 6], 3: [3, 7], 7: [3, 7]}
    cpuset, why = choose_cpuset(nodes, siblings, vcpus=2, threads=2)
    cpus = parse_cpuset(cpuset)
    assert len({node_of(c, nodes) for c in cpus}) == 1
    assert "no thread siblings" in why


def test_one_node_two_cpus():
    assert choose_cpuset(LAB_NODES, LAB_SIBLINGS, vcpus=2, threads=1)[0] == "0-1"
    assert choose_cpuset(LAB_NODES, LAB_SIBLINGS, vcpus=1, threads=1)[0] == "1"
    cpuset, why = choose_cpuset(LAB_NODES, LAB_SIBLINGS, vcpus=2, threads=2)
    assert cpuset == "0-1" and "no thread siblings" in why


@pytest.mark.parametrize("nodes, siblings, vcpus, threads", [
    (LAB_NODES, LAB_SIBLINGS, 3, 1),
    (SEED_NODES, SEED_SIBLINGS, 32, 2),   # 16 cores x 2: a node has 12 cores
    (SEED_NODES, SEED_SIBLINGS, 26, 2),
    (SEED_NODES, SEED_SIBLINGS, 25, 1),
])
def test_too_big(nodes, siblings, vcpus, threads):
    cpuset, why = choose_cpuset(nodes, siblings, vcpus, threads)
    assert cpuset is None
    assert "no single NUMA node" in why and "node 0:" in why


def test_bad_request():
    with pytest.raises(ValueError):
        choose_cpuset(LAB_NODES, LAB_SIBLINGS, vcpus=0, threads=1)
