"""The built-in TUs the verify tests and bench/bench_verify.py rebuild: different kinds of code."""

SAMPLE = [
    "fs/proc/cmdline.o",
    "kernel/sys.o",
    "fs/namei.o",
    "lib/string.o",
    "net/ipv4/tcp.o",
    "kernel/sched/core.o",
    "drivers/char/mem.o",
]
