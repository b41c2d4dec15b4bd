/* cac_vpcd: an emulated CAC smart card for tests.
 *
 * libcacard (use_hw=removable) mirrors the certificates and keys of a removable PKCS#11
 * slot of an NSS database (here SoftHSM loaded as an NSS module) as a CAC card. This
 * program plugs that card into pcscd through the vsmartcard vpcd driver: it connects to
 * vpcd's TCP port and answers its messages, so OpenSC (cac driver) sees a real card.
 *
 * vpcd protocol: every message either way is a 2-byte big-endian length and the payload.
 * A 1-byte message from vpcd is a control: 0 power off, 1 power on, 2 reset, 4 get ATR
 * (answered with the ATR). Any other message is a command APDU, answered with the
 * response APDU. Power, reset and get ATR of 1 byte get no answer except get ATR.
 *
 * Usage: cac_vpcd [-v] [-H host] [-p port] [-w seconds] sql:NSSDB_DIR
 *   -p  vpcd port (default 35963), -H host (default 127.0.0.1)
 *   -w  how long to retry connecting to vpcd (default 30 s)
 *   -v  log every message on stderr
 * Prints "ready reader=<name> atr=<hex>" on stdout once connected. SIGTERM/SIGINT: clean
 * exit 0. Exit 1 on errors (vpcd closed the connection, no card, ...).
 *
 * Built by the Makefile with $(pkg-config --cflags --libs libcacard) (libcacard-dev,
 * installed by make deps).
 */
#include <stdio.h>
#include <stdlib.h>

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libcacard.h>

#define MSG_MAX 65535

static int verbose;

static void hexlog(const char *what, const unsigned char *p, int n)
{
	if (!verbose)
		return;
	fprintf(stderr, "cac_vpcd: %s (%d):", what, n);
	for (int i = 0; i < n; i++)
		fprintf(stderr, " %02X", p[i]);
	fputc('\n', stderr);
}

/* One write() per message: header and payload together (Nagle stalls otherwise). */
static int send_msg(int fd, const unsigned char *p, int n)
{
	unsigned char buf[2 + MSG_MAX];
	size_t len, off = 0;

	if (n < 0 || n > MSG_MAX)
		return -1;
	buf[0] = (unsigned char)(n >> 8);
	buf[1] = (unsigned char)n;
	memcpy(buf + 2, p, (size_t)n);
	len = (size_t)n + 2;
	while (off < len) {
		ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	return 0;
}

/* Waits up to ms for a signal on sfd. Returns 1 when a stop signal came. */
static int stop_requested(int sfd, int ms)
{
	struct pollfd pfd = {.fd = sfd, .events = POLLIN};
	struct signalfd_siginfo si;

	if (poll(&pfd, 1, ms) > 0 && read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		return 1;
	return 0;
}

static int connect_vpcd(const char *host, const char *port, int wait_s, int sfd)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	int tries = wait_s * 5 + 1;

	for (int t = 0; t < tries; t++) {
		struct addrinfo *res = NULL, *ai;
		int rc = getaddrinfo(host, port, &hints, &res);
		if (rc != 0) {
			fprintf(stderr, "cac_vpcd: %s:%s: %s\n", host, port, gai_strerror(rc));
			return -1;
		}
		for (ai = res; ai; ai = ai->ai_next) {
			int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
			if (fd < 0)
				continue;
			if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
				int one = 1;
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				freeaddrinfo(res);
				return fd;
			}
			close(fd);
		}
		freeaddrinfo(res);
		if (stop_requested(sfd, 200))
			return -2;
	}
	fprintf(stderr, "cac_vpcd: could not connect to vpcd at %s:%s within %d s\n", host, port,
		wait_s);
	return -1;
}

/* The first reader whose slot holds a card (a token with a certificate). */
static VReader *find_reader(void)
{
	VReaderList *list = vreader_get_reader_list();
	VReader *found = NULL;

	for (VReaderListEntry *e = vreader_list_get_first(list); e && !found;
	     e = vreader_list_get_next(e)) {
		VReader *r = vreader_list_get_reader(e);
		if (verbose)
			fprintf(stderr, "cac_vpcd: reader \"%s\" card=%s\n", vreader_get_name(r),
				vreader_card_is_present(r) == VREADER_OK ? "yes" : "no");
		if (vreader_card_is_present(r) == VREADER_OK)
			found = r;
		else
			vreader_free(r);
	}
	vreader_list_delete(list);
	return found;
}

/* Handles one complete message from vpcd. Returns -1 when the connection is broken. */
static int handle(int fd, VReader *reader, const unsigned char *msg, int n, unsigned char *atr,
		  int *atr_len)
{
	static unsigned char resp[MSG_MAX];

	if (n == 1) {
		int len = 64;
		switch (msg[0]) {
		case 0:
			if (verbose)
				fprintf(stderr, "cac_vpcd: power off\n");
			vreader_power_off(reader);
			return 0;
		case 1:
		case 2:
			if (verbose)
				fprintf(stderr, "cac_vpcd: %s\n",
					msg[0] == 1 ? "power on" : "reset");
			if (vreader_power_on(reader, atr, &len) == VREADER_OK)
				*atr_len = len;
			return 0;
		case 4:
			/* Polled all the time: answer the cached ATR, never power-cycle here. */
			hexlog("get ATR ->", atr, *atr_len);
			return send_msg(fd, atr, *atr_len);
		default:
			break; /* a 1-byte APDU? answer it as one */
		}
	}
	int rlen = (int)sizeof(resp);
	hexlog("C-APDU", msg, n);
	if (vreader_xfr_bytes(reader, (unsigned char *)msg, n, resp, &rlen) != VREADER_OK ||
	    rlen < 2) {
		resp[0] = 0x6F;
		resp[1] = 0x00;
		rlen = 2;
	}
	hexlog("R-APDU", resp, rlen);
	return send_msg(fd, resp, rlen);
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *port = "35963";
	int wait_s = 30, opt, rc = 1;
	static unsigned char buf[2 + MSG_MAX];
	size_t have = 0;
	unsigned char atr[64];
	int atr_len = (int)sizeof(atr);
	sigset_t mask;

	while ((opt = getopt(argc, argv, "vH:p:w:")) != -1) {
		switch (opt) {
		case 'v':
			verbose = 1;
			break;
		case 'H':
			host = optarg;
			break;
		case 'p':
			port = optarg;
			break;
		case 'w':
			wait_s = atoi(optarg);
			break;
		default:
			goto usage;
		}
	}
	if (optind != argc - 1 || strchr(argv[optind], '"'))
		goto usage;

	/* Block the stop signals before NSS/libcacard start threads, then read them from a
	 * signalfd in the poll loop (no handler races, no busy loop). */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0) {
		perror("cac_vpcd: signalfd");
		return 1;
	}

	char *opts = g_strdup_printf("db=\"%s\",use_hw=removable", argv[optind]);
	VCardEmulOptions *eo = vcard_emul_options(opts);
	g_free(opts);
	if (!eo || vcard_emul_init(eo) != VCARD_EMUL_OK) {
		fprintf(stderr, "cac_vpcd: vcard_emul_init failed for NSS DB %s\n", argv[optind]);
		return 1;
	}
	VReader *reader = find_reader();
	if (!reader) {
		fprintf(stderr, "cac_vpcd: no removable slot with a certificate in %s\n",
			argv[optind]);
		return 1;
	}
	if (vreader_power_on(reader, atr, &atr_len) != VREADER_OK) {
		fprintf(stderr, "cac_vpcd: power on failed\n");
		return 1;
	}

	int fd = connect_vpcd(host, port, wait_s, sfd);
	if (fd == -2) {
		rc = 0;
		goto out;
	}
	if (fd < 0)
		goto out;
	printf("ready reader=%s atr=", vreader_get_name(reader));
	for (int i = 0; i < atr_len; i++)
		printf("%02X", atr[i]);
	printf("\n");
	fflush(stdout);

	for (;;) {
		struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN},
					{.fd = sfd, .events = POLLIN}};
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("cac_vpcd: poll");
			break;
		}
		if (pfd[1].revents) {
			if (verbose)
				fprintf(stderr, "cac_vpcd: stop signal\n");
			rc = 0;
			break;
		}
		if (!pfd[0].revents)
			continue;
		ssize_t r = recv(fd, buf + have, sizeof(buf) - have, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fprintf(stderr, "cac_vpcd: vpcd closed the connection\n");
			break;
		}
		have += (size_t)r;
		/* process every complete message in the buffer */
		size_t off = 0;
		int broken = 0;
		while (have - off >= 2) {
			size_t n = ((size_t)buf[off] << 8) | buf[off + 1];
			if (have - off - 2 < n)
				break;
			if (n > 0 && handle(fd, reader, buf + off + 2, (int)n, atr, &atr_len) < 0) {
				broken = 1;
				break;
			}
			off += 2 + n;
		}
		if (broken) {
			fprintf(stderr, "cac_vpcd: write to vpcd failed\n");
			break;
		}
		memmove(buf, buf + off, have - off);
		have -= off;
	}
	close(fd);
out:
	vreader_power_off(reader);
	vreader_free(reader);
	fflush(stderr);
	/* vcard_emul_finalize() may wait on libcacard's token event thread (blocked in
	 * NSS's SECMOD_WaitForAnyTokenEvent); _exit skips that. */
	_exit(rc);
usage:
	fprintf(stderr, "usage: %s [-v] [-H host] [-p port] [-w seconds] sql:NSSDB_DIR\n", argv[0]);
	return 2;
}
