// SPDX-License-Identifier: GPL-2.0
/*
 * kgenv-oops: a module (marked as a livepatch so the boot test accepts it) whose init writes
 * through a NULL pointer. The guest kernel runs with oops=panic, so loading it panics the
 * kernel; the boot test uses it to prove a crash ends the run at once with the oops shown.
 */
#include <linux/module.h>

static int __init kgenv_oops_init(void)
{
	*(volatile int *)16 = 1;
	return 0;
}

module_init(kgenv_oops_init);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
