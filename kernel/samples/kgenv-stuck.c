// SPDX-License-Identifier: GPL-2.0
/*
 * kgenv-stuck: a livepatch whose transition can never complete. It replaces kthreadd(),
 * which never returns and so stays on the kthreadd task's stack forever; the stack check
 * keeps that task unpatched. The replacement is never called. The boot test uses this to
 * prove that a stuck transition is reported (with the task that blocks it), not waited out.
 */
#include <linux/module.h>
#include <linux/livepatch.h>

static int kgenv_kthreadd(void *unused)
{
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "kthreadd", .new_func = kgenv_kthreadd },
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

static int __init kgenv_stuck_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit kgenv_stuck_exit(void)
{
}

module_init(kgenv_stuck_init);
module_exit(kgenv_stuck_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
