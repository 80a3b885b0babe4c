"""The lab image builder's pure parts: the L2 kernel it extracts for a PVH boot."""
import lzma
import struct

from helpers.lab import images


def _elf_with_notes(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    """A minimal little-endian ELF64: header, one PT_NOTE program header, the notes."""
    body = b""
    for name, ntype, desc in notes:
        pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
        body += struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 0x20, 64)           # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)       # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(ehdr) + phdr + body


def _bzimage(elf: bytes) -> bytes:
    """A bzImage's shape for this purpose: setup code, then the xz stream of the kernel."""
    return b"\x4d\x5a" + b"\x90" * 500 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0" * 64


def test_the_pvh_kernel_is_found_inside_the_bzimage():
    elf = _elf_with_notes([(b"Xen\0", 6, b"linux\0"), (b"Xen\0", 18, b"\x50\x08\x00\x01\0\0\0\0"),
                           (b"GNU\0", 3, b"\x01" * 20)])
    assert images.elf_notes(elf) == {"Xen": {6, 18}, "GNU": {3}}
    assert images.pvh_vmlinux(_bzimage(elf)) == elf


def test_a_kernel_without_pvh_entry_or_xz_stream_is_refused():
    no_pvh = _elf_with_notes([(b"Xen\0", 6, b"linux\0")])
    assert images.pvh_vmlinux(_bzimage(no_pvh)) is None
    assert images.pvh_vmlinux(b"\x4d\x5a" + b"\0" * 1000) is None           # gzip kernel: no xz magic
    assert images.pvh_vmlinux(b"\x4d\x5a\xfd7zXZ\x00broken") is None         # a corrupt stream
    assert images.elf_notes(b"not an elf at all" * 8) == {}
