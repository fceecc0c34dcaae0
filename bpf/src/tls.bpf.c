// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tls.bpf.c - plaintext of TLS libraries, from uprobes placed by user space where the kernel emulates the
 * probed instruction (see shared/PROBES.md and qtap_async/tls/probe_points.py).
 *
 * C libraries (OpenSSL, BoringSSL, GnuTLS): the entry site sees (ssl, buf, num[, &processed]) in
 * rdi/rsi/rdx/rcx, the return site sees the result in rax. The read/write syscall the library makes
 * in between names the socket (socket.bpf.c fills tls_calls[tid].sk): no per-version struct offsets.
 * Buffered SSL_read results without a syscall use the ssl -> socket binding (tls_socks). Stacks that do
 * their socket I/O outside the plaintext calls bind an object on its first read (the thread's last
 * receive) or its first write (the thread's next send: see hold_write).
 *
 * Go crypto/tls: goroutines move between threads while blocked, so state is keyed by the goroutine (g in
 * r14), and the socket comes from walking *tls.Conn to its fd with offsets user space read from DWARF (or a
 * per-version table); they arrive in the attach cookie. Never uretprobes on Go: RET sites are plain uprobes.
 *
 * Attach cookie of the C-library programs: bits 0-7 source (enum qtap_source), bit 8 direction,
 * bit 9 "length is *processed (SSL_*_ex contract)", then 4-bit argument register indexes (0 rdi, 1 rsi,
 * 2 rdx, 3 rcx, 4 r8, 5 r9) of the connection object (bits 12-15), the buffer (16-19) and the byte-count
 * pointer (20-23): the probe site may be a call to an internal function with its own argument order.
 * Attach cookie of the Go programs: four 16-bit offsets (see go_conn_fd()).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define COOKIE_DIR_SHIFT 8
#define COOKIE_LEN_PTR (1 << 9)
/* The connection object is the word the object register points to (rustls' Reader holds a pointer into its
 * connection; the Reader itself is a temporary on the stack, no identity). */
#define COOKIE_OBJ_DEREF (1 << 10)

struct go_call {
	__u64 buf;
	__u64 sk;
};

/* Go Read calls in flight, keyed by (tgid << 32) ^ g pointer. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u64);
	__type(value, struct go_call);
} go_calls SEC(".maps");

static __always_inline __u64 arg_reg(struct pt_regs *ctx, __u32 idx)
{
	/* Fixed-offset context reads into a stack array: the verifier refuses a computed context offset. */
	__u64 regs[8] = {ctx->di, ctx->si, ctx->dx, ctx->cx, ctx->r8, ctx->r9, 0, 0};

	return regs[idx & 7];
}

static __always_inline void count_unassociated(void)
{
	count(QTAP_CNT_TLS_UNASSOCIATED, 1);
}

/* Plaintext of one call on socket `sk`: offsets continue the socket's plaintext stream. */
static __always_inline void emit_plaintext(__u64 sk, __u8 dir, __u8 source, __u64 buf, __u64 len)
{
	struct qtap_sock_info *si = bpf_map_lookup_elem(&socks, &sk);
	__u64 off;

	if (!si) {
		count_unassociated();
		return;
	}
	if (sock_muted(si, (struct sock *)sk))
		return;
	if (!(si->flags & QTAP_SOCK_TLS_COVERED))
		si->flags |= QTAP_SOCK_TLS_COVERED;
	off = __sync_fetch_and_add(&si->tls_off[dir & 1], len);
	emit_data(si->conn_id, off, dir, source, -1, buf, 0, len);
}

SEC("uprobe")
int BPF_KPROBE(uprobe_tls_entry)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct qtap_tls_call c = {};

	if (skip_task(pid_tgid >> 32))
		return 0;
	c.ssl = arg_reg(ctx, cookie >> 12);
	c.buf = arg_reg(ctx, cookie >> 16);
	c.len_ptr = (cookie & COOKIE_LEN_PTR) ? arg_reg(ctx, cookie >> 20) : 0;
	c.dir = (cookie >> COOKIE_DIR_SHIFT) & 1;
	c.source = cookie & 0xff;
	/* After every register read: the verifier refuses context pointers the compiler keeps across a call. */
	if ((cookie & COOKIE_OBJ_DEREF) && bpf_probe_read_user(&c.ssl, sizeof(c.ssl), (void *)c.ssl))
		return 0;
	bpf_map_update_elem(&tls_calls, &tid, &c, BPF_ANY);
	return 0;
}

/* A write of an object bound to no socket, with no socket I/O inside it: BIO-pair stacks (gRPC's BoringSSL,
 * rustls, Node.js) send its ciphertext after the call returns, so its socket is not known yet, and the
 * socket this thread used last may be another connection's. The plaintext goes up unbound (conn_id: the
 * object), and the thread's next send binds the object (socket.bpf.c: bind_thread_pending); user space holds
 * it until the tls_bind record names the connection, or drops it, counted, when none comes. */
static __always_inline void hold_write(__u32 tid, __u64 ssl, __u8 source, __u64 buf, __u64 len)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct qtap_tls_pending *p = bpf_map_lookup_elem(&tls_pending, &ssl);
	struct qtap_thread_pending tp = {.ssl = ssl};
	__u64 now = bpf_ktime_get_ns(), off;
	__u32 gen;

	if (!p || p->tgid != tgid || now - p->last_ns > QTAP_TLS_PENDING_TTL_NS) {
		struct qtap_tls_pending np = {.tgid = tgid, .gen = bpf_get_prandom_u32()};

		bpf_map_update_elem(&tls_pending, &ssl, &np, BPF_ANY);
		p = bpf_map_lookup_elem(&tls_pending, &ssl);
		if (!p) {
			count_unassociated();
			return;
		}
	}
	off = __sync_fetch_and_add(&p->bytes, len);
	p->last_ns = now;
	gen = p->gen;
	tp.ts_ns = now;
	bpf_map_update_elem(&thread_pending, &tid, &tp, BPF_ANY);
	if (off + len > QTAP_TLS_PENDING_MAX_BYTES) {
		/* Its offsets still advance: the bytes show as a gap of that connection once it is bound. */
		count_unassociated();
		return;
	}
	count(QTAP_CNT_TLS_HELD, 1);
	emit_data_flags(ssl, off, QTAP_DIR_SEND, source, (int)gen, buf, 0, len, QTAP_DATA_UNBOUND);
}

/* The return half of a C-library or rustls call: `ok` says the call succeeded, `len` is its byte count
 * unless the entry saved a pointer to it. */
static __always_inline int finish_tls_call(__u32 tid, bool ok, __u64 len)
{
	struct qtap_tls_call *cp = bpf_map_lookup_elem(&tls_calls, &tid);
	struct qtap_sock_info *si;
	struct qtap_tls_call c;
	__u64 sk, *last;

	if (!cp)
		return 0;
	c = *cp;
	bpf_map_delete_elem(&tls_calls, &tid);
	if (!ok)
		return 0;
	if (c.len_ptr) {
		if (bpf_probe_read_user(&len, sizeof(len), (void *)c.len_ptr))
			return 0;
	}
	if (!len)
		return 0;
	/* A syscall inside the call named the socket (and bound the object: socket.bpf.c). */
	sk = c.sk;
	if (!sk)
		sk = tls_bound_sock(c.ssl);
	if (!sk) {
		if (c.dir == QTAP_DIR_SEND) {
			hold_write(tid, c.ssl, c.source, c.buf, len);
			return 0;
		}
		/* A read of an unbound object: its ciphertext came in on the socket this thread received on
		 * last (Node.js, gRPC and rustls read the socket right before the plaintext call). */
		last = bpf_map_lookup_elem(&thread_socks, &tid);
		if (!last) {
			count_unassociated();
			return 0;
		}
		sk = *last;
		si = bpf_map_lookup_elem(&socks, &sk);
		if (!si) {
			count_unassociated();
			return 0;
		}
		count(QTAP_CNT_TLS_BY_THREAD, 1);
		tls_bind(c.ssl, sk, si);
	}
	emit_plaintext(sk, c.dir, c.source, c.buf, len);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(uprobe_tls_return)
{
	long ret = PT_REGS_RC(ctx);

	return finish_tls_call((__u32)bpf_get_current_pid_tgid(), (int)ret > 0, (__u32)ret);
}

/* rustls returns io::Result<usize> in rax:rdx: rax 0 = Ok, rdx the byte count. */
SEC("uprobe")
int BPF_KPROBE(uprobe_rust_return)
{
	return finish_tls_call((__u32)bpf_get_current_pid_tgid(), ctx->ax == 0, ctx->dx);
}

/* *tls.Conn -> fd: conn.conn (net.Conn interface) data word -> *net.TCPConn -> .fd (*netFD) -> .pfd.Sysfd.
 * Cookie: bits 0-15 interface data offset in tls.Conn, 16-31 fd offset in TCPConn, 32-47 pfd offset in
 * netFD, 48-63 Sysfd offset in poll.FD. */
static __always_inline int go_conn_fd(__u64 conn, __u64 cookie)
{
	__u64 tcpconn = 0, netfd = 0;
	__s64 fd = -1;

	if (bpf_probe_read_user(&tcpconn, sizeof(tcpconn), (void *)(conn + (cookie & 0xffff))) || !tcpconn)
		return -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(tcpconn + ((cookie >> 16) & 0xffff))) || !netfd)
		return -1;
	if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + ((cookie >> 32) & 0xffff) + (cookie >> 48))))
		return -1;
	return (int)fd;
}

static __always_inline __u64 go_sock(__u64 conn, __u64 cookie)
{
	int fd = go_conn_fd(conn, cookie);
	struct sock *sk;
	struct qtap_sock_info *si;

	if (fd < 0)
		return 0;
	sk = fd_to_sock(fd);
	if (!sk)
		return 0;
	si = sock_get_or_open(sk, QTAP_ROLE_UNKNOWN, fd);
	if (!si)
		return 0;
	return (__u64)sk;
}

/* func (c *Conn) Write(b []byte) (int, error): rax = c, rbx = b.ptr, rcx = b.len. */
SEC("uprobe")
int BPF_KPROBE(uprobe_go_write_entry)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 sk;
	__u64 len = ctx->cx;

	if (skip_task(pid_tgid >> 32) || !len)
		return 0;
	sk = go_sock(ctx->ax, bpf_get_attach_cookie(ctx));
	if (!sk) {
		count_unassociated();
		return 0;
	}
	emit_plaintext(sk, QTAP_DIR_SEND, QTAP_SRC_GOTLS, ctx->bx, len);
	return 0;
}

/* func (c *Conn) Read(b []byte) (int, error): entry saves the buffer per goroutine (r14 = g). */
SEC("uprobe")
int BPF_KPROBE(uprobe_go_read_entry)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_call gc = {};
	__u64 key;

	if (skip_task(pid_tgid >> 32))
		return 0;
	gc.sk = go_sock(ctx->ax, bpf_get_attach_cookie(ctx));
	if (!gc.sk) {
		count_unassociated();
		return 0;
	}
	gc.buf = ctx->bx;
	key = (pid_tgid & 0xffffffff00000000ULL) ^ ctx->r14;
	bpf_map_update_elem(&go_calls, &key, &gc, BPF_ANY);
	return 0;
}

/* At each RET of Read: rax = n. */
SEC("uprobe")
int BPF_KPROBE(uprobe_go_read_ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) ^ ctx->r14;
	struct go_call *gp = bpf_map_lookup_elem(&go_calls, &key);
	struct go_call gc;
	long n = ctx->ax;

	if (!gp)
		return 0;
	gc = *gp;
	bpf_map_delete_elem(&go_calls, &key);
	if (n <= 0)
		return 0;
	emit_plaintext(gc.sk, QTAP_DIR_RECV, QTAP_SRC_GOTLS, gc.buf, n);
	return 0;
}

/* -- held exec (opt-in) ------------------------------------------------------------------------------
 * A uprobe placed after a process started misses what it did before: a short-lived Go or static OpenSSL
 * client speaks within milliseconds of exec. For a file user space has never analysed, stop the process
 * right here, before its first user instruction (the signal is taken on the way back to user mode), and
 * let user space attach, then SIGCONT it. Files already analysed (every TLS and non-TLS executable seen,
 * kept across restarts in the analysis cache) are in known_files and run untouched. The tracepoint link
 * belongs to the agent's process, so an agent that dies holds nothing new; its watchdog continues those
 * already held. */
#define SIGSTOP_NR 19

/* Hold only processes whose parent is this tgid (0: any but the agent's own children). Lets tests use the
 * mode on a shared machine, on clients they start from the agent's own process. */
const volatile __u32 hold_parent_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, QTAP_MAX_KNOWN_FILES);
	__type(key, struct qtap_file_key);
	__type(value, __u8);
} known_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} held_execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct qtap_hold_ctl);
} hold_ctl SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tp_btf_hold_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct qtap_file_key key = {};
	struct qtap_hold_ctl *ctl;
	struct qtap_exec_hold *rec;
	__u32 zero = 0, parent;
	__u64 now;
	dev_t dev;

	if (skip_task(pid_tgid >> 32))
		return 0;
	parent = BPF_CORE_READ(p, real_parent, tgid);
	/* The agent waits for some of its helpers (a TLS library scan's subprocess, a Java attach): one held
	 * here would wait for the agent that waits for it. */
	if (hold_parent_tgid ? parent != hold_parent_tgid : parent == self_tgid)
		return 0;
	ctl = bpf_map_lookup_elem(&hold_ctl, &zero);
	now = bpf_ktime_get_ns();
	/* No heartbeat (never enabled, or the agent stopped refreshing it): hold nothing. */
	if (!ctl || !ctl->heartbeat_ns || now - ctl->heartbeat_ns > ctl->max_age_ns)
		return 0;
	dev = BPF_CORE_READ(bprm, file, f_inode, i_sb, s_dev);
	key.dev = dev;
	key.ino = BPF_CORE_READ(bprm, file, f_inode, i_ino);
	if (bpf_map_lookup_elem(&known_files, &key))
		return 0;
	rec = bpf_ringbuf_reserve(&held_execs, sizeof(*rec), 0);
	if (!rec)
		return 0; /* user space cannot hear of it: better not stop it */
	rec->ts_ns = now;
	rec->dev = key.dev;
	rec->ino = key.ino;
	rec->pid = pid_tgid >> 32;
	rec->_pad = 0;
	if (bpf_send_signal(SIGSTOP_NR)) {
		bpf_ringbuf_discard(rec, 0);
		return 0;
	}
	bpf_ringbuf_submit(rec, BPF_RB_FORCE_WAKEUP);
	return 0;
}
