"""Placing L1's vCPUs: a cpuset inside one NUMA node, whole cores first.

The seed pins its 8 cores x 2 threads L1 to ``16-23,40-47``: on its
two-socket Xeon 4214, node 1 holds CPUs 12-23,36-47 and CPU n's hyperthread
sibling is n+24, so the set is eight whole cores of node 1.
"""
from __future__ import annotations

import math


def format_cpuset(cpus) -> str:
    """[16, ..., 23, 40, ..., 47] -> '16-23,40-47'."""
    cpus = sorted(set(int(c) for c in cpus))
    parts, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def _cores(node_cpus: list[int], siblings: dict[int, list[int]]) -> list[list[int]]:
    """The node's cores as sorted lists of sibling CPUs (only siblings inside the node)."""
    inside, seen, cores = set(node_cpus), set(), []
    for c in sorted(node_cpus):
        if c in seen:
            continue
        core = sorted({c, *(s for s in siblings.get(c, [c]) if s in inside)})
        seen.update(core)
        cores.append(core)
    return cores


def _pick(cores: list[list[int]], vcpus: int, threads: int) -> tuple[list[int], str] | None:
    """CPUs for ``vcpus`` from one node's cores, taken from the node's highest
    cores down (away from CPU 0, where the host's housekeeping runs)."""
    cores = sorted(cores, key=lambda c: c[0], reverse=True)
    if threads > 1:
        whole = [c for c in cores if len(c) >= threads]
        need = math.ceil(vcpus / threads)
        if len(whole) >= need:
            chosen = [cpu for core in whole[:need] for cpu in core[:threads]][:vcpus]
            return chosen, f"{need} whole cores x {threads} threads (each vCPU core on one physical core's siblings)"
        if all(len(c) == 1 for c in cores) and len(cores) >= vcpus:
            chosen = [c[0] for c in cores[:vcpus]]
            return chosen, f"{vcpus} CPUs; the host shows no thread siblings, so the {threads} threads per core land on separate cores"
        return None
    firsts = [c[0] for c in cores]
    if len(firsts) >= vcpus:
        return firsts[:vcpus], f"{vcpus} CPUs on separate physical cores"
    rest = [cpu for c in cores for cpu in c[1:]]
    if len(firsts) + len(rest) >= vcpus:
        return (firsts + rest)[:vcpus], f"{vcpus} CPUs: every core of the node, some with both threads"
    return None


def choose_cpuset(nodes: dict[int, list[int]], siblings: dict[int, list[int]],
                  vcpus: int, threads: int = 1) -> tuple[str | None, str]:
    """A cpuset for ``vcpus`` vCPUs (``threads`` per core) inside ONE NUMA node,
    whole cores (sibling pairs) first when threads > 1, and why; (None, why)
    when no node has room."""
    if vcpus < 1 or threads < 1:
        raise ValueError("vcpus and threads must be at least 1")
    fits = []
    for node in sorted(nodes, reverse=True):
        picked = _pick(_cores(nodes[node], siblings), vcpus, threads)
        if picked:
            fits.append((node, *picked))
    if not fits:
        sizes = ", ".join(f"node {n}: {len(c)} CPUs" for n, c in sorted(nodes.items()))
        return None, (f"no single NUMA node can hold {vcpus} vCPUs"
                      f"{f' as whole {threads}-thread cores' if threads > 1 else ''} ({sizes}): "
                      "lower l1 cores/threads, or leave l1.cpuset empty and accept vCPUs spread over nodes")
    node, cpus, how = fits[0]
    why = f"node {node}: {how}"
    if len(nodes) > 1:
        why += (f"; the highest node that fits, leaving node {min(nodes)} to the host"
                if node != min(nodes) else "; the only node that fits")
    return format_cpuset(cpus), why
