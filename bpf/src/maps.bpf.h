/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Maps shared by every qtap object. socket.bpf.o owns them; the loader makes the other objects
 * (process, TLS probes) reuse the same map fds before loading, so one ring buffer and one socket
 * table serve all programs.
 */
#ifndef __QTAP_MAPS_BPF_H
#define __QTAP_MAPS_BPF_H

#include "qtap.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* resized by the loader (tap.ring_buffer_bytes) */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QTAP_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_SOCKS);
	__type(key, __u64); /* struct sock * */
	__type(value, struct qtap_sock_info);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u32); /* tid */
	__type(value, struct qtap_io_args);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u32); /* tid */
	__type(value, struct qtap_tls_call);
} tls_calls SEC(".maps");

/* The TLS library's connection object -> socket, learnt from nested syscalls: SSL_read can return
 * buffered plaintext without any syscall, then this is the only way to name the connection. An object is
 * bound once (nested syscall, its thread's next send, or the last receive before a read) and stays bound
 * until that connection ends; only a nested syscall, which names the socket for certain, rebinds it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, struct qtap_tls_sock);
} tls_socks SEC(".maps");

/* The last TCP socket each thread received bytes on. TLS stacks that do their socket I/O outside the TLS
 * call (Node.js memory BIOs, gRPC's BIO pair, rustls) receive the ciphertext before the read returns its
 * plaintext, so a read of an unbound object is tied to it. Writes are not: such stacks send after the
 * write (see thread_pending). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u32); /* tid */
	__type(value, __u64);
} thread_socks SEC(".maps");

/* TLS objects whose writes went out unbound (QTAP_DATA_UNBOUND), waiting for a socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u64); /* the TLS object */
	__type(value, struct qtap_tls_pending);
} tls_pending SEC(".maps");

/* Per thread, the unbound TLS object it wrote last: its next send on a socket no TLS object holds yet
 * carries that write's ciphertext, and binds the object to that socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u32); /* tid */
	__type(value, struct qtap_thread_pending);
} thread_pending SEC(".maps");

/* Local ports of the agent's own TCP connections (key: port, value: unused), and the sockets that hold them
 * (so the port is forgotten when the socket closes). The far end of such a connection, when it is on this
 * host (a local Kafka broker, MinIO, Pulse), is not traced: capturing it would feed the agent's own output
 * back into itself. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u16);
	__type(value, __u8);
} self_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u16);
} self_socks SEC(".maps");

/* Close records the full ring buffer refused (key: conn_id): the sweep sends them once there is room. The
 * socket's entry is gone already, so its memory can serve the next connection meanwhile. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, QTAP_MAX_PENDING_CLOSES);
	__type(key, __u64);
	__type(value, struct qtap_conn_close);
} pending_closes SEC(".maps");

/* Connection id counter, shared by every object that can announce a connection. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} conn_ids SEC(".maps");

/* Scratch space for building a data record (too large for the 512-byte BPF stack), one slot per CPU.
 * Twice the record size: the packing copy writes at a variable position and the verifier needs the worst
 * case inside. That exceeds the 32 KiB per-CPU value limit, so this is a plain array indexed by CPU
 * (tracepoint and uprobe programs cannot migrate while they run); the loader sizes it to the CPU count. */
/* Loop-carried state of one chunked emission. It lives in map memory, not on the stack, on purpose: the
 * verifier tracks stack scalars exactly, so the bpf_loop callback would never converge; map contents are
 * unknown to it, so the callback is verified once. */
struct qtap_emit_state {
	__u64 iov;        /* user iovec array, 0 for a single buffer */
	__u64 seg_ptr;    /* current segment */
	__u64 seg_left;   /* bytes left in the current segment */
	__u64 remaining;  /* bytes of the call not yet captured */
	__u64 rec_off;    /* stream offset of the record being filled */
	__u32 filled;     /* bytes in the record being filled */
	__u32 iov_idx;
	__u32 iovcnt;
	__u32 chunks;
	__u32 fault;
	__u32 xflags;     /* data flags every record of this emission carries (QTAP_DATA_UNBOUND) */
};

struct qtap_data_scratch {
	struct qtap_data d;
	__u8 slack[QTAP_CHUNK_SIZE];
	struct qtap_emit_state st;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct qtap_data_scratch);
} scratch SEC(".maps");

static __always_inline void *scratch_slot(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	return bpf_map_lookup_elem(&scratch, &cpu);
}

#endif /* __QTAP_MAPS_BPF_H */
