"""The nested NVMe runbook's package: notebooks call ``nb.stage`` and ``ctx.step``; stages hold
steps; steps use facts, checks, operations, libvirt XML and the machines (``guest.py``).

Rule: one direction: nothing below imports anything above it (stages -> steps -> facts, ops,
libvirt_xml -> guest)."""
