"""The synthetic C sources of the verify tests: a tiny "kernel" of TUs the host gcc compiles.

Shared by test_verify_synthetic.py, test_elf_reader.py, test_fuzz_elf.py, test_changes.py and
test_clones.py (test modules never import each other). SHIPPED_A is the shipped TU; REBUILT_A the
same TU with one change per verdict class; B defines the callees, C overrides the weak hook, UTIL
gives two TUs a same-named static (`lonely`: one no function calls). FLAGS shape a small TU's code
as Kbuild shapes a kernel TU's.
"""

FLAGS = [
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-PIE",
    "-mcmodel=kernel",
    "-pg",
    "-mfentry",
    "-mrecord-mcount",
    "-fno-asynchronous-unwind-tables",
]


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

# Kernel-shaped special sections (Linux 6.1 x86-64 layouts, the kernel's own asm idioms) for the
# changes tests: a static branch (__jump_table), an alternative (.altinstructions with its
# .altinstr_replacement), an exception-table entry with a fixup, a static-call site. Each user's code
# bytes stay the same when only the entry's payload (key, feature bit, replacement, fixup) changes.
SPECIAL = r"""
struct static_key { int enabled; };
struct static_key key_a, key_b;
extern void fallback_a(void);
extern void fallback_b(void);
extern int __SCK__hook_a, __SCK__hook_b;

#define STATIC_BRANCH(key) ({ int _r = 0;                                           \
        asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"                              \
                 ".pushsection __jump_table, \"aw\"\n .balign 8\n"                   \
                 ".long 1b - .\n .long %l[yes] - .\n .quad %c0 + %c1 - .\n"          \
                 ".popsection" :: "i"(key), "i"(0) :: yes);                          \
        if (0) { yes: _r = 1; } _r; })

#define ALTERNATIVE(old, new, feature)                                              \
        asm volatile("661:\n\t" old "\n662:\n"                                      \
                     ".pushsection .altinstructions,\"a\"\n"                        \
                     " .long 661b - .\n .long 6641f - .\n .word " #feature "\n"     \
                     " .byte 662b-661b\n .byte 6642f-6641f\n .popsection\n"         \
                     ".pushsection .altinstr_replacement, \"ax\"\n"                 \
                     "6641:\n\t" new "\n6642:\n .popsection" ::: "memory")

#define EX_LOAD(val, ptr, fixup_label, type)                                        \
        asm volatile("1: movl (%1), %0\n2: nop\n3: nop\n"                           \
                     ".pushsection __ex_table, \"a\"\n .balign 4\n"                  \
                     " .long 1b - .\n .long " #fixup_label " - .\n .long " #type "\n" \
                     ".popsection" : "+r"(val) : "r"(ptr))

#define STATIC_CALL_SITE(key)                                                       \
        asm volatile("1: .byte 0xe8, 0, 0, 0, 0\n"                                  \
                     ".pushsection .static_call_sites, \"a\"\n .balign 4\n"          \
                     " .long 1b - .\n .long " #key " - .\n .popsection")

extern unsigned char caps[32];
#define ALT_ENTRY(feature)                                                          \
        ".pushsection .altinstructions,\"a\"\n"                                      \
        " .long 661b - .\n .long 6641f - .\n .word " #feature "\n"                 \
        " .byte 662b-661b\n .byte 6642f-6641f\n .popsection\n"                       \
        ".pushsection .altinstr_replacement, \"ax\"\n6641:\n6642:\n .popsection\n"

/* static_cpu_has: the bit test lives in .altinstr_aux, outside any function */
#define STATIC_CPU_HAS(bit) ({ __label__ yes, no, out; int _r;                      \
        asm goto("661: jmp 6f\n662:\n" ALT_ENTRY(bit)                              \
                 ".pushsection .altinstr_aux,\"ax\"\n"                               \
                 "6: testb %[bitnum], %P[cap](%%rip)\n jnz %l[yes]\n jmp %l[no]\n"   \
                 ".popsection" :: [bitnum] "i"(1 << ((bit) & 7)),                    \
                 [cap] "i"(&caps[(bit) >> 3]) :: yes, no);                           \
        yes: _r = 1; goto out; no: _r = 0; out: _r; })

int cpu_user(int x) { if (STATIC_CPU_HAS(18)) return x * 3; return x - 2; }
int jl_user(int x) { if (STATIC_BRANCH(&key_a)) return x * 7; return x + 1; }
void alt_user(void) { ALTERNATIVE(".byte 0x0f,0x1f,0x00", "lfence", 18); }
void alt_call(void) { ALTERNATIVE(".byte 0x0f,0x1f,0x44,0x00,0x00", "call fallback_a", 19); }
int ex_user(int *p) { int v = 0; EX_LOAD(v, p, 2b, 3); return v; }
void sc_user(void) { STATIC_CALL_SITE(__SCK__hook_a); }
int bystander(int x) { return x ^ 0x3c; }
/*ANCHOR*/
"""
