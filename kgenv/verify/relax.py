"""Equivalence modulo branch relaxation: the same instructions, the same resolved branch targets.

Where the running binary's assembler saw a branch target in the same section it chose the 2-byte
`jmp rel8` (or `jcc rel8`); a rebuild with `-ffunction-sections` puts the target in another
section, so the assembler must emit `jmp rel32` with a relocation. Everything after that branch
moves by 3 (4 for a jcc) bytes, and every internal branch across it changes its displacement.

`align` walks both functions instruction by instruction (Capstone): every non-branch instruction
must have the same length and the same bytes (relocation fields masked); every direct branch must
have the same mnemonic and prefixes, its encoding may differ. The caller then proves each branch
pair reaches the same place (`same_targets`): an internal target through the instruction mapping,
an external one through the relocation / the binary's resolved address. Relocations of other
instructions are checked by the caller at their mapped offsets.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from kgenv.elf.disasm import Insn, decode

BRANCHES = frozenset(
    {
        "jmp",
        "call",
        "jo",
        "jno",
        "jb",
        "jae",
        "je",
        "jne",
        "jbe",
        "ja",
        "js",
        "jns",
        "jp",
        "jnp",
        "jl",
        "jge",
        "jle",
        "jg",
        "jrcxz",
        "jecxz",
        "loop",
        "loope",
        "loopne",
    }
)
_SHORT = {0xEB, 0xE0, 0xE1, 0xE2, 0xE3, *range(0x70, 0x80)}
_MASK64 = (1 << 64) - 1


def branch_target(insn: Insn) -> int | None:
    """The target of a direct relative branch, relative to the decode base (0: the function start)."""
    if insn.mnemonic not in BRANCHES or not insn.operands.startswith("0x") and not insn.operands.isdigit():
        return None
    try:
        value = int(insn.operands, 0) & _MASK64
    except ValueError:
        return None
    return value - (1 << 64) if value >> 63 else value


def _encoding(insn: Insn) -> tuple[bytes, int] | None:
    """(prefix bytes, displacement width) of a direct branch: the part relaxation may not change."""
    raw = insn.raw
    if len(raw) >= 5 and raw[-5] in (0xE8, 0xE9):
        return raw[:-5], 4
    if len(raw) >= 6 and raw[-6] == 0x0F and 0x80 <= raw[-5] <= 0x8F:
        return raw[:-6], 4
    if len(raw) >= 2 and raw[-2] in _SHORT:
        return raw[:-2], 1
    return None


@dataclass
class Alignment:
    """Object instruction offsets mapped onto the binary's, and the branch pairs still to prove."""

    omap: dict[int, int] = field(default_factory=dict)
    branches: list[tuple[Insn, Insn]] = field(default_factory=list)
    relaxed: list[str] = field(default_factory=list)  # "0x1f jmp 5->2" per re-encoded branch
    _starts: list[int] = field(default_factory=list, repr=False)

    def to_binary(self, off: int) -> int:
        """The binary offset of an object offset inside a paired instruction (same offset within it)."""
        if len(self._starts) != len(self.omap):
            self._starts = sorted(self.omap)
        starts = self._starts
        start = starts[max(bisect.bisect_right(starts, off) - 1, 0)]
        return self.omap[start] + off - start

    def in_branch(self, off: int) -> bool:
        """Whether an object offset lies inside one of the paired branches."""
        return any(a.offset <= off < a.offset + a.size for a, _b in self.branches)


def displacement_field(insn: Insn) -> int | None:
    """Offset of a direct branch's displacement field (it ends the instruction)."""
    enc = _encoding(insn)
    return insn.offset + insn.size - enc[1] if enc is not None else None


def _bytes(masks: dict[int, int]) -> set[int]:
    return {p for o, w in masks.items() for p in range(o, o + w)}


def align(ocode: bytes, bcode: bytes, omasks: dict[int, int], bmasks: dict[int, int]) -> Alignment | int:
    """Pair the instructions of both sides; the object offset of the first mismatch if they do not pair.

    `omasks`/`bmasks` are relocation fields (offset -> width) of each side: not compared here.
    """
    oi, bi = decode(ocode), decode(bcode)
    oskip, bskip = _bytes(omasks), _bytes(bmasks)
    out = Alignment()
    for a, b in zip(oi, bi, strict=False):
        out.omap[a.offset] = b.offset
        ta, tb = branch_target(a), branch_target(b)
        if ta is not None or tb is not None:
            ea, eb = _encoding(a), _encoding(b)
            if ta is None or tb is None or a.mnemonic != b.mnemonic or ea is None or eb is None or ea[0] != eb[0]:
                return a.offset
            out.branches.append((a, b))
            if a.size != b.size:
                out.relaxed.append(f"{a.offset:#x} {a.mnemonic} {a.size}->{b.size}")
            continue
        if a.size != b.size:
            return a.offset
        if a.raw != b.raw and any(
            x != y and a.offset + i not in oskip and b.offset + i not in bskip
            for i, (x, y) in enumerate(zip(a.raw, b.raw, strict=True))
        ):
            return a.offset
    if len(oi) != len(bi):
        return oi[len(bi)].offset if len(oi) > len(bi) else len(ocode)
    out.omap[len(ocode)] = len(bcode)
    return out


INTERNAL = "internal"


def same_targets(
    al: Alignment,
    osize: int,
    otarget: Callable[[Insn], tuple],
    btarget: Callable[[Insn], Hashable],
) -> tuple[Insn, Insn] | None:
    """The first branch pair that reaches different places, or None when all agree.

    `otarget` gives `(INTERNAL, offset)` for an object branch without relocation (its displacement
    is the target, inside the function), else a key naming the resolved target; `btarget` the
    binary's key of the same form. Internal targets must map onto each other instruction for instruction.
    """
    for a, b in al.branches:
        ko = otarget(a)
        if ko and ko[0] == INTERNAL:
            tb = branch_target(b)
            if tb is None or not 0 <= ko[1] < osize or al.omap.get(ko[1]) != tb:
                return a, b
        elif ko != btarget(b):
            return a, b
    return None
