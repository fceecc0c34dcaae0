/* Test peer for first-bytes capture: an OpenSSL HTTP/2 client linked statically (gcc -static ... -lssl
 * -lcrypto), making its one request as soon as it starts. The HTTP/2 bytes (preface, SETTINGS, HEADERS)
 * come ready-made in a file so no HPACK encoder is needed here.
 * Usage: tls_h2_client IP PORT REQUEST-FILE [DELAY-MS]. Prints "STATUS-FRAMES BYTES T_REQ_NS" (T_REQ_NS: CLOCK_MONOTONIC
 * when the request was written). Exits 0 once stream 1 has ended. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int read_full(SSL *ssl, unsigned char *buf, int n)
{
	int got = 0;
	while (got < n) {
		int r = SSL_read(ssl, buf + got, n - got);
		if (r <= 0)
			return -1;
		got += r;
	}
	return got;
}

int main(int argc, char **argv)
{
	static unsigned char req[65536], payload[1 << 20];
	static const unsigned char settings_ack[9] = {0, 0, 0, 4, 1, 0, 0, 0, 0};
	static const unsigned char alpn[] = "\x02h2";
	struct sockaddr_in sa = {0};
	unsigned char hdr[9];
	long long total = 0, t;
	int fd, frames = 0;
	size_t n;
	FILE *f;
	SSL_CTX *ctx;
	SSL *ssl;

	if (argc != 4 && argc != 5)
		return 2;
	f = fopen(argv[3], "rb");
	if (!f)
		return 2;
	n = fread(req, 1, sizeof(req), f);
	fclose(f);
	if (argc == 5)
		usleep(atoi(argv[4]) * 1000);
	sa.sin_family = AF_INET;
	sa.sin_port = htons(atoi(argv[2]));
	inet_pton(AF_INET, argv[1], &sa.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		return 3;
	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_alpn_protos(ctx, alpn, 3);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		return 4;
	t = mono_ns();
	if (SSL_write(ssl, req, (int)n) != (int)n)
		return 5;
	for (;;) {
		unsigned len;
		if (read_full(ssl, hdr, 9) < 0)
			return 6;
		len = (hdr[0] << 16) | (hdr[1] << 8) | hdr[2];
		if (len > sizeof(payload) || (len && read_full(ssl, payload, (int)len) < 0))
			return 7;
		frames++;
		total += len;
		if (hdr[3] == 4 && !(hdr[4] & 1))
			SSL_write(ssl, settings_ack, sizeof(settings_ack));
		/* DATA or HEADERS with END_STREAM on stream 1. */
		if ((hdr[3] == 0 || hdr[3] == 1) && (hdr[4] & 1) && ((hdr[5] << 24 | hdr[6] << 16 | hdr[7] << 8 | hdr[8]) & 0x7fffffff) == 1)
			break;
	}
	printf("%d %lld %lld\n", frames, total, t);
	SSL_shutdown(ssl);
	close(fd);
	return 0;
}
