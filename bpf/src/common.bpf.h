/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Helpers shared by the socket and TLS programs: settings, counters, fd -> TCP socket resolution,
 * the socket table and the chunked payload emitter.
 */
#ifndef __QTAP_COMMON_BPF_H
#define __QTAP_COMMON_BPF_H

#include "maps.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOCK_DGRAM 2
#define DNS_PORT 53
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115
#define ENOENT 2
#define MSG_PEEK 0x2
#define MSG_TRUNC 0x20

/* Settings, written by the loader before load (BpfObject.set_rodata). */
const volatile __u32 self_tgid = 0;      /* the agent itself: never traced (no feedback loop) */
const volatile __u32 target_tgid = 0;    /* when non-zero, trace only this process */
const volatile __u32 max_chunks = QTAP_MAX_CHUNKS;
const volatile __u32 capture_payload = 1;
const volatile __u32 tls_hello_bytes = QTAP_TLS_HELLO_BYTES;
const volatile __u64 conn_id_base = 0;   /* random per agent run, so ids do not repeat across runs */
/* Wake the consumer only once this many bytes wait in the ring buffer: a wakeup per record costs more
 * than the rest of the hook on these machines. User space also drains on a short timer, which bounds
 * the delay of a trickle of records. 0: wake on every record. */
const volatile __u64 wakeup_bytes = 64 * 1024;

/* Hash map updates cost several times a lookup: write only when the value changes (these run on every
 * socket syscall and every TLS call). */
static __always_inline void set_u64(void *map, const void *key, __u64 value)
{
	__u64 *cur = bpf_map_lookup_elem(map, key);

	if (cur && *cur == value)
		return;
	bpf_map_update_elem(map, key, &value, BPF_ANY);
}

/* Wake the consumer each time the bytes waiting pass a multiple of wakeup_bytes: once as a batch fills,
 * then once per wakeup_bytes more while the consumer lags. Waking for every record while at least
 * wakeup_bytes waited (the rule before) raised an irq_work, a self-IPI, in the traced program's call for
 * every record once the consumer fell behind (a saturated server, or the agent at --cpu-priority low):
 * in a VM each is an exit, and it was a third of nginx's CPU there. A crossing two CPUs race past is
 * caught at the next multiple, or by the consumer's timer. `size`: the record's, before the ring's
 * 8-byte header. */
static __always_inline __u64 rb_flags(__u64 size)
{
	__u64 before;

	if (!wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	before = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (before / wakeup_bytes != (before + size + 8) / wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += n; /* per-CPU slot: no atomics needed */
}

static __always_inline bool skip_task(__u32 tgid)
{
	if (tgid == self_tgid)
		return true;
	if (target_tgid && tgid != target_tgid)
		return true;
	return false;
}

static __always_inline void fill_hdr(struct qtap_hdr *h, __u16 type, __u64 conn_id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->type = type;
	h->abi = QTAP_ABI_VERSION;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = bpf_ktime_get_ns();
	h->conn_id = conn_id;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
}

/* An open file -> its struct sock, for TCP over IPv4/IPv6 and for UDP sockets on port 53 (DNS, either end);
 * NULL otherwise. */
static __always_inline struct sock *file_to_sock(struct file *f)
{
	struct socket *sock;
	struct sock *sk;
	umode_t mode;
	__u16 family, type, proto;

	if (!f)
		return NULL;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return NULL;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	type = BPF_CORE_READ(sk, sk_type);
	proto = BPF_CORE_READ(sk, sk_protocol);
	if (type == SOCK_STREAM && proto == IPPROTO_TCP)
		return sk;
	if (type == SOCK_DGRAM && proto == IPPROTO_UDP &&
	    (BPF_CORE_READ(sk, __sk_common.skc_dport) == bpf_htons(DNS_PORT) ||
	     BPF_CORE_READ(sk, __sk_common.skc_num) == DNS_PORT))
		return sk;
	return NULL;
}

/* fd of the current task -> its struct sock (see file_to_sock). Walks task->files->fdt->fd[fd] so sockets
 * opened before the agent started resolve too. */
static __always_inline struct sock *fd_to_sock(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt;
	struct file **fds;
	struct file *f = NULL;
	unsigned int max_fds;

	if (fd < 0)
		return NULL;
	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return NULL;
	max_fds = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned int)fd >= max_fds)
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_core_read(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	return file_to_sock(f);
}

static __always_inline __u8 sock_state(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_state);
}

static __always_inline bool sock_is_udp(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_UDP;
}

static __always_inline void emit_conn_open(struct sock *sk, __u64 conn_id, __u8 role, __u8 flags, int fd)
{
	struct qtap_conn_open ev = {};
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	fill_hdr(&ev.h, QTAP_REC_CONN_OPEN, conn_id);
	ev.cgroup_id = bpf_get_current_cgroup_id();
	ev.family = family;
	ev.role = role;
	ev.flags = flags;
	ev.fd = fd;
	ev.uid = (__u32)bpf_get_current_uid_gid();
	ev.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO(&ev.laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&ev.raddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&ev.laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&ev.raddr, sk, __sk_common.skc_v6_daddr);
	}
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags(sizeof(ev))))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
}

/* Is `sk` the far end of one of the agent's own connections (same host)? */
static __always_inline bool peer_is_agent(struct sock *sk)
{
	__u16 rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__u32 daddr, saddr;

	if (!bpf_map_lookup_elem(&self_ports, &rport))
		return false;
	if (BPF_CORE_READ(sk, __sk_common.skc_family) != AF_INET)
		return true; /* IPv6: the port match alone (loopback ::1 or a local address) */
	daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	saddr = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
	/* Same host: loopback (127/8, network order first byte) or talking to its own address. */
	return (daddr & 0xff) == 127 || daddr == saddr;
}

/* A server can accept the agent's connection before the agent's connect() has returned (loopback does the
 * handshake inside the call), so the check at open can miss; by the time data flows connect() has
 * returned, so it is made once more then. The far end of an agent connection is muted for good. */
static __always_inline bool sock_muted(struct qtap_sock_info *si, struct sock *sk)
{
	if (!(si->flags & QTAP_SOCK_PEER_CHECKED)) {
		if (peer_is_agent(sk))
			si->flags |= QTAP_SOCK_MUTED;
		si->flags |= QTAP_SOCK_PEER_CHECKED;
	}
	return si->flags & QTAP_SOCK_MUTED;
}

/* End the connection of table entry `key` with one conn_close record, exactly once: whoever ends it first
 * (tcp_destroy_sock, a birth on the same memory, the sweep) deletes the entry, and a delete that finds it
 * gone means another CPU has ended it. A close the full ring buffer refuses is kept in pending_closes for
 * the sweep to send (it used to be lost with the record); only a full pending table drops it, counted.
 * The table can refuse a delete for another reason than a missing key (its bucket lock busy): then the
 * close is sent all the same and the entry marked ended, to be deleted by whoever meets it next.
 * Returns whether this call ended it. */
static __always_inline bool end_conn(__u64 key, __u32 reason)
{
	struct qtap_sock_info *si = bpf_map_lookup_elem(&socks, &key);
	struct qtap_conn_close ev = {};

	long err;

	if (!si)
		return false;
	if (si->flags & QTAP_SOCK_ENDED) {
		bpf_map_delete_elem(&socks, &key);
		return false;
	}
	fill_hdr(&ev.h, QTAP_REC_CONN_CLOSE, si->conn_id);
	/* This may run in softirq context: the pid is the connection's, not the current task's. */
	ev.h.pid = si->pid;
	ev.h.tid = 0;
	ev.bytes_sent = si->off[QTAP_DIR_SEND];
	ev.bytes_received = si->off[QTAP_DIR_RECV];
	ev.open_ts_ns = si->open_ts_ns;
	ev.reason = reason;
	err = bpf_map_delete_elem(&socks, &key);
	if (err == -ENOENT)
		return false;
	if (err) {
		count(QTAP_CNT_DELETE_BUSY, 1);
		if (__sync_fetch_and_or(&si->flags, QTAP_SOCK_ENDED) & QTAP_SOCK_ENDED)
			return false; /* another CPU got here first */
	}
	if (!bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags(sizeof(ev))))
		count(QTAP_CNT_RECORDS, 1);
	else if (!bpf_map_update_elem(&pending_closes, &ev.h.conn_id, &ev, BPF_NOEXIST))
		count(QTAP_CNT_CLOSE_DEFERRED, 1);
	else
		count(QTAP_CNT_DROP_RINGBUF, 1);
	return true;
}

/* A socket is born on memory whose entry is still in the table: a previous connection's, whose end no hook
 * saw. */
static __always_inline void retire(__u64 key)
{
	struct qtap_sock_info *si = bpf_map_lookup_elem(&socks, &key);

	if (si && !(si->flags & QTAP_SOCK_ENDED) && end_conn(key, QTAP_CLOSE_STALE))
		count(QTAP_CNT_STALE_SOCKS, 1);
	else if (si)
		end_conn(key, QTAP_CLOSE_STALE); /* an ended entry: only deleted */
}

/* The socket's table entry, created (and announced with a conn_open record) on first sight.
 *
 * Identity: the table is keyed by the struct sock address, which the kernel reuses once a socket is freed.
 * An entry lives from the socket's birth (connect/accept, or first sight) to tcp_destroy_sock, the one
 * point after which no syscall can reach that socket any more; a birth (SYN_SENT, or SYN_RECV of an
 * accepted child) that finds an entry retires it (see socket.bpf.c). A socket already in TCP_CLOSE never
 * gets an entry: a call on it (a close_notify write meeting the peer's RST, a refused connect) belongs to
 * a connection that is over, and an entry made from it would be merged into whatever connection reuses
 * that memory next.
 *
 * A `role` other than unknown means connect()/accept() (or a TCP Fast Open sendto) just made this
 * connection, so an entry found is a previous connection's on the same memory. Its birth transition
 * normally retires it, but the kernel skips a tracing program already running on the CPU (a softirq's
 * transition inside a syscall's), and a new connection merged into the old entry would have neither an
 * open nor a close of its own. One exception: connect() again on a socket whose non-blocking connect
 * completed returns 0 (some event loops confirm a connection that way); same ports, same connection. */
static __always_inline struct qtap_sock_info *sock_get_or_open(struct sock *sk, __u8 role, int fd)
{
	__u64 key = (__u64)sk;
	struct qtap_sock_info *si = bpf_map_lookup_elem(&socks, &key);
	struct qtap_sock_info fresh = {};
	__u32 zero = 0;
	__u64 *next_id;
	__u8 flags = 0;

	if (si && !(si->flags & QTAP_SOCK_ENDED) && (role == QTAP_ROLE_UNKNOWN ||
	     (role == QTAP_ROLE_CONNECT && si->portpair == BPF_CORE_READ(sk, __sk_common.skc_portpair))))
		return si;
	if (si)
		retire(key);
	if (!sock_is_udp(sk) && sock_state(sk) == QTAP_TCP_CLOSE) {
		count(QTAP_CNT_CLOSED_SOCK_IO, 1);
		return NULL;
	}
	if (peer_is_agent(sk))
		return NULL;
	next_id = bpf_map_lookup_elem(&conn_ids, &zero);
	if (!next_id)
		return NULL;
	fresh.conn_id = conn_id_base + __sync_fetch_and_add(next_id, 1) + 1;
	fresh.open_ts_ns = bpf_ktime_get_ns();
	fresh.pid = bpf_get_current_pid_tgid() >> 32;
	fresh.portpair = BPF_CORE_READ(sk, __sk_common.skc_portpair);
	if (bpf_map_update_elem(&socks, &key, &fresh, BPF_NOEXIST) && bpf_map_update_elem(&socks, &key, &fresh, BPF_ANY))
		return NULL;
	si = bpf_map_lookup_elem(&socks, &key);
	if (!si)
		return NULL;
	if (role == QTAP_ROLE_UNKNOWN)
		flags |= QTAP_CONN_MIDSTREAM;
	if (sock_is_udp(sk)) {
		flags |= QTAP_CONN_UDP;
		si->flags |= QTAP_SOCK_UDP;
	}
	emit_conn_open(sk, si->conn_id, role, flags, fd);
	return si;
}

/* Bytes of consecutive iovec segments are packed into the same record until it holds QTAP_CHUNK_SIZE
 * bytes: gRPC and friends write dozens of tiny slices per sendmsg, and one record per slice would burn the
 * per-call record budget at once. State: struct qtap_emit_state in the scratch slot (see maps.bpf.h). */
struct emit_ctx {
	struct qtap_data_scratch *s;
};

static __always_inline void flush_record(struct qtap_data_scratch *s)
{
	struct qtap_emit_state *st = &s->st;
	struct qtap_data *ev = &s->d;
	__u64 n = st->filled;

	if (!n)
		return;
	ev->offset = st->rec_off;
	ev->len = n;
	ev->skipped = 0;
	ev->flags = st->xflags;
	if (bpf_ringbuf_output(&events, ev, offsetof(struct qtap_data, payload) + (n & (2 * QTAP_CHUNK_SIZE - 1)),
			       rb_flags(offsetof(struct qtap_data, payload) + n))) {
		count(QTAP_CNT_DROP_RINGBUF, 1);
		count(QTAP_CNT_DROP_BYTES, n);
	} else {
		count(QTAP_CNT_RECORDS, 1);
	}
	st->chunks++;
	st->rec_off += n;
	st->filled = 0;
}

static long emit_step(__u32 i, struct emit_ctx *c)
{
	struct qtap_data_scratch *s = c->s;
	struct qtap_emit_state *st = &s->st;
	__u64 n, room;
	__u32 at;

	if (st->remaining == 0 || st->chunks >= max_chunks || st->chunks >= QTAP_MAX_CHUNKS)
		return 1;
	if (st->seg_left == 0) {
		struct iovec iv = {};
		__u32 idx = st->iov_idx;

		if (!st->iov || idx >= st->iovcnt || idx >= QTAP_MAX_IOV)
			return 1;
		if (bpf_probe_read_user(&iv, sizeof(iv), (void *)(st->iov + idx * sizeof(struct iovec))))
			return 1;
		st->iov_idx = idx + 1;
		st->seg_ptr = (__u64)iv.iov_base;
		st->seg_left = iv.iov_len < st->remaining ? iv.iov_len : st->remaining;
		return 0;
	}
	at = st->filled & (QTAP_CHUNK_SIZE - 1); /* filled < QTAP_CHUNK_SIZE here */
	room = QTAP_CHUNK_SIZE - at;
	n = st->seg_left < room ? st->seg_left : room;
	if (n > QTAP_CHUNK_SIZE)
		n = QTAP_CHUNK_SIZE;
	/* payload + slack is 2 x QTAP_CHUNK_SIZE long, so the verifier can prove at + n stays inside. */
	if (bpf_probe_read_user(&s->d.payload[at], n, (void *)st->seg_ptr)) {
		st->fault = 1;
		return 1;
	}
	st->filled = at + n;
	st->seg_ptr += n;
	st->seg_left -= n;
	st->remaining -= n;
	if (st->filled >= QTAP_CHUNK_SIZE || st->remaining == 0)
		flush_record(s);
	return 0;
}

/* Emit `total` bytes moved by one call as data records: from `buf` (single buffer, iovcnt == 0) or from
 * the iovec array at `buf`. Bytes that do not fit are announced as skipped in a final record. */
static __always_inline void emit_data_flags(__u64 conn_id, __u64 offset, __u8 dir, __u8 source, int fd,
					    __u64 buf, __u32 iovcnt, __u64 total, __u16 xflags)
{
	struct qtap_data_scratch *s = scratch_slot();
	struct qtap_emit_state *st;
	struct qtap_data *ev;
	struct emit_ctx c;

	if (!s)
		return;
	ev = &s->d;
	st = &s->st;
	fill_hdr(&ev->h, QTAP_REC_DATA, conn_id);
	ev->dir = dir;
	ev->source = source;
	ev->fd = fd;
	__builtin_memset(st, 0, sizeof(*st));
	st->rec_off = offset;
	st->remaining = total;
	st->xflags = xflags;
	if (iovcnt) {
		st->iov = buf;
		st->iovcnt = iovcnt;
	} else {
		st->seg_ptr = buf;
		st->seg_left = total;
	}
	c.s = s;
	if (capture_payload && buf)
		bpf_loop(QTAP_MAX_STEPS, emit_step, &c, 0);
	flush_record(s); /* what was gathered before a fault, the iovec end or the record budget */
	if (st->remaining) {
		/* Truncated, unreadable, or payload capture off: one header-only record keeps offsets honest. */
		ev->offset = st->rec_off;
		ev->len = 0;
		ev->skipped = st->remaining;
		if (!capture_payload || !buf)
			ev->flags = QTAP_DATA_NO_PAYLOAD;
		else if (st->fault)
			ev->flags = QTAP_DATA_READ_FAULT;
		else
			ev->flags = QTAP_DATA_TRUNCATED;
		if (ev->flags == QTAP_DATA_TRUNCATED)
			count(QTAP_CNT_TRUNCATED_BYTES, st->remaining);
		ev->flags |= xflags;
		if (bpf_ringbuf_output(&events, ev, offsetof(struct qtap_data, payload),
				       rb_flags(offsetof(struct qtap_data, payload))))
			count(QTAP_CNT_DROP_RINGBUF, 1);
		else
			count(QTAP_CNT_RECORDS, 1);
	}
}

static __always_inline void emit_data(__u64 conn_id, __u64 offset, __u8 dir, __u8 source, int fd, __u64 buf,
				      __u32 iovcnt, __u64 total)
{
	emit_data_flags(conn_id, offset, dir, source, fd, buf, iovcnt, total, 0);
}

/* A header-only data record: `total` stream bytes at `offset` went by without a payload (sendfile, splice,
 * io_uring, messages past the mmsg budget); `flags` says why, so user space reports a gap with the reason. */
static __always_inline void emit_unseen(__u64 conn_id, __u64 offset, __u8 dir, int fd, __u64 total, __u16 flags)
{
	struct qtap_data_scratch *s = scratch_slot();
	struct qtap_data *ev;

	if (!s || !total)
		return;
	ev = &s->d;
	fill_hdr(&ev->h, QTAP_REC_DATA, conn_id);
	ev->dir = dir;
	ev->source = QTAP_SRC_SYSCALL;
	ev->fd = fd;
	ev->offset = offset;
	ev->len = 0;
	ev->skipped = total > 0xffffffff ? 0xffffffff : total;
	ev->flags = flags;
	if (bpf_ringbuf_output(&events, ev, offsetof(struct qtap_data, payload),
			       rb_flags(offsetof(struct qtap_data, payload))))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
}

/* -- TLS object -> socket ----------------------------------------------------------------------------- */

/* The socket TLS object `ssl` is bound to, or 0. A binding whose connection ended (the socket's entry is
 * gone, or is another connection's now) is dropped: an object is never tied to a socket's next life. */
static __always_inline __u64 tls_bound_sock(__u64 ssl)
{
	struct qtap_tls_sock *b = bpf_map_lookup_elem(&tls_socks, &ssl);
	struct qtap_sock_info *si;
	__u64 sk;

	if (!b)
		return 0;
	sk = b->sk;
	si = bpf_map_lookup_elem(&socks, &sk);
	if (si && si->conn_id == b->conn_id && !(si->flags & QTAP_SOCK_ENDED))
		return sk;
	bpf_map_delete_elem(&tls_socks, &ssl);
	count(QTAP_CNT_TLS_STALE_BINDING, 1);
	return 0;
}

/* Bind TLS object `ssl` to socket `sk` (its entry `si`) and hand the object's unbound writes, if any, to
 * that connection: one tls_bind record gives them the next bytes of its send plaintext stream, ahead of any
 * later write (which reserves its offset after this). */
static __always_inline void tls_bind(__u64 ssl, __u64 sk, struct qtap_sock_info *si)
{
	struct qtap_tls_sock b = {.sk = sk, .conn_id = si->conn_id};
	struct qtap_tls_sock *cur = bpf_map_lookup_elem(&tls_socks, &ssl);
	struct qtap_tls_pending *p;
	struct qtap_tls_bind ev = {};
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!(si->flags & QTAP_SOCK_TLS_COVERED))
		__sync_fetch_and_or(&si->flags, QTAP_SOCK_TLS_COVERED);
	if (cur && cur->sk == sk && cur->conn_id == b.conn_id)
		return;
	bpf_map_update_elem(&tls_socks, &ssl, &b, BPF_ANY);
	p = bpf_map_lookup_elem(&tls_pending, &ssl);
	if (!p || p->tgid != tgid)
		return;
	if (bpf_ktime_get_ns() - p->last_ns > QTAP_TLS_PENDING_TTL_NS) {
		/* User space dropped (and counted) that plaintext already: no gap for bytes nobody holds. */
		bpf_map_delete_elem(&tls_pending, &ssl);
		return;
	}
	fill_hdr(&ev.h, QTAP_REC_TLS_BIND, si->conn_id);
	ev.ssl = ssl;
	ev.bytes = p->bytes;
	ev.gen = p->gen;
	bpf_map_delete_elem(&tls_pending, &ssl);
	ev.base = __sync_fetch_and_add(&si->tls_off[QTAP_DIR_SEND], ev.bytes);
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), rb_flags(sizeof(ev))))
		count(QTAP_CNT_DROP_RINGBUF, 1);
	else
		count(QTAP_CNT_RECORDS, 1);
}

#endif /* __QTAP_COMMON_BPF_H */
