"""Capstone decoding of x86-64 code into (offset, size, mnemonic, operands) rows."""

from __future__ import annotations

from typing import NamedTuple

import capstone

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


class Insn(NamedTuple):
    """One decoded instruction; `offset` is relative to the start of the decoded bytes."""

    offset: int
    size: int
    mnemonic: str
    operands: str
    raw: bytes

    def text(self) -> str:
        return f"{self.mnemonic} {self.operands}".strip()


def decode(code: bytes, address: int = 0) -> list[Insn]:
    """Decode all of `code`; undecodable bytes become one-byte `(bad)` rows so offsets stay true."""
    out: list[Insn] = []
    pos = 0
    code = bytes(code)
    while pos < len(code):
        for _addr, size, mnem, ops in _CS.disasm_lite(code[pos:], address + pos):
            out.append(Insn(pos, size, mnem, ops, code[pos : pos + size]))
            pos += size
        if pos < len(code):  # capstone stopped at an invalid byte: record it and go on
            out.append(Insn(pos, 1, "(bad)", "", code[pos : pos + 1]))
            pos += 1
    return out


def insn_at(insns: list[Insn], offset: int) -> Insn | None:
    """The instruction covering `offset`."""
    for insn in insns:
        if insn.offset <= offset < insn.offset + insn.size:
            return insn
    return None
