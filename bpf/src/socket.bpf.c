// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socket.bpf.c - TCP connections and their bytes, from syscall tracepoints only (no kprobes, no fentry:
 * neither loads on the kernels we target).
 *
 * sys_enter_* resolves the fd to a TCP socket (anything else is ignored right there) and parks the call's
 * arguments per thread; sys_exit_* emits the bytes the call really moved. A connection ends at
 * tcp:tcp_destroy_sock: the socket is closed on the TCP side and released by every process that held it
 * (close(2) of a dup/forked fd does not end it; process exit does), so no syscall can reach it after that.
 * sock:inet_sock_set_state (tp_btf, like tcp_destroy_sock: see below) marks births (SYN_SENT, accepted
 * SYN_RECV), which retire any entry left for the same socket memory: see sock_get_or_open. Its TCP_CLOSE
 * transitions also drive the sweep (see below), which ends what those hooks did not.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";


/* Park a data call's arguments until its sys_exit. `rflags` are a receive's flags: a MSG_PEEK receive is not
 * parked at all (the bytes stay queued and come again on the real read: counting them would put them in the
 * stream twice), and MSG_TRUNC on TCP discards bytes without copying them (counted as a gap). */
static __always_inline int enter_io_flags(int fd, __u64 buf, __u32 iovcnt, __u8 dir, __u8 kind, __u32 rflags,
					  __u64 cap)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct qtap_io_args a = {};
	struct sock *sk;

	if (skip_task(pid_tgid >> 32))
		return 0;
	if (rflags & MSG_PEEK)
		return 0;
	sk = fd_to_sock(fd);
	if (!sk)
		return 0;
	if ((rflags & MSG_TRUNC) && !sock_is_udp(sk))
		kind = QTAP_IO_DISCARD;
	a.sk = (__u64)sk;
	a.buf = buf;
	a.iovcnt = iovcnt;
	a.fd = fd;
	a.dir = dir;
	a.kind = kind;
	a.cap = cap;
	a.was_closed = !sock_is_udp(sk) && sock_state(sk) == QTAP_TCP_CLOSE;
	if (bpf_map_update_elem(&inflight, &tid, &a, BPF_ANY))
		count(QTAP_CNT_DROP_INFLIGHT, 1);
	return 0;
}

static __always_inline int enter_io(int fd, __u64 buf, __u32 iovcnt, __u8 dir, __u8 kind)
{
	return enter_io_flags(fd, buf, iovcnt, dir, kind, 0, 0);
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

/* sendmmsg/recvmmsg: each message is its own record (a datagram for UDP); see QTAP_MAX_MMSG. */
static __always_inline int exit_mmsg(struct qtap_io_args *a, struct qtap_sock_info *si, long nmsgs)
{
	struct mmsghdr mh;
	__u64 rest = 0, off;
	__u32 i, n = nmsgs;
	bool muted = sock_muted(si, (struct sock *)a->sk);

	for (i = 0; i < QTAP_MAX_MMSG && i < n; i++) {
		if (bpf_probe_read_user(&mh, sizeof(mh), (void *)(a->buf + i * sizeof(mh))))
			return 0;
		off = __sync_fetch_and_add(&si->off[a->dir & 1], mh.msg_len);
		if (!muted)
			emit_data(si->conn_id, off, a->dir, QTAP_SRC_SYSCALL, a->fd, (__u64)mh.msg_hdr.msg_iov,
				  mh.msg_hdr.msg_iovlen ? (__u32)mh.msg_hdr.msg_iovlen : 1, mh.msg_len);
	}
	for (; i < QTAP_MAX_MMSG_COUNTED && i < n; i++) {
		__u32 len = 0;

		if (bpf_probe_read_user(&len, sizeof(len), (void *)(a->buf + i * sizeof(mh) + offsetof(struct mmsghdr, msg_len))))
			break;
		rest += len;
	}
	if (n > QTAP_MAX_MMSG_COUNTED)
		count(QTAP_CNT_MMSG_UNCOUNTED, n - QTAP_MAX_MMSG_COUNTED);
	if (rest) {
		off = __sync_fetch_and_add(&si->off[a->dir & 1], rest);
		count(QTAP_CNT_TRUNCATED_BYTES, rest);
		if (!muted)
			emit_unseen(si->conn_id, off, a->dir, a->fd, rest, QTAP_DATA_MMSG_REST);
	}
	return 0;
}

/* The first byte a send puts on the wire (single buffer or first iovec segment), or -1. */
static __always_inline int first_sent_byte(struct qtap_io_args *a)
{
	__u64 base = a->buf;
	__u8 first = 0;

	if (!base || (a->kind != QTAP_IO_BUF && a->kind != QTAP_IO_IOV && a->kind != QTAP_IO_MSG))
		return -1;
	if (a->iovcnt && bpf_probe_read_user(&base, sizeof(base), (void *)base))
		return -1;
	if (bpf_probe_read_user(&first, 1, (void *)base))
		return -1;
	return first;
}

/* A send outside any TLS call, on a thread whose last TLS write had no socket (BIO-pair stacks such as
 * gRPC's BoringSSL encrypt into memory, then send): the first such send, soon after, on a TCP socket no TLS
 * object holds yet and starting with a TLS application_data record, carries that write's ciphertext, so it names the
 * write's connection. A send on a socket already bound (another connection served by the same thread) is
 * not it, and binds nothing. */
static __always_inline void bind_thread_pending(__u32 tid, struct qtap_io_args *a, struct qtap_sock_info *si)
{
	struct qtap_thread_pending *tp = bpf_map_lookup_elem(&thread_pending, &tid);
	__u64 ssl;
	int first;

	if (!tp)
		return;
	ssl = tp->ssl;
	if (bpf_ktime_get_ns() - tp->ts_ns > QTAP_TLS_BIND_WINDOW_NS || tls_bound_sock(ssl)) {
		bpf_map_delete_elem(&thread_pending, &tid);
		return;
	}
	if (si->flags & (QTAP_SOCK_TLS_COVERED | QTAP_SOCK_UDP))
		return;
	/* A write's ciphertext is an application_data record (23); a handshake flight (22, or 20 before it)
	 * is another connection's start, never this write. */
	first = first_sent_byte(a);
	if (first != 23)
		return;
	bpf_map_delete_elem(&thread_pending, &tid);
	tls_bind(ssl, a->sk, si);
	count(QTAP_CNT_TLS_BOUND_BY_SEND, 1);
}

static __always_inline int account_io(struct qtap_io_args *ap, __u32 tid, long ret, __u8 role);

static __always_inline int exit_io(long nr, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct qtap_io_args *ap = bpf_map_lookup_elem(&inflight, &tid);
	struct qtap_io_args a;
	__u8 role = QTAP_ROLE_UNKNOWN;

	if (!ap)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&inflight, &tid);
	if (!a.sk) {
		/* Written by user space for a call already blocked when the agent attached: only valid for the
		 * syscall it was written for; the socket is resolved now (same thread, same files). */
		struct user_msghdr msg = {};

		if (a.nr != nr || skip_task(pid_tgid >> 32))
			return 0;
		a.sk = (__u64)fd_to_sock(a.fd);
		if (!a.sk)
			return 0;
		if (a.kind == QTAP_IO_PRE_MSG) {
			if (bpf_probe_read_user(&msg, sizeof(msg), (void *)a.buf) || !msg.msg_iovlen)
				return 0;
			a.buf = (__u64)msg.msg_iov;
			a.iovcnt = msg.msg_iovlen;
			a.kind = QTAP_IO_MSG;
		}
	}
	if (ret <= 0)
		return 0;
	/* TCP Fast Open: sendto(MSG_FASTOPEN) on an unconnected socket connects and sends in one call. */
	if (a.was_closed && a.dir == QTAP_DIR_SEND)
		role = QTAP_ROLE_CONNECT;
	return account_io(&a, tid, ret, role);
}

/* The bytes one call moved (ret > 0) on a resolved socket, from either path: the syscall exit, or the socket
 * tracepoints (see tp_sock_send_length). */
static __always_inline int account_io(struct qtap_io_args *ap, __u32 tid, long ret, __u8 role)
{
	struct qtap_io_args a = *ap;
	struct qtap_sock_info *si;
	struct qtap_tls_call *tc;
	__u64 off;

	si = sock_get_or_open((struct sock *)a.sk, role, a.fd);
	if (!si)
		return 0;
	if (a.kind == QTAP_IO_MMSG)
		return exit_mmsg(&a, si, ret);
	off = __sync_fetch_and_add(&si->off[a.dir & 1], ret);
	tc = bpf_map_lookup_elem(&tls_calls, &tid);
	if (!tc && a.dir == QTAP_DIR_SEND)
		bind_thread_pending(tid, &a, si);
	if (sock_muted(si, (struct sock *)a.sk))
		return 0;
	if (a.dir == QTAP_DIR_RECV)
		set_u64(&thread_socks, &tid, a.sk);

	if (si->flags & QTAP_SOCK_UDP) {
		/* recv(MSG_TRUNC) returns the datagram's length, which can be more than the buffer holds. */
		emit_data(si->conn_id, off, a.dir, QTAP_SRC_SYSCALL, a.fd, a.buf, a.iovcnt,
			  a.cap && a.cap < (__u64)ret ? a.cap : (__u64)ret);
		return 0;
	}
	/* Inside a TLS library call: this syscall names the socket of that call's connection, for certain. */
	if (tc) {
		tc->sk = a.sk;
		tls_bind(tc->ssl, a.sk, si);
		count(QTAP_CNT_TLS_MUTED_BYTES, ret);
		return 0;
	}
	if (a.kind == QTAP_IO_SENDFILE || a.kind == QTAP_IO_SPLICE || a.kind == QTAP_IO_DISCARD) {
		emit_unseen(si->conn_id, off, a.dir, a.fd, ret,
			    a.kind == QTAP_IO_SENDFILE ? QTAP_DATA_SENDFILE :
			    a.kind == QTAP_IO_SPLICE ? QTAP_DATA_SPLICE : QTAP_DATA_DISCARDED);
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
	return enter_io_flags(ctx->args[0], ctx->args[1], 0, QTAP_DIR_RECV, QTAP_IO_BUF, 0, ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_read")
int tp_exit_read(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int tp_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io_flags(ctx->args[0], ctx->args[1], 0, QTAP_DIR_RECV, QTAP_IO_BUF, ctx->args[3], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_readv")
int tp_enter_readv(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], ctx->args[2] ? ctx->args[2] : 1, QTAP_DIR_RECV, QTAP_IO_IOV);
}

SEC("tracepoint/syscalls/sys_exit_readv")
int tp_exit_readv(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

/* sendmsg/recvmsg: the iovec array and its length live in the user's msghdr. */
static __always_inline int enter_msg(int fd, __u64 umsg, __u8 dir, __u32 rflags)
{
	struct user_msghdr msg = {};

	if (rflags & MSG_PEEK)
		return 0;
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)umsg))
		return 0;
	if (!msg.msg_iovlen)
		return 0;
	return enter_io_flags(fd, (__u64)msg.msg_iov, msg.msg_iovlen, dir, QTAP_IO_MSG, rflags, 0);
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int tp_enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	return enter_msg(ctx->args[0], ctx->args[1], QTAP_DIR_RECV, ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int tp_exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_write")
int tp_enter_write(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], 0, QTAP_DIR_SEND, QTAP_IO_BUF);
}

SEC("tracepoint/syscalls/sys_exit_write")
int tp_exit_write(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int tp_enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], 0, QTAP_DIR_SEND, QTAP_IO_BUF);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int tp_exit_sendto(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int tp_enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], ctx->args[2] ? ctx->args[2] : 1, QTAP_DIR_SEND, QTAP_IO_IOV);
}

SEC("tracepoint/syscalls/sys_exit_writev")
int tp_exit_writev(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int tp_enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	return enter_msg(ctx->args[0], ctx->args[1], QTAP_DIR_SEND, 0);
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int tp_exit_sendmsg(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

/* The socket-tracepoint path (Linux >= 6.3), chosen at load instead of the sys_enter/sys_exit pairs above on
 * read/write/readv/writev/sendto/recvfrom/sendmsg/recvmsg (qtap_async/bpf/loader.py loads one set or the
 * other; the sendfile/splice/mmsg/connect/accept/close/socket programs below serve both).
 *
 * sock:sock_send_length and sock:sock_recv_length fire in sock_sendmsg_nosec/sock_recvmsg_nosec, in the
 * calling task, after the transfer, with its result: only for sockets, so a read or write on a file, a pipe or
 * a terminal runs no program at all, where the syscall pair ran two on every call. The buffer arguments are
 * not in the tracepoint: they are read from the task's saved user registers (the syscall's own arguments,
 * x86-64 ABI: di, si, dx, r10), and orig_ax says which syscall it was. Anything else reaching a socket send or
 * receive is left out:
 *  - kernel threads and io_uring workers (no user registers of their own: NFS, kTLS's workers, io-wq);
 *  - another syscall (sendfile, splice, sendmmsg/recvmmsg, io_uring_enter's inline sends): those have their
 *    own programs, which only count the bytes or walk the mmsghdr array;
 *  - a socket that is not the syscall's fd (a write to a file on NFS or a network block device sends on the
 *    kernel's socket from the writer's task): the fd in di must resolve to this very socket;
 *  - 32-bit (compat) syscalls, whose numbers differ (the syscall tracepoints do not report them either). */
#define QTAP_NR_READ 0
#define QTAP_NR_WRITE 1
#define QTAP_NR_READV 19
#define QTAP_NR_WRITEV 20
#define QTAP_NR_SENDTO 44
#define QTAP_NR_RECVFROM 45
#define QTAP_NR_SENDMSG 46
#define QTAP_NR_RECVMSG 47
#define QTAP_PF_IO_WORKER 0x00000010
#define QTAP_PF_KTHREAD 0x00200000
#define QTAP_TS_COMPAT 0x0002
#define QTAP_MSG_FASTOPEN 0x20000000

/* `flags` are the receive's flags (MSG_PEEK, MSG_TRUNC); a send's tracepoint passes 0, so a send's flags
 * (MSG_FASTOPEN) are taken from the syscall's arguments. */
static __always_inline int sock_length(struct sock *sk, int ret, int flags, __u8 dir)
{
	struct task_struct *task;
	struct pt_regs *regs;
	struct qtap_io_args a = {};
	struct user_msghdr msg = {};
	__u64 pid_tgid;
	__u16 family;
	__u8 role = QTAP_ROLE_UNKNOWN;
	long nr;

	if (ret <= 0)
		return 0;
	/* MSG_PEEK leaves the bytes queued: they come again on the real read (see enter_io_flags). */
	if (dir == QTAP_DIR_RECV && (flags & MSG_PEEK))
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0; /* AF_UNIX and netlink: the common case on a desktop or a container host, cheap to drop */
	pid_tgid = bpf_get_current_pid_tgid();
	if (skip_task(pid_tgid >> 32))
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & (QTAP_PF_KTHREAD | QTAP_PF_IO_WORKER))
		return 0;
	if (task->thread_info.status & QTAP_TS_COMPAT)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	nr = regs->orig_ax;
	a.fd = regs->di;
	a.dir = dir;
	switch (nr) {
	case QTAP_NR_READ:
	case QTAP_NR_RECVFROM:
		if (dir != QTAP_DIR_RECV)
			return 0;
		a.buf = regs->si;
		a.cap = regs->dx;
		a.kind = QTAP_IO_BUF;
		break;
	case QTAP_NR_WRITE:
	case QTAP_NR_SENDTO:
		if (dir != QTAP_DIR_SEND)
			return 0;
		a.buf = regs->si;
		a.kind = QTAP_IO_BUF;
		if (nr == QTAP_NR_SENDTO)
			flags = regs->r10;
		break;
	case QTAP_NR_READV:
	case QTAP_NR_WRITEV:
		if ((nr == QTAP_NR_READV) != (dir == QTAP_DIR_RECV))
			return 0;
		a.buf = regs->si;
		a.iovcnt = regs->dx ? (__u32)regs->dx : 1;
		a.kind = QTAP_IO_IOV;
		break;
	case QTAP_NR_RECVMSG:
	case QTAP_NR_SENDMSG:
		if ((nr == QTAP_NR_RECVMSG) != (dir == QTAP_DIR_RECV))
			return 0;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)regs->si) || !msg.msg_iovlen)
			return 0;
		a.buf = (__u64)msg.msg_iov;
		a.iovcnt = msg.msg_iovlen;
		a.kind = QTAP_IO_MSG;
		if (nr == QTAP_NR_SENDMSG)
			flags = regs->dx;
		break;
	default:
		return 0;
	}
	/* Also the TCP/UDP-DNS filter of the syscall path (file_to_sock). */
	if ((__u64)fd_to_sock(a.fd) != (__u64)sk)
		return 0;
	a.sk = (__u64)sk;
	if (dir == QTAP_DIR_RECV && (flags & MSG_TRUNC) && !sock_is_udp(sk))
		a.kind = QTAP_IO_DISCARD;
	/* TCP Fast Open: the send connected the socket (its SYN_SENT birth came first, inside this call). */
	if (dir == QTAP_DIR_SEND && (flags & QTAP_MSG_FASTOPEN) && !sock_is_udp(sk))
		role = QTAP_ROLE_CONNECT;
	return account_io(&a, (__u32)pid_tgid, ret, role);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tp_sock_send_length, struct sock *sk, int ret, int flags)
{
	return sock_length(sk, ret, flags, QTAP_DIR_SEND);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tp_sock_recv_length, struct sock *sk, int ret, int flags)
{
	return sock_length(sk, ret, flags, QTAP_DIR_RECV);
}

/* sendfile and splice move bytes the process never touches: only the count is reported (a gap in the
 * stream, with its reason), so offsets stay right and user space knows a body went by unseen. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int tp_enter_sendfile(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], 0, 0, QTAP_DIR_SEND, QTAP_IO_SENDFILE);
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int tp_exit_sendfile(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

/* splice(fd_in, off_in, fd_out, off_out, len, flags): a socket on either side (sending wins if both). */
SEC("tracepoint/syscalls/sys_enter_splice")
int tp_enter_splice(struct trace_event_raw_sys_enter *ctx)
{
	int fd_in = ctx->args[0], fd_out = ctx->args[2];

	if (fd_to_sock(fd_out))
		return enter_io(fd_out, 0, 0, QTAP_DIR_SEND, QTAP_IO_SPLICE);
	return enter_io(fd_in, 0, 0, QTAP_DIR_RECV, QTAP_IO_SPLICE);
}

SEC("tracepoint/syscalls/sys_exit_splice")
int tp_exit_splice(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

/* sendmmsg/recvmmsg(fd, struct mmsghdr *vec, vlen, flags): glibc's resolver sends its A and AAAA queries
 * with one sendmmsg. The return value is the number of messages; each msg_len says its bytes. */
SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int tp_enter_sendmmsg(struct trace_event_raw_sys_enter *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], ctx->args[2], QTAP_DIR_SEND, QTAP_IO_MMSG);
}

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int tp_exit_sendmmsg(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_recvmmsg")
int tp_enter_recvmmsg(struct trace_event_raw_sys_enter *ctx)
{
	/* MSG_PEEK only: MSG_TRUNC on a TCP recvmmsg is not worth a path of its own (counted as data). */
	return enter_io_flags(ctx->args[0], ctx->args[1], ctx->args[2], QTAP_DIR_RECV, QTAP_IO_MMSG,
			      ctx->args[3] & MSG_PEEK, 0);
}

SEC("tracepoint/syscalls/sys_exit_recvmmsg")
int tp_exit_recvmmsg(struct trace_event_raw_sys_exit *ctx)
{
	return exit_io(ctx->id, ctx->ret);
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

/* UDP (DNS) sockets have no TCP_CLOSE: close(2) of a tracked one ends it (after a process exit without
 * close, the sweep finds the socket released, or a new socket on its memory retires it). */
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
	end_conn(key, QTAP_CLOSE_SEEN);
	return 0;
}

/* A new socket: whatever entry is left under its address belongs to a socket that was freed (a UDP socket
 * of a process that exited without close(2), or a destroy the agent did not see). */
SEC("tracepoint/syscalls/sys_exit_socket")
int tp_exit_socket(struct trace_event_raw_sys_exit *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds;
	struct file *f = NULL;
	struct socket *sock;
	__u64 key;
	int fd = ctx->ret;

	if (fd < 0)
		return 0;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (!fds || bpf_core_read(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return 0;
	key = (__u64)BPF_CORE_READ(sock, sk);
	retire(key);
	return 0;
}

/* The sweep: a safety net under the hooks, so that no connection stays open for good without a word. Once a
 * second at most (driven by TCP_CLOSE transitions, which every connection makes), every entry is looked at:
 *  - closes the full ring buffer refused (pending_closes) are sent now;
 *  - a socket released by every holder (SOCK_DEAD: no process can reach it, its bytes are final) is ended
 *    when the previous sweep already found it so: tcp_destroy_sock then comes after TCP's teardown, which
 *    takes minutes when the last packets are lost, or never came (a freed socket);
 *  - memory that is no TCP/UDP socket any more (the slab page went to other use) is ended too.
 * Every entry it ends is counted (QTAP_CNT_SWEPT_SOCKS) and its close says why (QTAP_CLOSE_SWEPT when no
 * hook saw the end: the socket was freed). A pass visits every bucket of the table (65536), once a second at
 * most, whatever the traffic. */
#define QTAP_SWEEP_INTERVAL_NS 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sweep_at SEC(".maps");

static long sweep_one(struct bpf_map *map, __u64 *key, struct qtap_sock_info *si, void *ctx)
{
	struct sock *sk = (struct sock *)*key;
	unsigned long sk_flags = 0;
	__u16 family = 0;
	__u8 state = 0;
	bool gone, missed;

	if (si->flags & QTAP_SOCK_ENDED) {
		end_conn(*key, QTAP_CLOSE_SEEN); /* only deletes it */
		return 0;
	}
	bpf_core_read(&sk_flags, sizeof(sk_flags), &sk->__sk_common.skc_flags);
	bpf_core_read(&family, sizeof(family), &sk->__sk_common.skc_family);
	bpf_core_read(&state, sizeof(state), &sk->__sk_common.skc_state);
	gone = (family != AF_INET && family != AF_INET6) || state == 0 || state >= QTAP_TCP_MAX_STATES;
	if (!gone && !(sk_flags & (1UL << SOCK_DEAD))) {
		/* Alive and held (again: the memory may be a new socket's whose birth was not seen). */
		if (si->flags & QTAP_SOCK_SWEEP_DEAD)
			__sync_fetch_and_and(&si->flags, ~QTAP_SOCK_SWEEP_DEAD);
		return 0;
	}
	if (!(si->flags & QTAP_SOCK_SWEEP_DEAD)) {
		/* Give tcp_destroy_sock one interval: it may be running right now on another CPU. */
		__sync_fetch_and_or(&si->flags, QTAP_SOCK_SWEEP_DEAD);
		return 0;
	}
	/* Released and in TCP_CLOSE for a whole interval: destroy follows TCP_CLOSE at once, so it was missed.
	 * Released in another state: TCP's teardown is still going on (its bytes are final all the same). */
	missed = gone || (state == QTAP_TCP_CLOSE && !(si->flags & QTAP_SOCK_UDP));
	if (end_conn(*key, missed ? QTAP_CLOSE_SWEPT : QTAP_CLOSE_SEEN))
		count(QTAP_CNT_SWEPT_SOCKS, 1);
	return 0;
}

/* A close the full ring refused, sent now; the walk stops while the ring is still full. */
static long resend_one(struct bpf_map *map, __u64 *conn_id, struct qtap_conn_close *ev, void *ctx)
{
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), rb_flags(sizeof(*ev))))
		return 1;
	bpf_map_delete_elem(&pending_closes, conn_id);
	count(QTAP_CNT_RECORDS, 1);
	return 0;
}

static __always_inline void maybe_sweep(void)
{
	__u32 zero = 0;
	__u64 *at = bpf_map_lookup_elem(&sweep_at, &zero);
	__u64 now = bpf_ktime_get_ns(), last;

	if (!at)
		return;
	last = *at;
	if (now - last < QTAP_SWEEP_INTERVAL_NS)
		return;
	/* One CPU sweeps; the others see the new time. */
	if (__sync_val_compare_and_swap(at, last, now) != last)
		return;
	bpf_for_each_map_elem(&pending_closes, resend_one, NULL, 0);
	bpf_for_each_map_elem(&socks, sweep_one, NULL, 0);
}

/* Births and the release of the agent's own ports. A TCP socket is born when it starts connecting
 * (SYN_SENT) or, for an accepted connection, when the child socket is created (LISTEN -> SYN_RECV): an entry
 * found then is a previous connection's on the same memory, which is retired first.
 *
 * This and tcp_destroy_sock are tp_btf programs, not classic tracepoints, on purpose: both fire in softirq
 * (the peer's final ACK or FIN), which can interrupt one of the syscall programs on the same CPU. The kernel
 * skips a classic tracepoint or kprobe program while any such program runs on that CPU (one per-CPU guard
 * for all of them), so under load closes were lost without a trace; a tp_btf program is only skipped while
 * that same program runs there. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tp_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	__u16 *self_port;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == QTAP_TCP_SYN_SENT || (newstate == QTAP_TCP_SYN_RECV && oldstate == QTAP_TCP_LISTEN)) {
		retire(key);
		return 0;
	}
	if (newstate != QTAP_TCP_CLOSE)
		return 0;
	maybe_sweep();
	self_port = bpf_map_lookup_elem(&self_socks, &key);
	if (self_port) {
		__u16 port = *self_port;
		bpf_map_delete_elem(&self_ports, &port);
		bpf_map_delete_elem(&self_socks, &key);
	}
	return 0;
}

/* The end of a TCP connection: closed on the wire and released by every holder of the socket. A socket that
 * reached TCP_CLOSE while a process still held it (the peer's RST, a half-closed connection the peer
 * finished) ends here, at the last close(2) or the process's exit, so the bytes read after TCP_CLOSE are
 * still counted on it. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tp_tcp_destroy_sock, struct sock *sk)
{
	end_conn((__u64)sk, QTAP_CLOSE_SEEN);
	return 0;
}

/* io_uring requests on sockets: the bytes are counted and reported (payload not captured), and connections
 * accepted or made through io_uring are announced. Completions run in the submitting task or its io-wq
 * workers (same process). Opcodes from include/uapi/linux/io_uring.h. */
#define IORING_OP_READV 1
#define IORING_OP_WRITEV 2
#define IORING_OP_READ_FIXED 4
#define IORING_OP_WRITE_FIXED 5
#define IORING_OP_SENDMSG 9
#define IORING_OP_RECVMSG 10
#define IORING_OP_ACCEPT 13
#define IORING_OP_CONNECT 16
#define IORING_OP_READ 22
#define IORING_OP_WRITE 23
#define IORING_OP_SEND 26
#define IORING_OP_RECV 27
#define IORING_OP_SEND_ZC 47
#define IORING_OP_SENDMSG_ZC 48

SEC("tracepoint/io_uring/io_uring_complete")
int tp_io_uring_complete(struct trace_event_raw_io_uring_complete *ctx)
{
	struct io_kiocb *req = ctx->req;
	struct qtap_sock_info *si;
	struct sock *sk;
	__u8 op, dir;
	__u64 off;
	int res = ctx->res;

	if (res < 0 || skip_task(bpf_get_current_pid_tgid() >> 32))
		return 0;
	op = BPF_CORE_READ(req, opcode);
	switch (op) {
	case IORING_OP_ACCEPT:
		sk = fd_to_sock(res);
		if (sk)
			sock_get_or_open(sk, QTAP_ROLE_ACCEPT, res);
		return 0;
	case IORING_OP_CONNECT:
		sk = file_to_sock(BPF_CORE_READ(req, file));
		if (sk && res == 0)
			sock_get_or_open(sk, QTAP_ROLE_CONNECT, -1);
		return 0;
	case IORING_OP_WRITEV:
	case IORING_OP_WRITE_FIXED:
	case IORING_OP_SENDMSG:
	case IORING_OP_WRITE:
	case IORING_OP_SEND:
	case IORING_OP_SEND_ZC:
	case IORING_OP_SENDMSG_ZC:
		dir = QTAP_DIR_SEND;
		break;
	case IORING_OP_READV:
	case IORING_OP_READ_FIXED:
	case IORING_OP_RECVMSG:
	case IORING_OP_READ:
	case IORING_OP_RECV:
		dir = QTAP_DIR_RECV;
		break;
	default:
		return 0;
	}
	if (res == 0)
		return 0;
	sk = file_to_sock(BPF_CORE_READ(req, file));
	if (!sk)
		return 0;
	si = sock_get_or_open(sk, QTAP_ROLE_UNKNOWN, -1);
	if (!si)
		return 0;
	off = __sync_fetch_and_add(&si->off[dir], res);
	count(QTAP_CNT_IO_URING_BYTES, res);
	if (sock_muted(si, sk))
		return 0;
	emit_unseen(si->conn_id, off, dir, -1, res, QTAP_DATA_IO_URING);
	return 0;
}
