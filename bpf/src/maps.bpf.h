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
 * buffered plaintext without any syscall, then this is the only way to name the connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} tls_socks SEC(".maps");

/* The last TCP socket each thread moved bytes on. TLS stacks that do their socket I/O outside the TLS
 * call (Node.js: memory BIOs fed by libuv on the same thread) are associated through it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, QTAP_MAX_INFLIGHT);
	__type(key, __u32); /* tid */
	__type(value, __u64);
} thread_socks SEC(".maps");

/* Connection id counter, shared by every object that can announce a connection. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} conn_ids SEC(".maps");

/* Scratch space for building a data record (too large for the 512-byte BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct qtap_data);
} scratch SEC(".maps");

#endif /* __QTAP_MAPS_BPF_H */
