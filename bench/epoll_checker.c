/* The C baseline for bench/health_bench.py: the same checks as hacontrol's HealthChecker, done
 * the cheapest way (one epoll loop, non-blocking connect, no allocation per check), to measure
 * the floor of CPU per check on this machine.
 *
 * usage: epoll_checker tcp|http N_ADDRS PORT_BASE N_PORTS INTERVAL TIMEOUT WARMUP SECONDS
 * Targets 127.1.A.B:port as epoll_responder.c serves them. First probes are spread uniformly over
 * the interval; each target is probed every INTERVAL (no jitter); a tick every 10 ms launches
 * the due targets and sweeps deadlines (a FIFO by launch time). tcp: passes on connect. http:
 * sends a GET with Connection: close, passes on "HTTP/1.x 200" in the first read, then closes
 * (with RST: SO_LINGER 0, like hacontrol).
 * After WARMUP seconds it measures for SECONDS and prints one JSON line: checks, ok, failed,
 * timeouts, cpu_s (user+sys of this process), p50/p99 latency (s) of checks in the window. */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    struct sockaddr_in sa;
    double due, started;
    int fd;
    unsigned gen;
    char sent;
} target;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double usr(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
}

static double sys_(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static target *T;
static int N, ep, http, measuring;
static long checks, ok, failed, timeouts, nlat, caplat;
static double *lat, interval;
static const char REQ[] = "GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: c\r\nAccept: */*\r\n"
                          "Connection: close\r\n\r\n";
/* due queue: launch order == due order (fixed interval), so a ring of indices */
static int *dq, dq_head, dq_len;
/* in-flight FIFO by launch time: (idx, gen) */
static int *fq_idx;
static unsigned *fq_gen;
static double *fq_deadline;
static long fq_head, fq_len, fq_cap;

static void finish(int i, int good, int timed_out, double t) {
    target *x = &T[i];
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
    x->gen++;
    if (measuring) {
        checks++;
        if (good)
            ok++;
        else
            failed++;
        if (timed_out)
            timeouts++;
        if (nlat < caplat)
            lat[nlat++] = t - x->started;
    }
    x->due = x->started + interval;
    dq[(dq_head + dq_len++) % N] = i;
}

static void launch(int i, double t, double timeout) {
    target *x = &T[i];
    x->started = t;
    x->sent = 0;
    x->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    long q = (fq_head + fq_len++) % fq_cap;
    fq_idx[q] = i;
    fq_gen[q] = x->gen;
    fq_deadline[q] = t + timeout;
    if (x->fd < 0) {
        finish(i, 0, 0, t);
        return;
    }
    struct linger lg = {1, 0}; /* close with RST, as hacontrol does */
    setsockopt(x->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int r = connect(x->fd, (struct sockaddr *)&x->sa, sizeof x->sa);
    if (r < 0 && errno != EINPROGRESS) {
        finish(i, 0, 0, t);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (unsigned)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, x->fd, &ev);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s tcp|http N_ADDRS PORT_BASE N_PORTS INTERVAL TIMEOUT WARMUP "
                        "SECONDS\n", argv[0]);
        return 2;
    }
    http = strcmp(argv[1], "http") == 0;
    int n_addrs = atoi(argv[2]), port_base = atoi(argv[3]), n_ports = atoi(argv[4]);
    interval = atof(argv[5]);
    double timeout = atof(argv[6]), warmup = atof(argv[7]), seconds = atof(argv[8]);
    N = n_addrs * n_ports;
    T = calloc(N, sizeof *T);
    dq = calloc(N, sizeof *dq);
    fq_cap = 4L * N + 16;
    fq_idx = calloc(fq_cap, sizeof *fq_idx);
    fq_gen = calloc(fq_cap, sizeof *fq_gen);
    fq_deadline = calloc(fq_cap, sizeof *fq_deadline);
    caplat = (long)(N / interval * seconds * 1.5) + 1000;
    lat = calloc(caplat, sizeof *lat);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    ep = epoll_create1(EPOLL_CLOEXEC);
    double t0 = now();
    srand(12345);
    /* sort by a random first due, spread over the interval */
    for (int i = 0; i < N; i++) {
        int a = i / n_ports, p = i % n_ports;
        T[i].sa.sin_family = AF_INET;
        T[i].sa.sin_port = htons(port_base + p);
        T[i].sa.sin_addr.s_addr = htonl((127u << 24) | (1u << 16) | ((a / 250) << 8) | (1 + a % 250));
        T[i].fd = -1;
        dq[i] = i;
    }
    for (int i = N - 1; i > 0; i--) { /* shuffle, then dues in order */
        int j = rand() % (i + 1), tmp = dq[i];
        dq[i] = dq[j];
        dq[j] = tmp;
    }
    for (int k = 0; k < N; k++)
        T[dq[k]].due = t0 + interval * k / N;
    dq_head = 0;
    dq_len = N;
    double measure_at = t0 + warmup, end_at = measure_at + seconds, usr0 = 0, sys0 = 0, wall0 = 0;
    struct epoll_event evs[1024];
    char buf[4096];
    for (;;) {
        double t = now();
        if (!measuring && t >= measure_at) {
            measuring = 1;
            usr0 = usr();
            sys0 = sys_();
            wall0 = t;
        }
        if (t >= end_at)
            break;
        while (fq_len && fq_deadline[fq_head] <= t) { /* deadline sweep */
            int i = fq_idx[fq_head];
            if (T[i].gen == fq_gen[fq_head] && T[i].fd >= 0)
                finish(i, 0, 1, t);
            fq_head = (fq_head + 1) % fq_cap;
            fq_len--;
        }
        while (dq_len && T[dq[dq_head]].due <= t) { /* launch the due slice */
            int i = dq[dq_head];
            dq_head = (dq_head + 1) % N;
            dq_len--;
            launch(i, t, timeout);
        }
        double next = t + 0.010;
        int ms = (int)((next - now()) * 1000);
        int n = epoll_wait(ep, evs, 1024, ms > 0 ? ms : 0);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            target *x = &T[i];
            if (x->fd < 0)
                continue;
            double tn = now();
            if (!x->sent) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || !http) {
                    finish(i, !err, 0, tn);
                    continue;
                }
                x->sent = 1;
                if (send(x->fd, REQ, sizeof REQ - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof REQ - 1)) {
                    finish(i, 0, 0, tn);
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
                continue;
            }
            ssize_t r = recv(x->fd, buf, sizeof buf, 0);
            if (r < 0 && errno == EAGAIN)
                continue;
            finish(i, r >= 12 && memcmp(buf, "HTTP/1.", 7) == 0 && memcmp(buf + 9, "200", 3) == 0,
                   0, tn);
        }
    }
    double usr_s = usr() - usr0, sys_s = sys_() - sys0, wall = now() - wall0;
    qsort(lat, nlat, sizeof *lat, cmpd);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(long)(nlat * 0.99)] : 0;
    long rss_kb = 0;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            rss_kb = atol(line + 6);
    if (f)
        fclose(f);
    printf("{\"impl\": \"c-epoll\", \"mode\": \"%s\", \"targets\": %d, \"wall_s\": %.3f, "
           "\"checks\": %ld, \"ok\": %ld, \"failed\": %ld, \"timeouts\": %ld, \"cpu_s\": %.4f, "
           "\"usr_s\": %.4f, \"sys_s\": %.4f, "
           "\"p50_s\": %.6f, \"p99_s\": %.6f, \"rss_kb\": %ld}\n",
           argv[1], N, wall, checks, ok, failed, timeouts, usr_s + sys_s, usr_s, sys_s, p50, p99,
           rss_kb);
    return 0;
}
