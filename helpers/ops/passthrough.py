"""Stage 04's passthrough judgments live in ``helpers.checks.passthrough`` (what L1 shows
is read by ``helpers.facts.pci``); these names stay importable here for stage 04."""
from ..checks.passthrough import check_given_up, check_passable, group_offenders, select_nvme  # noqa: F401
