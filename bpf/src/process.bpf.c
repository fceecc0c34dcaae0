// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * process.bpf.c - process start and end, for the process context of connections (exe, cgroup) and for
 * TLS library discovery in new processes. Shares `events` and `counters` with socket.bpf.o.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* tp_btf, not a classic tracepoint: a classic one is skipped whenever another tracepoint program holds the
 * per-CPU guard (a syscall program preempted on this CPU), and a lost exec names a connection after the
 * program the process exec'd next (bash -c '...; exec head'). tp_btf programs only guard against
 * themselves. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(tp_sched_process_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct qtap_proc_exec *ev;
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if ((pid_tgid >> 32) == self_tgid)
		return 0;
	/* Reuse the data scratch buffer: the record (~330 bytes) is too large for the stack with the rest. */
	ev = scratch_slot();
	if (!ev)
		return 0;
	fill_hdr(&ev->h, QTAP_REC_PROC_EXEC, 0);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	bpf_probe_read_kernel_str(&ev->filename, sizeof(ev->filename), BPF_CORE_READ(bprm, filename));
	ev->exe_ino = BPF_CORE_READ(task, mm, exe_file, f_inode, i_ino);
	ev->exe_dev = BPF_CORE_READ(task, mm, exe_file, f_inode, i_sb, s_dev);
	ev->_pad = 0;
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), rb_flags(sizeof(*ev))))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
	return 0;
}

/* A new process (threads are left out): until it execs it is its parent's program, which is how a child
 * forked after accept() and gone before user space looks is still named. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(tp_sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	struct qtap_proc_fork ev = {};
	__u32 ptgid = parent->tgid, ctgid = child->tgid;

	if (ptgid == ctgid || ptgid == self_tgid)
		return 0;
	fill_hdr(&ev.h, QTAP_REC_PROC_FORK, 0);
	ev.h.pid = ctgid;
	ev.h.tid = child->pid;
	ev.ppid = ptgid;
	ev.cgroup_id = bpf_get_current_cgroup_id();
	ev.uid = (__u32)bpf_get_current_uid_gid();
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags(sizeof(ev))))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
	return 0;
}

/* tp_btf for the same reason as exec. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(tp_sched_process_exit, struct task_struct *task)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct qtap_proc_exit ev = {};

	/* Only the whole process ending matters, not each thread. */
	if ((__u32)pid_tgid != (__u32)(pid_tgid >> 32))
		return 0;
	fill_hdr(&ev.h, QTAP_REC_PROC_EXIT, 0);
	ev.exit_code = BPF_CORE_READ(task, exit_code);
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags(sizeof(ev))))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
	return 0;
}
