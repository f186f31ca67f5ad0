/* Loopback real servers for bench/health_bench.py: one epoll process listening on
 * 127.1.A.B addresses x ports. A connection gets a fixed HTTP 200 answer to its first request
 * (then closed: the checkers' requests fit one read); a TCP check that connects and closes is just accepted and closed.
 *
 * usage: epoll_responder N_ADDRS PORT_BASE N_PORTS SECONDS
 *   addresses 127.1.0.1 .. (A = i / 250, B = 1 + i % 250); exits after SECONDS (bounded).
 * Prints "ready <listeners>" on stdout once every socket listens. Loopback only. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char RESP[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    "Connection: close\r\n\r\nok\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s N_ADDRS PORT_BASE N_PORTS SECONDS\n", argv[0]);
        return 2;
    }
    int n_addrs = atoi(argv[1]), port_base = atoi(argv[2]), n_ports = atoi(argv[3]);
    double until = now() + atof(argv[4]);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int maxfd = (int)rl.rlim_cur + 1;
    char *is_listener = calloc(maxfd, 1);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int listeners = 0;
    for (int i = 0; i < n_addrs; i++) {
        for (int p = 0; p < n_ports; p++) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port_base + p)};
            sa.sin_addr.s_addr = htonl((127u << 24) | (1u << 16) | ((i / 250) << 8) | (1 + i % 250));
            if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 4096)) {
                perror("bind/listen");
                return 1;
            }
            is_listener[fd] = 1;
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            listeners++;
        }
    }
    printf("ready %d\n", listeners);
    fflush(stdout);
    struct epoll_event evs[512];
    char buf[4096];
    while (now() < until) {
        int n = epoll_wait(ep, evs, 512, 200);
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            if (is_listener[fd]) {
                for (;;) {
                    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0)
                        break;
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && errno == EAGAIN)
                continue;
            if (r > 0)
                (void)!write(fd, RESP, sizeof RESP - 1);
            close(fd);
        }
    }
    return 0;
}
