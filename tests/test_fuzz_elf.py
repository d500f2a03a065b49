"""Fuzz: byte flips and truncations of real small objects give a UserError or verdicts, nothing else."""

import random

import pytest
from synthetic_objects import SHIPPED_A, B, C
from verify_build import compile_c, link, link_module, runtime

from kgenv.errors import UserError
from kgenv.verify import open_binary, verify

CASES = 300


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    objs = [compile_c(d, "a.c", SHIPPED_A), compile_c(d, "b.c", B), compile_c(d, "c.c", C), runtime(d)]
    binary = link(d / "vmlinux", objs)
    ko = link_module(d / "a.ko", [objs[0]])
    return d, objs[0], binary, ko


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    if rng.random() < 0.25:
        return bytes(buf[: rng.randrange(len(buf))])
    # bias towards the headers and tables at both ends, where parsing decisions live
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(min(len(buf), 256)) if rng.random() < 0.4 else rng.randrange(len(buf))
        buf[pos] = rng.randrange(256)
    return bytes(buf)


def test_mutated_inputs_only_raise_user_errors(seeds):
    d, obj, binary, ko = seeds
    rng = random.Random(20240601)
    originals = {"obj": obj.read_bytes(), "ko": ko.read_bytes()}
    outcomes = {"error": 0, "verdicts": 0}
    for case in range(CASES):
        which = "obj" if case % 3 else "ko"
        path = d / f"m{case % 7}.{'o' if which == 'obj' else 'ko'}"
        path.write_bytes(_mutate(rng, originals[which]))
        try:
            if which == "obj":
                report = verify([path], binary)
            else:
                report = verify([obj], open_binary(path))
            assert report.summary.total == len(report.verdicts)
            outcomes["verdicts"] += 1
        except UserError as exc:
            assert str(path) in str(exc)
            assert "\n" not in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] and outcomes["verdicts"]
