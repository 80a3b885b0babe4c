"""Stage 05 inside L2: (with consent) mkfs.xfs and mount, as the seed does after "登录L2-kvm".

What L2 sees is read by ``facts.storage`` and judged by ``checks.passthrough``."""
from __future__ import annotations

import shlex

from ..errors import RunbookError
from ..facts.storage import mounted_at, signature
from ..guest import Guest
from . import Change, did, no_change


def plan_xfs(guest: Guest, device: str, mount_point: str, consent: bool, force: bool) -> str | None:
    """Read only: None when ``device`` is XFS and mounted already (no change), else what is on
    it now ('no signature' or the signature forced over); refused without consent."""
    m = mounted_at(guest, mount_point)
    if m and m[0] == device and m[1] == "xfs":
        return None
    if not consent:
        raise RunbookError(f"mkfs.xfs would destroy the data on {device} in {guest.name}, and the parameters do not consent",
                           hint="set verify.mkfs: true to allow it (only on a disk whose data you do not need)")
    sig = signature(guest, device)
    if sig and not force:
        raise RunbookError(f"{device} in {guest.name} already carries a {sig} signature; refusing to overwrite it",
                           hint="set verify.force_wipe: true if its data may be destroyed")
    return sig or "no signature"


def make_xfs(guest: Guest, device: str, mount_point: str, consent: bool, force: bool) -> tuple[Change, str]:
    """mkfs.xfs on ``device`` only with consent; refuse an existing signature unless forced."""
    was = plan_xfs(guest, device, mount_point, consent, force)
    if was is None:
        return no_change(f"mkfs.xfs {device}", f"already XFS and mounted at {mount_point}"), ""
    return apply_xfs(guest, device, was)


def apply_xfs(guest: Guest, device: str, was: str) -> tuple[Change, str]:
    out = guest.run(["mkfs.xfs", "-f", device], timeout=600, check=True).out
    return did(f"mkfs.xfs {device}", f"formatted (was: {was})"), out


def plan_mount(guest: Guest, device: str, mount_point: str) -> bool:
    """Read only: does ``device`` need mounting at ``mount_point``? Refused when another is there."""
    m = mounted_at(guest, mount_point)
    if m and m[0] == device:
        return False
    if m:
        raise RunbookError(f"{mount_point} in {guest.name} already has {m[0]} mounted",
                           hint="choose another verify.mount_point")
    return True


def mount_command(device: str, mount_point: str) -> str:
    return f"mkdir -p {shlex.quote(mount_point)} && mount {shlex.quote(device)} {shlex.quote(mount_point)}"


def mount(guest: Guest, device: str, mount_point: str) -> Change:
    what = f"mount {device} {mount_point}"
    if not plan_mount(guest, device, mount_point):
        return no_change(what, "already mounted")
    return apply_mount(guest, device, mount_point)


def apply_mount(guest: Guest, device: str, mount_point: str) -> Change:
    what = f"mount {device} {mount_point}"
    guest.run(mount_command(device, mount_point), check=True)
    return did(what, "mounted")

