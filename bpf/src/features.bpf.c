// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * features.bpf.c - one tiny program per hook type, loaded one at a time by `qtap inspect` to tell what
 * this kernel accepts. Nothing here is attached by the agent.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int feat_tracepoint(void *ctx)
{
	return 0;
}

SEC("raw_tracepoint/sys_enter")
int feat_raw_tracepoint(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int feat_tp_btf(void *ctx)
{
	return 0;
}

SEC("uprobe")
int feat_uprobe(void *ctx)
{
	return 0;
}

SEC("kprobe/do_nanosleep")
int feat_kprobe(void *ctx)
{
	return 0;
}

SEC("fentry/do_nanosleep")
int BPF_PROG(feat_fentry)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int feat_ringbuf(void *ctx)
{
	__u32 v = 1;
	bpf_ringbuf_output(&probe_ring, &v, sizeof(v), 0);
	return 0;
}

/* The socket-tracepoint path of socket.bpf.c (Linux >= 6.3): the tracepoint and the helper it relies on. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(feat_sock_length, struct sock *sk, int ret, int flags)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	return regs && regs->orig_ax == -1;
}
