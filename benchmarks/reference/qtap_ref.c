// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * qtap_ref: the reference consumer of qtap-async's BPF objects, for the benchmarks.
 *
 * Loads the SAME socket.bpf.o + process.bpf.o as qtap_async/bpf/loader.py (process.bpf.o reuses the
 * socket object's maps by fd, .rodata self_tgid/target_tgid/conn_id_base set before load), attaches every
 * program, and drains the ring buffer doing nothing but counting records and bytes. What it costs is the
 * physical limit of our hooks; the agent's cost is reported as a ratio to it.
 *
 * usage: qtap_ref OBJDIR [--duration S] [--ring-mib N] [--target-tgid PID] [--poll-sleep-us N] [--wakeup-bytes N]
 *                [--tls-plan FILE] [--skip-program NAME]...
 * --skip-program: do not load that program of socket.bpf.o (repeatable): the agent loads one socket I/O path
 * (the socket tracepoints or the syscall pairs, qtap_async/bpf/socket_path.py), and so must the reference.
 * --tls-plan: also load tls.bpf.o (sharing the socket object's maps, as TlsProbes does) and attach the uprobes
 * listed in FILE, one per line: "PROGRAM RETPROBE OFFSET COOKIE PATH" (RETPROBE 0/1, OFFSET and COOKIE
 * decimal). benchmarks/_common.py writes it from the agent's own plan (qtap_async.tls.attach.probe_groups), so
 * the reference pays for exactly the probes the agent attaches.
 * --wakeup-bytes: .rodata wakeup_bytes (the kernel wakes the consumer once that much waits; 0: every record);
 * default: the object's own value, as loader.py's default.
 * --poll-sleep-us: instead of sleeping in epoll until the kernel wakes it, drain every N µs. A drained
 * consumer makes the kernel queue a wakeup (irq_work) for the next record; polling measures that cost.
 * Runs until SIGINT/SIGTERM or the duration; prints one JSON line on stdout; "ATTACHED" on stderr when ready.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

static volatile sig_atomic_t stop;
static uint64_t records, bytes;

static const char *shared_maps[] = {"events", "counters", "socks", "inflight", "tls_calls", "tls_socks",
				    "scratch", "conn_ids", "thread_socks"};

static void on_signal(int sig) { (void)sig; stop = 1; }

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx; (void)data;
	records++;
	bytes += size;
	return 0;
}

/* Write one `const volatile` global of .rodata by name (no-op when the object has no such variable). */
static int set_rodata(struct bpf_object *obj, const char *name, uint64_t value)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
	struct btf *btf = bpf_object__btf(obj);
	size_t size;
	char *data;
	int sec_id;
	const struct btf_type *sec;
	const struct btf_var_secinfo *vi;

	if (!map || !btf)
		return 0;
	data = (char *)bpf_map__initial_value(map, &size); /* writable before load despite the const of older libbpf */
	sec_id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (!data || sec_id < 0)
		return 0;
	sec = btf__type_by_id(btf, sec_id);
	vi = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++, vi++) {
		const struct btf_type *var = btf__type_by_id(btf, vi->type);
		if (strcmp(btf__name_by_offset(btf, var->name_off), name))
			continue;
		if (vi->offset + vi->size > size)
			return -EINVAL;
		if (vi->size == 4)
			*(uint32_t *)(data + vi->offset) = (uint32_t)value;
		else if (vi->size == 8)
			*(uint64_t *)(data + vi->offset) = value;
		else
			return -EINVAL;
		return 0;
	}
	return 0;
}

static long long wakeup_bytes_opt = -1;

static int configure(struct bpf_object *obj, uint32_t self, uint32_t target, uint64_t base)
{
	int err = set_rodata(obj, "self_tgid", self);
	err = err ? err : set_rodata(obj, "target_tgid", target);
	if (!err && wakeup_bytes_opt >= 0)
		err = set_rodata(obj, "wakeup_bytes", (uint64_t)wakeup_bytes_opt);
	return err ? err : set_rodata(obj, "conn_id_base", base);
}

static int attach_all(struct bpf_object *obj)
{
	struct bpf_program *prog;
	bpf_object__for_each_program(prog, obj) {
		if (!bpf_program__autoload(prog))
			continue;
		if (!bpf_program__attach(prog)) {
			fprintf(stderr, "qtap_ref: attach %s: %s\n", bpf_program__name(prog), strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Every map of `obj` named as one of `owner`'s (sections such as .rodata excepted) uses the owner's fd. */
static int share_maps(struct bpf_object *obj, struct bpf_object *owner)
{
	struct bpf_map *m;
	bpf_object__for_each_map(m, obj) {
		const char *name = bpf_map__name(m);
		struct bpf_map *o = bpf_object__find_map_by_name(owner, name);
		if (!o || strchr(name, '.'))
			continue;
		if (bpf_map__reuse_fd(m, bpf_map__fd(o))) {
			fprintf(stderr, "qtap_ref: reuse map %s: %s\n", name, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Attach the uprobes of a plan file to the loaded tls object; returns how many, or -1. */
static int attach_tls_plan(struct bpf_object *tls, const char *plan)
{
	char line[8192], prog_name[128], path[4096];
	int retprobe, n = 0;
	unsigned long long offset, cookie;
	FILE *f = fopen(plan, "r");

	if (!f) {
		fprintf(stderr, "qtap_ref: open %s: %s\n", plan, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		struct bpf_program *prog;
		LIBBPF_OPTS(bpf_uprobe_opts, opts);

		if (sscanf(line, "%127s %d %llu %llu %4095[^\n]", prog_name, &retprobe, &offset, &cookie, path) != 5)
			continue;
		prog = bpf_object__find_program_by_name(tls, prog_name);
		if (!prog) {
			fprintf(stderr, "qtap_ref: tls.bpf.o has no program %s\n", prog_name);
			fclose(f);
			return -1;
		}
		opts.retprobe = retprobe != 0;
		opts.bpf_cookie = cookie;
		if (!bpf_program__attach_uprobe_opts(prog, -1, path, (size_t)offset, &opts)) {
			fprintf(stderr, "qtap_ref: attach %s at %s+%llu: %s\n", prog_name, path, offset, strerror(errno));
			fclose(f);
			return -1;
		}
		n++;
	}
	fclose(f);
	return n;
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
	char path[4096];
	double duration = 0;
	unsigned ring_mib = 16;
	uint32_t target = 0;
	long poll_sleep_us = 0;
	long long wakeup_bytes = -1;
	const char *tls_plan = NULL;
	const char *skip[64];
	int nskip = 0;
	struct bpf_object *sock, *proc, *tls = NULL;
	struct ring_buffer *rb;
	struct timespec t0, t1;
	uint64_t base;
	int ncpu, counters_fd;

	if (argc < 2) {
		fprintf(stderr, "usage: %s OBJDIR [--duration S] [--ring-mib N] [--target-tgid PID] [--poll-sleep-us N] "
			"[--wakeup-bytes N] [--tls-plan FILE] [--skip-program NAME]...\n", argv[0]);
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--duration"))
			duration = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--ring-mib"))
			ring_mib = (unsigned)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--target-tgid"))
			target = (uint32_t)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--poll-sleep-us"))
			poll_sleep_us = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--wakeup-bytes"))
			wakeup_bytes = atoll(argv[i + 1]);
		else if (!strcmp(argv[i], "--tls-plan"))
			tls_plan = argv[i + 1];
		else if (!strcmp(argv[i], "--skip-program") && nskip < 64)
			skip[nskip++] = argv[i + 1];
	}
	wakeup_bytes_opt = wakeup_bytes;
	srand((unsigned)time(NULL) ^ (unsigned)getpid());
	base = ((uint64_t)(rand() & 0xffffff)) << 32;

	snprintf(path, sizeof(path), "%s/socket.bpf.o", argv[1]);
	sock = bpf_object__open_file(path, NULL);
	if (!sock) {
		fprintf(stderr, "qtap_ref: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (int i = 0; i < nskip; i++) {
		struct bpf_program *p = bpf_object__find_program_by_name(sock, skip[i]);
		if (!p) {
			fprintf(stderr, "qtap_ref: socket.bpf.o has no program %s\n", skip[i]);
			return 1;
		}
		bpf_program__set_autoload(p, false);
	}
	bpf_map__set_max_entries(bpf_object__find_map_by_name(sock, "events"), ring_mib << 20);
	/* As loader.py: one scratch record per possible CPU (harmless for a per-CPU array of one entry). */
	bpf_map__set_max_entries(bpf_object__find_map_by_name(sock, "scratch"), (__u32)libbpf_num_possible_cpus());
	if (configure(sock, getpid(), target, base) || bpf_object__load(sock)) {
		fprintf(stderr, "qtap_ref: load socket.bpf.o: %s\n", strerror(errno));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/process.bpf.o", argv[1]);
	proc = bpf_object__open_file(path, NULL);
	if (!proc) {
		fprintf(stderr, "qtap_ref: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < sizeof(shared_maps) / sizeof(shared_maps[0]); i++) {
		struct bpf_map *m = bpf_object__find_map_by_name(proc, shared_maps[i]);
		if (m && bpf_map__reuse_fd(m, bpf_map__fd(bpf_object__find_map_by_name(sock, shared_maps[i])))) {
			fprintf(stderr, "qtap_ref: reuse map %s: %s\n", shared_maps[i], strerror(errno));
			return 1;
		}
	}
	if (configure(proc, getpid(), target, base) || bpf_object__load(proc)) {
		fprintf(stderr, "qtap_ref: load process.bpf.o: %s\n", strerror(errno));
		return 1;
	}
	if (attach_all(sock) || attach_all(proc))
		return 1;
	if (tls_plan) {
		int n;
		snprintf(path, sizeof(path), "%s/tls.bpf.o", argv[1]);
		tls = bpf_object__open_file(path, NULL);
		if (!tls || share_maps(tls, sock) || configure(tls, getpid(), target, base) || bpf_object__load(tls)) {
			fprintf(stderr, "qtap_ref: load tls.bpf.o: %s\n", strerror(errno));
			return 1;
		}
		n = attach_tls_plan(tls, tls_plan);
		if (n < 0)
			return 1;
		fprintf(stderr, "qtap_ref: %d TLS uprobes attached\n", n);
	}
	rb = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(sock, "events")), on_record, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "qtap_ref: ring_buffer__new: %s\n", strerror(errno));
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	fprintf(stderr, "ATTACHED\n");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double cpu0 = cpu_s();
	while (!stop) {
		int err;
		if (poll_sleep_us > 0) {
			usleep((useconds_t)poll_sleep_us);
			err = ring_buffer__consume(rb);
		} else {
			err = ring_buffer__poll(rb, 20); /* as the agent's drain timer (RingBufferSource) */
		}
		if (err < 0 && err != -EINTR)
			break;
		if (duration > 0) {
			clock_gettime(CLOCK_MONOTONIC, &t1);
			if ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9 >= duration)
				break;
		}
	}
	ring_buffer__consume(rb);
	clock_gettime(CLOCK_MONOTONIC, &t1);

	/* Kernel counters summed over CPUs, as Capture.counters() reads them. */
	ncpu = libbpf_num_possible_cpus();
	counters_fd = bpf_map__fd(bpf_object__find_map_by_name(sock, "counters"));
	uint64_t kc[8] = {0};
	uint64_t *vals = calloc((size_t)ncpu, sizeof(uint64_t));
	for (uint32_t k = 0; k < 8 && vals; k++)
		if (!bpf_map_lookup_elem(counters_fd, &k, vals))
			for (int c = 0; c < ncpu; c++)
				kc[k] += vals[c];
	printf("{\"records\": %llu, \"bytes\": %llu, \"cpu_s\": %.6f, \"wall_s\": %.6f, \"kernel_records\": %llu, "
	       "\"kernel_drop_ringbuf\": %llu}\n",
	       (unsigned long long)records, (unsigned long long)bytes, cpu_s() - cpu0,
	       (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, (unsigned long long)kc[0],
	       (unsigned long long)kc[1]);
	fflush(stdout);
	ring_buffer__free(rb);
	free(vals);
	bpf_object__close(tls);
	bpf_object__close(proc);
	bpf_object__close(sock);
	return 0;
}
