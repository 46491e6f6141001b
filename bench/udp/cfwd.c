/* cfwd: a small forwarder that follows Go flannel's udp proxy design (proxy.c), the C baseline
 * for bench/udp/run.py and the wire-interop peer for tests/udp.
 *
 * poll() on tun + socket, one read()/sendto() per packet, linear route table, TTL decrement
 * with RFC 1624 incremental checksum update, payload = the inner IPv4 packet. Socket buffers
 * set with SO_RCVBUFFORCE/SO_SNDBUFFORCE to the same size as the Python datapath. Unlike
 * proxy.c it sends no ICMP (not measured) and it does not check senders (flannel does not).
 *
 * usage: cfwd TUN BIND_IP PORT BUFSIZE SUBNET/LEN=UNDERLAY_IP...
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ROUTES 256
struct route { in_addr_t net, mask; struct sockaddr_in peer; };
static struct route routes[MAX_ROUTES];
static int nroutes;
static volatile sig_atomic_t stop;
static unsigned long long tx_pkts, rx_pkts, no_route, ttl_drop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static struct sockaddr_in *find_route(in_addr_t dst) {
	for (int i = 0; i < nroutes; i++)
		if ((dst & routes[i].mask) == routes[i].net) return &routes[i].peer;
	return NULL;
}

static int decrement_ttl(struct iphdr *iph) {
	if (iph->ttl <= 1) return 0;
	iph->ttl--;
	/* RFC 1624, as proxy.c does it */
	if (iph->check >= htons(0xFFFFu - 0x100))
		iph->check += htons(0x100) + 1;
	else
		iph->check += htons(0x100);
	return 1;
}

int main(int argc, char **argv) {
	if (argc < 5) {
		fprintf(stderr, "usage: %s TUN BIND_IP PORT BUFSIZE SUBNET/LEN=IP...\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[3]), bufsize = atoi(argv[4]);
	for (int i = 5; i < argc && nroutes < MAX_ROUTES; i++) {
		char spec[64], *eq, *sl;
		snprintf(spec, sizeof spec, "%s", argv[i]);
		if (!(eq = strchr(spec, '=')) || !(sl = strchr(spec, '/'))) return 2;
		*eq = 0; *sl = 0;
		int len = atoi(sl + 1);
		struct route *r = &routes[nroutes++];
		r->mask = len ? htonl(0xFFFFFFFFu << (32 - len)) : 0;
		r->net = inet_addr(spec) & r->mask;
		r->peer.sin_family = AF_INET;
		r->peer.sin_port = htons(port);
		r->peer.sin_addr.s_addr = inet_addr(eq + 1);
	}
	int tun = open("/dev/net/tun", O_RDWR);
	if (tun < 0) { perror("open tun"); return 1; }
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
	if (ioctl(tun, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); return 1; }
	int sock = socket(AF_INET, SOCK_DGRAM, 0);
	if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof bufsize) < 0)
		setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
	if (setsockopt(sock, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) < 0)
		setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
	struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(port) };
	me.sin_addr.s_addr = inet_addr(argv[2]);
	if (bind(sock, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	struct pollfd fds[2] = { { .fd = tun, .events = POLLIN }, { .fd = sock, .events = POLLIN } };
	static char buf[65536];
	while (!stop) {
		if (poll(fds, 2, 500) < 0) { if (errno == EINTR) continue; perror("poll"); return 1; }
		if (fds[0].revents & POLLIN) {
			ssize_t n = read(tun, buf, sizeof buf);
			if (n >= (ssize_t)sizeof(struct iphdr)) {
				struct iphdr *iph = (struct iphdr *)buf;
				struct sockaddr_in *peer = find_route(iph->daddr);
				if (!peer) no_route++;
				else if (!decrement_ttl(iph)) ttl_drop++;
				else if (sendto(sock, buf, n, 0, (struct sockaddr *)peer, sizeof *peer) > 0) tx_pkts++;
			}
		}
		if (fds[1].revents & POLLIN) {
			ssize_t n = recv(sock, buf, sizeof buf, 0);
			if (n > 0 && write(tun, buf, n) > 0) rx_pkts++;
		}
	}
	fprintf(stderr, "cfwd: tx %llu rx %llu no_route %llu ttl %llu\n", tx_pkts, rx_pkts, no_route,
	        ttl_drop);
	return 0;
}
