// SPDX-License-Identifier: GPL-2.0
/*
 * kgenv-unresolved: a livepatch that must NOT load. Its replacement function calls a symbol
 * no kernel exports, so the module loader refuses it with "Unknown symbol". The boot test
 * uses it to prove that a load failure is reported with the kernel's own words.
 */
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern const char *kgenv_no_such_symbol(void);

static int kgenv_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", kgenv_no_such_symbol());
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = kgenv_cmdline_proc_show },
	{ }
};

static struct klp_object objs[] = {
	{ .funcs = funcs },	/* NULL name: vmlinux */
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init kgenv_unresolved_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit kgenv_unresolved_exit(void)
{
}

module_init(kgenv_unresolved_init);
module_exit(kgenv_unresolved_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
