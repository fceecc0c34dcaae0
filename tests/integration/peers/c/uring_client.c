/* uring_client PORT: connects to 127.0.0.1:PORT with connect(2), then sends an HTTP request and reads the
 * answer through io_uring (IORING_OP_SEND / IORING_OP_RECV). Prints "PID <pid> LPORT <port> SENT <n>
 * RECEIVED <n>" so the test knows the truth. */
#include <arpa/inet.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int submit_one(struct io_uring *ring)
{
	struct io_uring_cqe *cqe;
	int res;

	io_uring_submit(ring);
	if (io_uring_wait_cqe(ring, &cqe) < 0)
		return -1;
	res = cqe->res;
	io_uring_cqe_seen(ring, cqe);
	return res;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t alen = sizeof(a);
	const char *req = "GET /uring HTTP/1.0\r\nHost: uring.test\r\n\r\n";
	static char buf[1 << 16];
	struct io_uring ring;
	long received = 0;
	int fd, n;

	if (argc < 2)
		return 2;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || io_uring_queue_init(4, &ring, 0) < 0)
		return 1;
	io_uring_prep_send(io_uring_get_sqe(&ring), fd, req, strlen(req), 0);
	if (submit_one(&ring) != (int)strlen(req))
		return 1;
	for (;;) {
		io_uring_prep_recv(io_uring_get_sqe(&ring), fd, buf, sizeof(buf), 0);
		n = submit_one(&ring);
		if (n <= 0)
			break;
		received += n;
	}
	getsockname(fd, (struct sockaddr *)&a, &alen);
	printf("PID %d LPORT %d SENT %zu RECEIVED %ld\n", getpid(), ntohs(a.sin_port), strlen(req), received);
	io_uring_queue_exit(&ring);
	close(fd);
	return 0;
}
