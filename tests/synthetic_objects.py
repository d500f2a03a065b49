"""The synthetic C sources of the verify tests: a tiny "kernel" of TUs the host gcc compiles.

Shared by test_verify_synthetic.py, test_elf_reader.py and test_fuzz_elf.py (test modules never
import each other). SHIPPED_A is the shipped TU; REBUILT_A the same TU with one change per verdict
class; B defines the callees, C overrides the weak hook, UTIL gives two TUs a same-named static (`lonely`: one
no function calls).
"""

SHIPPED_A = """
extern int g1(int); extern int g2(int);
static int counter;
int same(int x) { return x * 3 + 1; }
int konst(int x) { return x + 5; }
int regs(int a, int b) { return a - b; }
int caller(int x) { return g1(x) + 1; }
static __attribute__((noinline)) int scale(int x, int k) { return x * k + k; }
int use_scale(int a, int b) { return scale(a, 7) + scale(b, 7); }
__attribute__((weak)) int hook(int x) { return x + 100; }
__attribute__((no_instrument_function)) int quiet(int x) { return x * 5; }
__attribute__((section(".noinstr.text"))) int entry_fn(int x) { return x ^ 3; }
int bump(void) { return ++counter; }
const char *msg(void) { return "hello verify"; }
int grow(int x) { return x + 1; }
"""

REBUILT_A = (
    SHIPPED_A.replace("return x + 5;", "return x + 6;")
    .replace("return a - b;", "return b - a;")
    .replace("return g1(x) + 1;", "return g2(x) + 1;")
    .replace("scale(b, 7)", "scale(b, 9)")
    .replace("int grow(int x) { return x + 1; }", "int grow(int x) { return x * x * x + x / 3 + 1; }")
    + "int only_here(int x) { return x - 42; }\n"
)

B = """
int g1(int x) { return x + 1; }
int g2(int x) { return x + 1; }
"""
C = "int hook(int x) { return x * 2; }\n"
UTIL = """
static __attribute__((noinline)) int helper(int x) {{ return x * 11; }}
int use{n}(int x) {{ return helper(x) + {n}; }}
static __attribute__((used, noinline)) int lonely(int x) {{ return x * 13; }}
"""
