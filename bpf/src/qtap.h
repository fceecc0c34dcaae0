/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * qtap.h - THE kernel/user ABI of qtap-async.
 *
 * Every record the BPF programs put on the `events` ring buffer starts with struct qtap_hdr. The Python
 * mirror lives in qtap_async/bpf/abi.py; a test checks sizes and offsets against the BTF of the compiled
 * objects, so change both together and bump QTAP_ABI_VERSION.
 */
#ifndef __QTAP_H
#define __QTAP_H

/* 2: conn_open carries the uid, proc_exec the executable's inode, proc_fork is new.
 * 3: conn_close says how the end was found (enum qtap_close_reason); two more counters.
 * 4: unbound TLS writes (QTAP_DATA_UNBOUND) and the tls_bind record that ties them to their connection. */
#define QTAP_ABI_VERSION 4

/* Payload chunking: one record carries at most QTAP_CHUNK_SIZE bytes; one syscall (or TLS call) emits at
 * most QTAP_MAX_CHUNKS data records; what is beyond is reported as skipped bytes (truncation). */
#define QTAP_CHUNK_SIZE 16384
#define QTAP_MAX_CHUNKS 8
/* iovec entries walked per readv/writev/sendmsg/recvmsg call (more are reported as truncated). */
#define QTAP_MAX_IOV 1024
/* bpf_loop budget for one call: every step reads an iovec entry or copies (part of) a segment, and a
 * segment is copied in at most (chunks it spans + 1) steps. */
#define QTAP_MAX_STEPS (2 * QTAP_MAX_IOV + QTAP_MAX_CHUNKS + 1)
#define QTAP_COMM_LEN 16
#define QTAP_PATH_LEN 256
/* Socket table size (LRU: the least recently used entries go first when it is full). */
#define QTAP_MAX_SOCKS 65536
/* Close records the full ring buffer refused, kept until the sweep can send them. */
#define QTAP_MAX_PENDING_CLOSES 8192
/* Syscalls in flight at once (one entry per thread between sys_enter and sys_exit). */
#define QTAP_MAX_INFLIGHT 16384
/* Raw bytes of a TLS connection sent to user space before the stream is muted: enough for the
 * ClientHello/ServerHello (SNI, ALPN), the rest is ciphertext nobody can read. */
#define QTAP_TLS_HELLO_BYTES 8192
/* sendmmsg/recvmmsg: messages captured per call; the byte counts of up to QTAP_MAX_MMSG_COUNTED more are
 * reported as truncation, anything beyond that is counted in QTAP_CNT_MMSG_UNCOUNTED. */
#define QTAP_MAX_MMSG 4
#define QTAP_MAX_MMSG_COUNTED 64
/* A TLS write with no socket I/O inside it, of an object not bound yet, is tied to the next send of its
 * thread on a socket no TLS object holds, if that send comes within this time (BIO-pair stacks: gRPC). */
#define QTAP_TLS_BIND_WINDOW_NS 1000000000ULL
/* User space keeps an object's unbound plaintext this long after its last write (UnboundTls.timeout_s); an
 * object silent longer starts a new unbound stream (generation) and a late binding hands nothing over. */
#define QTAP_TLS_PENDING_TTL_NS 5000000000ULL
/* Unbound plaintext bytes one TLS object may hold back; past that its writes are counted and dropped. */
#define QTAP_TLS_PENDING_MAX_BYTES (1024 * 1024)

enum qtap_rec_type {
	QTAP_REC_CONN_OPEN = 1,
	QTAP_REC_CONN_CLOSE = 2,
	QTAP_REC_DATA = 3,
	QTAP_REC_PROC_EXEC = 4,
	QTAP_REC_PROC_EXIT = 5,
	QTAP_REC_PROC_FORK = 6,
	QTAP_REC_TLS_BIND = 7,
};

/* Direction of a data record, from the point of view of the process that made the call. */
enum qtap_dir {
	QTAP_DIR_SEND = 0,
	QTAP_DIR_RECV = 1,
};

/* How the connection was seen first. */
enum qtap_role {
	QTAP_ROLE_UNKNOWN = 0, /* existed before the agent started: first seen on a data syscall */
	QTAP_ROLE_CONNECT = 1, /* this host initiated it (egress) */
	QTAP_ROLE_ACCEPT = 2,  /* this host accepted it (ingress) */
};

/* Where the bytes of a data record come from. Each source is its own byte stream. */
enum qtap_source {
	QTAP_SRC_SYSCALL = 0, /* bytes on the socket, as the kernel moved them */
	QTAP_SRC_OPENSSL = 1, /* plaintext from SSL_read/SSL_write (OpenSSL, BoringSSL) */
	QTAP_SRC_GNUTLS = 2,
	QTAP_SRC_GOTLS = 3,
	QTAP_SRC_RUSTLS = 4, /* plaintext from rustls' Reader::read / PlaintextSink::write (Rust programs) */
};

enum qtap_data_flags {
	QTAP_DATA_TRUNCATED = 1 << 0, /* the call moved more bytes than were captured: see skipped */
	QTAP_DATA_READ_FAULT = 1 << 1, /* the user buffer could not be read: payload absent, see skipped */
	QTAP_DATA_NO_PAYLOAD = 1 << 2, /* payload capture is off (capture_payload = 0): only the byte count */
	/* The bytes moved without passing through a user buffer the probe can read: only the byte count. */
	QTAP_DATA_SENDFILE = 1 << 3,
	QTAP_DATA_SPLICE = 1 << 4,
	QTAP_DATA_IO_URING = 1 << 5,   /* an io_uring request on the socket completed */
	QTAP_DATA_MMSG_REST = 1 << 6,  /* sendmmsg/recvmmsg messages beyond QTAP_MAX_MMSG */
	QTAP_DATA_DISCARDED = 1 << 7,  /* recv(MSG_TRUNC) on TCP: consumed, never copied to the process */
	/* TLS plaintext of an object with no socket yet: conn_id is the TLS object, fd its binding generation,
	 * offset counts in the object's unbound stream. A tls_bind record later says which connection it is. */
	QTAP_DATA_UNBOUND = 1 << 8,
};

enum qtap_conn_flags {
	QTAP_CONN_MIDSTREAM = 1 << 0, /* first seen on data: stream offsets start where the agent came in */
	QTAP_CONN_UDP = 1 << 1,       /* a UDP socket talking DNS (port 53): each data record is a datagram */
};

/* Internal flags of struct qtap_sock_info. */
enum qtap_sock_flags {
	QTAP_SOCK_TLS_COVERED = 1 << 0, /* a TLS probe decrypts it: never send its ciphertext */
	QTAP_SOCK_TLS_RAW = 1 << 1,     /* its first bytes are a TLS record */
	QTAP_SOCK_DETECTED = 1 << 2,    /* first-bytes detection done */
	QTAP_SOCK_MUTED = 1 << 3,       /* user space asked for no more payload */
	QTAP_SOCK_UDP = 1 << 4,         /* UDP (DNS): ended by close(2), there is no TCP_CLOSE */
	QTAP_SOCK_PEER_CHECKED = 1 << 5, /* checked once data flowed: is the far end the agent itself? */
	QTAP_SOCK_SWEEP_DEAD = 1 << 6,  /* the last sweep found it released by every holder (ended at the next) */
	QTAP_SOCK_ENDED = 1 << 7,       /* its close was sent but the table refused the delete: delete, never use */
};

/* How a connection's end was found (struct qtap_conn_close.reason). */
enum qtap_close_reason {
	/* Seen: tcp_destroy_sock, close(2) of a UDP socket, or the sweep finding the socket released by every
	 * holder (its bytes are final; TCP's teardown can outlive it by minutes when the last packets are lost). */
	QTAP_CLOSE_SEEN = 0,
	QTAP_CLOSE_STALE = 1, /* still in the table when its memory was born again as another socket */
	/* The sweep found the socket freed (or its memory no socket any more): no hook saw its end. */
	QTAP_CLOSE_SWEPT = 2,
};

/* TCP states (include/net/tcp_states.h) the socket programs look at. */
enum qtap_tcp_state {
	QTAP_TCP_SYN_SENT = 2,
	QTAP_TCP_SYN_RECV = 3,
	QTAP_TCP_CLOSE = 7,
	QTAP_TCP_LISTEN = 10,
	QTAP_TCP_MAX_STATES = 13,
};

/* Indexes of the per-CPU `counters` map. Every record that is not delivered is counted here. */
enum qtap_counter {
	QTAP_CNT_RECORDS = 0,          /* records delivered to the ring buffer */
	QTAP_CNT_DROP_RINGBUF = 1,     /* records the ring buffer refused (full) */
	QTAP_CNT_DROP_INFLIGHT = 2,    /* syscalls not tracked: inflight table full */
	QTAP_CNT_TRUNCATED_BYTES = 3,  /* bytes beyond QTAP_MAX_CHUNKS x QTAP_CHUNK_SIZE or QTAP_MAX_IOV */
	QTAP_CNT_TLS_MUTED_BYTES = 4,  /* ciphertext bytes not sent (covered by a probe or past the hello) */
	QTAP_CNT_DROP_BYTES = 5,       /* payload bytes in records the ring buffer refused */
	QTAP_CNT_TLS_UNASSOCIATED = 6, /* TLS calls whose socket could not be named (plaintext not sent) */
	QTAP_CNT_TLS_BY_THREAD = 7,    /* TLS objects associated through the thread's last socket */
	QTAP_CNT_STALE_SOCKS = 8,      /* socket entries still present when the socket was born again (closed) */
	QTAP_CNT_CLOSED_SOCK_IO = 9,   /* data calls on a closed socket nobody tracked (ignored: no phantom) */
	QTAP_CNT_MMSG_UNCOUNTED = 10,  /* sendmmsg/recvmmsg messages beyond QTAP_MAX_MMSG_COUNTED */
	QTAP_CNT_IO_URING_BYTES = 11,  /* socket bytes moved by io_uring (counted, payload not captured) */
	QTAP_CNT_SWEPT_SOCKS = 12,     /* entries the once-a-second sweep ended (see QTAP_CLOSE_*: any reason) */
	QTAP_CNT_CLOSE_DEFERRED = 13,  /* closes the full ring buffer refused, kept for the sweep to send again */
	QTAP_CNT_DELETE_BUSY = 14,     /* socket table deletes the kernel refused (bucket lock busy): retried */
	QTAP_CNT_TLS_HELD = 15,        /* TLS writes sent unbound, for their thread's next send to bind */
	QTAP_CNT_TLS_BOUND_BY_SEND = 16, /* TLS objects bound to the socket of their thread's next send */
	QTAP_CNT_TLS_STALE_BINDING = 17, /* TLS object bindings found pointing at a closed connection */
	QTAP_CNT_MAX = 18,
};

struct qtap_hdr {
	__u16 type;     /* enum qtap_rec_type */
	__u16 abi;      /* QTAP_ABI_VERSION */
	__u32 cpu;
	__u64 ts_ns;    /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 conn_id;  /* 0 for process records */
	__u32 pid;      /* tgid */
	__u32 tid;
};

struct qtap_conn_open {
	struct qtap_hdr h;
	__u64 cgroup_id;
	__u16 family;   /* AF_INET or AF_INET6 */
	__u8 role;      /* enum qtap_role */
	__u8 flags;     /* enum qtap_conn_flags */
	__u16 lport;    /* host byte order */
	__u16 rport;    /* host byte order */
	__u8 laddr[16]; /* IPv4 in the first 4 bytes */
	__u8 raddr[16];
	__s32 fd;
	__u32 uid;      /* of the task that connected/accepted (or first moved bytes) */
	char comm[QTAP_COMM_LEN];
};

struct qtap_conn_close {
	struct qtap_hdr h;
	__u64 bytes_sent;     /* bytes on the socket, not counting TLS overhead removal */
	__u64 bytes_received;
	__u64 open_ts_ns;
	__u32 reason;         /* enum qtap_close_reason */
	__u32 _pad;
};

struct qtap_data {
	struct qtap_hdr h;
	__u64 offset;   /* offset of the first byte in this (conn, source, dir) stream */
	__u32 len;      /* payload bytes present after this header */
	__u32 skipped;  /* stream bytes right after the payload that were not captured */
	__u8 dir;       /* enum qtap_dir */
	__u8 source;    /* enum qtap_source */
	__u16 flags;    /* enum qtap_data_flags */
	__s32 fd;
	__u8 payload[QTAP_CHUNK_SIZE];
};

struct qtap_proc_exec {
	struct qtap_hdr h;
	__u64 cgroup_id;
	__u32 ppid;
	__u32 uid;
	char comm[QTAP_COMM_LEN];
	char filename[QTAP_PATH_LEN];
	__u64 exe_ino;  /* the executable's inode and device: names the file after the process is gone */
	__u32 exe_dev;
	__u32 _pad;
};

/* A new process (not a thread): it runs its parent's program until it execs. */
struct qtap_proc_fork {
	struct qtap_hdr h; /* pid: the child */
	__u64 cgroup_id;
	__u32 ppid;
	__u32 uid;
};

/* The unbound plaintext of a TLS object (key: header pid, ssl, gen) belongs to connection h.conn_id: its
 * unbound stream byte x is the connection's send plaintext byte base + x, for x < bytes. */
struct qtap_tls_bind {
	struct qtap_hdr h;
	__u64 ssl;
	__u64 base;
	__u64 bytes;
	__u32 gen;
	__u32 _pad;
};

struct qtap_proc_exit {
	struct qtap_hdr h;
	__s32 exit_code;
	__u32 _pad;
};

/* Per-socket state, keyed by the struct sock address. Not sent to user space as such. */
struct qtap_sock_info {
	__u64 conn_id;
	__u64 open_ts_ns;
	__u64 off[2];       /* syscall stream offsets, indexed by enum qtap_dir */
	__u64 tls_off[2];   /* plaintext stream offsets */
	__u32 pid;
	__u32 flags;        /* enum qtap_sock_flags */
	__u32 portpair;     /* the ports when the entry was made: tells a repeated connect() from a new socket */
	__u32 _pad;
};

/* A data syscall between enter and exit, keyed by thread id. */
struct qtap_io_args {
	__u64 sk;
	__u64 buf;      /* user buffer, or user iovec array when iovcnt > 0 */
	__u32 iovcnt;
	__s32 fd;
	__u8 dir;
	__u8 kind;      /* enum qtap_io_kind */
	__u8 was_closed; /* the socket was in TCP_CLOSE at sys_enter (unconnected: TCP Fast Open sendto) */
	__u8 _pad;
	__u32 nr;       /* syscall number, for entries written by user space (sk == 0): checked at sys_exit */
	__u64 cap;      /* single buffer: its length (recv(MSG_TRUNC) on UDP returns more than it copied) */
};

enum qtap_io_kind {
	QTAP_IO_BUF = 0,
	QTAP_IO_IOV = 1,
	QTAP_IO_MSG = 2,
	QTAP_IO_CONNECT = 3,
	QTAP_IO_SENDFILE = 4,
	QTAP_IO_CONNECT_SELF = 5, /* a connect() of the agent itself: remembered, never traced */
	QTAP_IO_MMSG = 6,         /* sendmmsg/recvmmsg: buf = struct mmsghdr array, iovcnt = its length */
	QTAP_IO_SPLICE = 7,       /* splice to or from the socket: only the byte count */
	/* Calls already blocked when the agent attached, found by user space in /proc/TID/syscall: the socket
	 * is resolved at sys_exit (sk = 0), and for these two the msghdr is read then. */
	QTAP_IO_PRE_MSG = 8,
	QTAP_IO_DISCARD = 9,      /* recv(MSG_TRUNC) on TCP: the bytes are consumed without being copied */
};

/* A TLS library call between its entry probe and its return probe, keyed by thread id. The socket
 * programs fill `sk` when the call makes a read/write syscall (the nested-syscall association). */
struct qtap_tls_call {
	__u64 ssl;      /* the library's connection object (SSL *, gnutls_session_t, *tls.Conn) */
	__u64 buf;
	__u64 len_ptr;  /* where the library stores the byte count (SSL_read_ex), or 0 */
	__u64 sk;       /* filled by the nested syscall */
	__u8 dir;
	__u8 source;
	__u8 _pad[6];
};

/* tls_socks value: the socket a TLS object is bound to, and the connection it was then (a closed socket's
 * memory can become another socket: the binding ends with the connection). */
struct qtap_tls_sock {
	__u64 sk;
	__u64 conn_id;
};

/* tls_pending value: a TLS object whose writes wait for a socket. */
struct qtap_tls_pending {
	__u64 bytes;    /* unbound plaintext bytes sent so far (the next write's offset) */
	__u64 last_ns;  /* time of its last write */
	__u32 tgid;
	__u32 gen;      /* tells this object's unbound stream from an earlier one at the same address */
};

/* thread_pending value: the TLS object whose write the thread's next send carries. */
struct qtap_thread_pending {
	__u64 ssl;
	__u64 ts_ns;
};

/* Held exec (opt-in, tls.bpf.c): a process that exec'd a file user space has not analysed yet is stopped
 * with SIGSTOP before its first instruction and reported on `held_execs`; user space attaches the file's
 * TLS probes, then sends SIGCONT. Files already analysed are in `known_files` and never held. */
#define QTAP_MAX_KNOWN_FILES 65536

/* A file as the kernel names it: s_dev in the kernel's encoding (major << 20 | minor), inode number. */
struct qtap_file_key {
	__u64 dev;
	__u64 ino;
};

/* One record on `held_execs`. */
struct qtap_exec_hold {
	__u64 ts_ns;
	__u64 dev;
	__u64 ino;
	__u32 pid;
	__u32 _pad;
};

/* The single entry of `hold_ctl`, written by user space: holding is on only while heartbeat_ns (CLOCK_MONOTONIC)
 * is less than max_age_ns old, so a stuck or dead agent holds nothing new. */
struct qtap_hold_ctl {
	__u64 heartbeat_ns;
	__u64 max_age_ns;
};

#endif /* __QTAP_H */
