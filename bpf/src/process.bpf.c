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

SEC("tracepoint/sched/sched_process_exec")
int tp_sched_process_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct qtap_proc_exec *ev;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 loc = ctx->__data_loc_filename & 0xFFFF;
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
	bpf_probe_read_kernel_str(&ev->filename, sizeof(ev->filename), (void *)ctx + loc);
	ev->exe_ino = BPF_CORE_READ(task, mm, exe_file, f_inode, i_ino);
	ev->exe_dev = BPF_CORE_READ(task, mm, exe_file, f_inode, i_sb, s_dev);
	ev->_pad = 0;
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), rb_flags()))
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
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags()))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int tp_sched_process_exit(struct trace_event_raw_sched_process_template *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct qtap_proc_exit ev = {};

	/* Only the whole process ending matters, not each thread. */
	if ((__u32)pid_tgid != (__u32)(pid_tgid >> 32))
		return 0;
	fill_hdr(&ev.h, QTAP_REC_PROC_EXIT, 0);
	ev.exit_code = BPF_CORE_READ(task, exit_code);
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags()))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
	return 0;
}
