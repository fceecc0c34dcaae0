// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socket.bpf.c - TCP connections and their bytes, from syscall tracepoints only (no kprobes, no fentry:
 * neither loads on the kernels we target).
 *
 * sys_enter_* resolves the fd to a TCP socket (anything else is ignored right there) and parks the call's
 * arguments per thread; sys_exit_* emits the bytes the call really moved. Connection close comes from the
 * sock:inet_sock_set_state tracepoint (TCP_CLOSE), which also catches sockets closed by process exit.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TCP_CLOSE 7

static __always_inline int enter_io(int fd, __u64 buf, __u32 iovcnt, __u8 dir, __u8 kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct qtap_io_args a = {};
	struct sock *sk;

	if (skip_task(pid_tgid >> 32))
		return 0;
	sk = fd_to_sock(fd);
	if (!sk)
		return 0;
	a.sk = (__u64)sk;
	a.buf = buf;
	a.iovcnt = iovcnt;
	a.fd = fd;
	a.dir = dir;
	a.kind = kind;
	if (bpf_map_update_elem(&inflight, &tid, &a, BPF_ANY))
		count(QTAP_CNT_DROP_INFLIGHT, 1);
	return 0;
}

/* Bytes of a TLS connection's socket: the first ones (handshake) go up for SNI/ALPN; ciphertext after
 * that, or of a connection a TLS probe decrypts, is only counted. */
static __always_inline bool mute_ciphertext(struct qtap_sock_info *si, __u8 dir, __u64 off, __u64 buf, __u32 iovcnt)
{
	if (!(si->flags & QTAP_SOCK_DETECTED)) {
		__u8 first = 0;
		if (!iovcnt && off == 0 && !bpf_probe_read_user(&first, 1, (void *)buf) && first == 0x16)
			si->flags |= QTAP_SOCK_TLS_RAW;
		si->flags |= QTAP_SOCK_DETECTED;
	}
	if (si->flags & (QTAP_SOCK_TLS_COVERED | QTAP_SOCK_MUTED))
		return true;
	if ((si->flags & QTAP_SOCK_TLS_RAW) && off >= tls_hello_bytes)
		return true;
	return false;
}

static __always_inline int exit_io(long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct qtap_io_args *ap = bpf_map_lookup_elem(&inflight, &tid);
	struct qtap_io_args a;
	struct qtap_sock_info *si;
	struct qtap_tls_call *tc;
	__u64 off;

	if (!ap)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&inflight, &tid);
	if (ret <= 0)
		return 0;
	si = sock_get_or_open((struct sock *)a.sk, QTAP_ROLE_UNKNOWN, a.fd);
	if (!si)
		return 0;
	off = __sync_fetch_and_add(&si->off[a.dir & 1], ret);
	if (sock_muted(si, (struct sock *)a.sk))
		return 0;
	set_u64(&thread_socks, &tid, a.sk);

	if (si->flags & QTAP_SOCK_UDP) {
		emit_data(si->conn_id, off, a.dir, QTAP_SRC_SYSCALL, a.fd, a.buf, a.iovcnt, ret);
		return 0;
	}
	/* Inside a TLS library call: this syscall names the socket of that call's connection. */
	tc = bpf_map_lookup_elem(&tls_calls, &tid);
	if (tc) {
		tc->sk = a.sk;
		if (!(si->flags & QTAP_SOCK_TLS_COVERED))
			__sync_fetch_and_or(&si->flags, QTAP_SOCK_TLS_COVERED);
		set_u64(&tls_socks, &tc->ssl, a.sk);
		count(QTAP_CNT_TLS_MUTED_BYTES, ret);
		return 0;
	}
	if (a.kind == QTAP_IO_SENDFILE) {
		emit_data(si->conn_id, off, a.dir, QTAP_SRC_SYSCALL, a.fd, 0, 0, 0);
		return 0;
	}
	if (mute_ciphertext(si, a.dir, off, a.buf, a.iovcnt)) {
		count(QTAP_CNT_TLS_MUTED_BYTES, ret);
		return 0;
	}
	emit_data(si->conn_id, off, a.dir, QTAP_SRC_SYSCALL, a.fd, a.buf, a.iovcnt, ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_read")
int tp_enter_read(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], 0, QTAP_DIR_RECV, QTAP_IO_BUF);
}

SEC("tracepoint/syscalls/sys_exit_read")
int tp_exit_read(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int tp_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], 0, QTAP_DIR_RECV, QTAP_IO_BUF);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_readv")
int tp_enter_readv(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], ctx->args[2] ? ctx->args[2] : 1, QTAP_DIR_RECV, QTAP_IO_IOV);
}

SEC("tracepoint/syscalls/sys_exit_readv")
int tp_exit_readv(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

/* sendmsg/recvmsg: the iovec array and its length live in the user's msghdr. */
static __always_inline int enter_msg(int fd, __u64 umsg, __u8 dir)
{
	struct user_msghdr msg = {};

	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)umsg))
		return 0;
	if (!msg.msg_iovlen)
		return 0;
	return enter_io(fd, (__u64)msg.msg_iov, msg.msg_iovlen, dir, QTAP_IO_MSG);
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int tp_enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	return enter_msg(ctx->args[0], ctx->args[1], QTAP_DIR_RECV);
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int tp_exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_write")
int tp_enter_write(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], 0, QTAP_DIR_SEND, QTAP_IO_BUF);
}

SEC("tracepoint/syscalls/sys_exit_write")
int tp_exit_write(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int tp_enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], 0, QTAP_DIR_SEND, QTAP_IO_BUF);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int tp_exit_sendto(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int tp_enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], ctx->args[2] ? ctx->args[2] : 1, QTAP_DIR_SEND, QTAP_IO_IOV);
}

SEC("tracepoint/syscalls/sys_exit_writev")
int tp_exit_writev(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int tp_enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	return enter_msg(ctx->args[0], ctx->args[1], QTAP_DIR_SEND);
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int tp_exit_sendmsg(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

/* sendfile moves page-cache bytes the process never touches: only the count is reported (a gap in the
 * stream), so offsets stay right and user space knows a body went by unseen. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int tp_enter_sendfile(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], 0, 0, QTAP_DIR_SEND, QTAP_IO_SENDFILE);
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int tp_exit_sendfile(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int tp_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct qtap_io_args a = {};
	__u32 tgid = pid_tgid >> 32;

	/* The agent's own connections are remembered (not traced) so their far ends can be left out. */
	if (tgid != self_tgid && skip_task(tgid))
		return 0;
	/* The fd may not be a TCP socket yet in a useful sense (unbound); resolve it at exit. */
	a.fd = ctx->args[0];
	a.kind = tgid == self_tgid ? QTAP_IO_CONNECT_SELF : QTAP_IO_CONNECT;
	if (bpf_map_update_elem(&inflight, &tid, &a, BPF_ANY))
		count(QTAP_CNT_DROP_INFLIGHT, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int tp_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct qtap_io_args *ap = bpf_map_lookup_elem(&inflight, &tid);
	struct sock *sk;
	__u8 kind, one = 1;
	__u16 lport;
	__u64 key;
	int fd;

	if (!ap)
		return 0;
	fd = ap->fd;
	kind = ap->kind;
	bpf_map_delete_elem(&inflight, &tid);
	if (ctx->ret != 0 && ctx->ret != -EINPROGRESS)
		return 0;
	sk = fd_to_sock(fd);
	if (!sk)
		return 0;
	if (kind == QTAP_IO_CONNECT_SELF) {
		lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		key = (__u64)sk;
		bpf_map_update_elem(&self_ports, &lport, &one, BPF_ANY);
		bpf_map_update_elem(&self_socks, &key, &lport, BPF_ANY);
		return 0;
	}
	sock_get_or_open(sk, QTAP_ROLE_CONNECT, fd);
	return 0;
}

static __always_inline int exit_accept(long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sock *sk;

	if (ret < 0 || skip_task(pid_tgid >> 32))
		return 0;
	sk = fd_to_sock(ret);
	if (sk)
		sock_get_or_open(sk, QTAP_ROLE_ACCEPT, ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tp_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return exit_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tp_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return exit_accept(ctx->ret);
}

static __always_inline int emit_close(__u64 key)
{
	struct qtap_sock_info *si = bpf_map_lookup_elem(&socks, &key);
	struct qtap_conn_close ev = {};

	if (!si)
		return 0;
	fill_hdr(&ev.h, QTAP_REC_CONN_CLOSE, si->conn_id);
	/* This may run in softirq context: the pid is the connection's, not the current task's. */
	ev.h.pid = si->pid;
	ev.h.tid = 0;
	ev.bytes_sent = si->off[QTAP_DIR_SEND];
	ev.bytes_received = si->off[QTAP_DIR_RECV];
	ev.open_ts_ns = si->open_ts_ns;
	bpf_map_delete_elem(&socks, &key);
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags()))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
	return 0;
}

/* UDP (DNS) sockets have no TCP_CLOSE: close(2) of a tracked one ends it (process exit without close is
 * left to the LRU table and user space's idle eviction). */
SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sock *sk;
	__u64 key;

	if (skip_task(pid_tgid >> 32))
		return 0;
	sk = fd_to_sock(ctx->args[0]);
	if (!sk || !sock_is_udp(sk))
		return 0;
	key = (__u64)sk;
	return emit_close(key);
}

/* The connection ends when its socket reaches TCP_CLOSE. This is hooked instead of close(2): close of one
 * fd does not end a socket shared by fork/dup, and process exit closes sockets without any close call. */
SEC("tracepoint/sock/inet_sock_set_state")
int tp_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 key = (__u64)ctx->skaddr;
	__u16 *self_port;

	if (ctx->newstate != TCP_CLOSE || ctx->protocol != IPPROTO_TCP)
		return 0;
	self_port = bpf_map_lookup_elem(&self_socks, &key);
	if (self_port) {
		__u16 port = *self_port;
		bpf_map_delete_elem(&self_ports, &port);
		bpf_map_delete_elem(&self_socks, &key);
		return 0;
	}
	return emit_close(key);
}
