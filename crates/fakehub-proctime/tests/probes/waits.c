/*
 * C probe for the fakehub time preload. Usage: waits MODE [ARGS]. Prints lines
 *   EVENT <name> elapsed_ns=<virtual ns since the start> ok=<1 if the call returned what it should> ...
 * Modes: waits, eintr, stray, clocks, fork, jump, speed, timers, pingpong, relay, handler, idle SECONDS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SEC INT64_C(1000000000)

static int64_t t0, w0;

static int64_t ns_of(const struct timespec *t) { return (int64_t)t->tv_sec * SEC + t->tv_nsec; }
static struct timespec ts_of(int64_t ns) {
    struct timespec t = {(time_t)(ns / SEC), (long)(ns % SEC)};
    return t;
}
static int64_t mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return ns_of(&t);
}
static int64_t wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return ns_of(&t);
}
static int64_t elapsed(void) { return mono() - t0; }

static void event(const char *name, int64_t expected_s, int ok, long rc, int err) {
    printf("EVENT %s elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=%d rc=%ld errno=%d\n", name, elapsed(),
           expected_s * SEC, ok, rc, err);
    fflush(stdout);
}

static long futex(atomic_int *addr, int op, int val, const struct timespec *ts, int val3) {
    return syscall(SYS_futex, addr, op, val, ts, NULL, val3);
}

/* ---------------------------------------------------------------------------------------------- */
/* mode waits: every wrapped wait times out at its own virtual deadline; some are woken earlier     */
/* ---------------------------------------------------------------------------------------------- */

static int p_never[2], p_ready[2], ep;
static pthread_cond_t cond_rt = PTHREAD_COND_INITIALIZER, cond_mono, cond_sig, cond_untimed;
static pthread_mutex_t mx = PTHREAD_MUTEX_INITIALIZER, locked = PTHREAD_MUTEX_INITIALIZER;
static sem_t sem_never, sem_posted;
static atomic_int fw_never, fw_woken;
static int flag_sig, flag_untimed;

typedef void (*job_fn)(const char *name, int64_t s);
struct job {
    const char *name;
    int64_t s;
    job_fn fn;
};

static void j_usleep(const char *n, int64_t s) {
    int rc = usleep((useconds_t)(s * 1000000));
    event(n, s, rc == 0, rc, 0);
}
static void j_sleep(const char *n, int64_t s) {
    unsigned r = sleep((unsigned)s);
    event(n, s, r == 0, (long)r, 0);
}
static void j_nanosleep(const char *n, int64_t s) {
    struct timespec ts = ts_of(s * SEC);
    int rc = nanosleep(&ts, NULL);
    event(n, s, rc == 0, rc, 0);
}
static void j_masked_nanosleep(const char *n, int64_t s) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    struct timespec ts = ts_of(s * SEC);
    int rc = nanosleep(&ts, NULL);
    event(n, s, rc == 0, rc, 0);
}
static void j_ppoll(const char *n, int64_t s) {
    struct pollfd p = {p_never[0], POLLIN, 0};
    struct timespec ts = ts_of(s * SEC);
    int rc = ppoll(&p, 1, &ts, NULL);
    event(n, s, rc == 0 && p.revents == 0, rc, 0);
}
static void j_poll(const char *n, int64_t s) {
    struct pollfd p = {p_never[0], POLLIN, 0};
    int rc = poll(&p, 1, (int)(s * 1000));
    event(n, s, rc == 0, rc, 0);
}
static void j_pselect(const char *n, int64_t s) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(p_never[0], &r);
    struct timespec ts = ts_of(s * SEC);
    int rc = pselect(p_never[0] + 1, &r, NULL, NULL, &ts, NULL);
    event(n, s, rc == 0 && !FD_ISSET(p_never[0], &r) && ts.tv_sec == s, rc, 0);
}
static void j_cn_mono(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    event(n, s, rc == 0, rc, 0);
}
static void j_cn_wall(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    int rc = clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL);
    event(n, s, rc == 0, rc, 0);
}
static void j_select(const char *n, int64_t s) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(p_never[0], &r);
    struct timeval tv = {(time_t)s, 0};
    int rc = select(p_never[0] + 1, &r, NULL, NULL, &tv);
    /* Linux: on timeout the set is cleared and the timeval holds the time left (0) */
    event(n, s, rc == 0 && !FD_ISSET(p_never[0], &r) && tv.tv_sec == 0 && tv.tv_usec == 0, rc, 0);
}
static void j_epoll_wait(const char *n, int64_t s) {
    struct epoll_event ev;
    int rc = epoll_wait(ep, &ev, 1, (int)(s * 1000));
    event(n, s, rc == 0, rc, 0);
}
static void j_epoll_pwait2(const char *n, int64_t s) {
    struct epoll_event ev;
    struct timespec ts = ts_of(s * SEC);
    int rc = epoll_pwait2(ep, &ev, 1, &ts, NULL);
    event(n, s, rc == 0, rc, 0);
}
static void j_cond_rt(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (rc == 0) rc = pthread_cond_timedwait(&cond_rt, &mx, &ts); /* nobody signals: only spurious 0 */
    pthread_mutex_unlock(&mx);
    event(n, s, rc == ETIMEDOUT, rc, 0);
}
static void j_cond_mono(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (rc == 0) rc = pthread_cond_timedwait(&cond_mono, &mx, &ts);
    pthread_mutex_unlock(&mx);
    event(n, s, rc == ETIMEDOUT, rc, 0);
}
static void j_cond_clockwait(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (rc == 0) rc = pthread_cond_clockwait(&cond_rt, &mx, CLOCK_MONOTONIC, &ts);
    pthread_mutex_unlock(&mx);
    event(n, s, rc == ETIMEDOUT, rc, 0);
}
static void j_sem_timedwait(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    int rc = sem_timedwait(&sem_never, &ts);
    int e = errno;
    event(n, s, rc == -1 && e == ETIMEDOUT, rc, e);
}
static void j_sem_clockwait(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    int rc = sem_clockwait(&sem_never, CLOCK_MONOTONIC, &ts);
    int e = errno;
    event(n, s, rc == -1 && e == ETIMEDOUT, rc, e);
}
static void j_mutex_timedlock(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    int rc = pthread_mutex_timedlock(&locked, &ts);
    event(n, s, rc == ETIMEDOUT, rc, 0);
}
static void j_futex_wait(const char *n, int64_t s) {
    struct timespec ts = ts_of(s * SEC);
    long rc = futex(&fw_never, FUTEX_WAIT_PRIVATE, 0, &ts, 0);
    int e = errno;
    event(n, s, rc == -1 && e == ETIMEDOUT, rc, e);
}
static void j_futex_bitset_mono(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    long rc = futex(&fw_never, FUTEX_WAIT_BITSET_PRIVATE, 0, &ts, FUTEX_BITSET_MATCH_ANY);
    int e = errno;
    event(n, s, rc == -1 && e == ETIMEDOUT, rc, e);
}
static void j_futex_bitset_wall(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    long rc = futex(&fw_never, FUTEX_WAIT_BITSET_PRIVATE | FUTEX_CLOCK_REALTIME, 0, &ts, FUTEX_BITSET_MATCH_ANY);
    int e = errno;
    event(n, s, rc == -1 && e == ETIMEDOUT, rc, e);
}
/* woken at 5 s by main, long before their 100 s timeouts */
static void j_woken_cond(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + 100 * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (!flag_sig && rc == 0) rc = pthread_cond_timedwait(&cond_sig, &mx, &ts);
    int seen = flag_sig;
    pthread_mutex_unlock(&mx);
    event(n, s, seen && rc == 0, rc, 0);
}
static void j_woken_sem(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + 100 * SEC);
    int rc = sem_clockwait(&sem_posted, CLOCK_MONOTONIC, &ts);
    event(n, s, rc == 0, rc, errno);
}
static void j_woken_futex(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + 100 * SEC);
    long rc = 0;
    while (atomic_load(&fw_woken) == 0) {
        rc = futex(&fw_woken, FUTEX_WAIT_BITSET_PRIVATE, 0, &ts, FUTEX_BITSET_MATCH_ANY);
        if (rc == -1 && errno == ETIMEDOUT) break;
    }
    event(n, s, atomic_load(&fw_woken) == 1 && (rc == 0 || errno == EAGAIN), rc, 0);
}
static void j_woken_select(const char *n, int64_t s) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(p_never[0], &r);
    FD_SET(p_ready[0], &r);
    int nfds = (p_never[0] > p_ready[0] ? p_never[0] : p_ready[0]) + 1;
    struct timeval tv = {100, 0};
    int rc = select(nfds, &r, NULL, NULL, &tv);
    /* exactly the ready descriptor stays set; the timeval says ~95 s are left */
    int ok = rc == 1 && FD_ISSET(p_ready[0], &r) && !FD_ISSET(p_never[0], &r) && tv.tv_sec >= 94 && tv.tv_sec <= 95;
    event(n, s, ok, rc, 0);
}
static void j_untimed_cond(const char *n, int64_t s) {
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (!flag_untimed && rc == 0) rc = pthread_cond_wait(&cond_untimed, &mx);
    pthread_mutex_unlock(&mx);
    event(n, s, rc == 0, rc, 0);
}

static void *run_job(void *arg) {
    struct job *j = arg;
    j->fn(j->name, j->s);
    return NULL;
}

static int mode_waits(void) {
    if (pipe(p_never) || pipe(p_ready)) return 2;
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p_never[0]};
    epoll_ctl(ep, EPOLL_CTL_ADD, p_never[0], &ev);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cond_mono, &ca);
    pthread_cond_init(&cond_sig, &ca);
    pthread_cond_init(&cond_untimed, NULL);
    sem_init(&sem_never, 0, 0);
    sem_init(&sem_posted, 0, 0);
    pthread_mutex_lock(&locked);
    static struct job jobs[] = {
        {"usleep", 3, j_usleep},
        {"sleep", 7, j_sleep},
        {"nanosleep", 10, j_nanosleep},
        {"ppoll", 12, j_ppoll},
        {"poll", 15, j_poll},
        {"pselect", 17, j_pselect},
        {"clock_nanosleep_mono_abs", 20, j_cn_mono},
        {"clock_nanosleep_wall_abs", 25, j_cn_wall},
        {"select", 30, j_select},
        {"masked_nanosleep", 33, j_masked_nanosleep},
        {"epoll_wait", 40, j_epoll_wait},
        {"epoll_pwait2", 45, j_epoll_pwait2},
        {"cond_realtime", 50, j_cond_rt},
        {"cond_monotonic", 55, j_cond_mono},
        {"cond_clockwait", 57, j_cond_clockwait},
        {"sem_timedwait", 60, j_sem_timedwait},
        {"sem_clockwait", 62, j_sem_clockwait},
        {"mutex_timedlock", 64, j_mutex_timedlock},
        {"futex_wait", 66, j_futex_wait},
        {"futex_bitset_mono", 68, j_futex_bitset_mono},
        {"futex_bitset_wall", 70, j_futex_bitset_wall},
        {"woken_cond", 5, j_woken_cond},
        {"woken_sem", 5, j_woken_sem},
        {"woken_futex", 5, j_woken_futex},
        {"woken_select", 5, j_woken_select},
    };
    enum { N = sizeof jobs / sizeof jobs[0] };
    pthread_t th[N], untimed;
    struct job uj = {"untimed_cond", 70, j_untimed_cond};
    pthread_create(&untimed, NULL, run_job, &uj);
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, run_job, &jobs[i]);

    struct timespec five = ts_of(5 * SEC);
    nanosleep(&five, NULL);
    pthread_mutex_lock(&mx);
    flag_sig = 1;
    pthread_cond_signal(&cond_sig);
    pthread_mutex_unlock(&mx);
    sem_post(&sem_posted);
    atomic_store(&fw_woken, 1);
    futex(&fw_woken, FUTEX_WAKE_PRIVATE, 1, NULL, 0);
    if (write(p_ready[1], "x", 1) != 1) return 2;

    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    pthread_mutex_lock(&mx);
    flag_untimed = 1;
    pthread_cond_signal(&cond_untimed);
    pthread_mutex_unlock(&mx);
    pthread_join(untimed, NULL);
    pthread_mutex_unlock(&locked);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode eintr: another signal still interrupts wrapped waits, as it would without the preload       */
/* ---------------------------------------------------------------------------------------------- */

static void on_usr1(int sig) { (void)sig; }

static void e_nanosleep(const char *n, int64_t s) {
    struct timespec ts = ts_of(s * SEC), rem = {0, 0};
    int rc = nanosleep(&ts, &rem);
    int e = errno;
    int64_t left = ns_of(&rem);
    /* interrupted at 5 s: about 55 s left */
    event(n, 5, rc == -1 && e == EINTR && left > 54 * SEC && left <= 55 * SEC + SEC / 10, rc, e);
}
static void e_clock_nanosleep(const char *n, int64_t s) {
    struct timespec ts = ts_of(s * SEC), rem = {0, 0};
    int rc = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &rem);
    event(n, 5, rc == EINTR && rem.tv_sec >= 54 && rem.tv_sec <= 55, rc, 0);
}
static void e_poll(const char *n, int64_t s) {
    struct pollfd p = {p_never[0], POLLIN, 0};
    int rc = poll(&p, 1, (int)(s * 1000));
    int e = errno;
    event(n, 5, rc == -1 && e == EINTR, rc, e);
}
static void e_select(const char *n, int64_t s) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(p_never[0], &r);
    struct timeval tv = {(time_t)s, 0};
    int rc = select(p_never[0] + 1, &r, NULL, NULL, &tv);
    int e = errno;
    /* on error the sets are left alone */
    event(n, 5, rc == -1 && e == EINTR && FD_ISSET(p_never[0], &r), rc, e);
}
static void e_epoll(const char *n, int64_t s) {
    struct epoll_event ev;
    int rc = epoll_wait(ep, &ev, 1, (int)(s * 1000));
    int e = errno;
    event(n, 5, rc == -1 && e == EINTR, rc, e);
}
static void e_sem(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    int rc = sem_clockwait(&sem_never, CLOCK_MONOTONIC, &ts);
    int e = errno;
    event(n, 5, rc == -1 && e == EINTR, rc, e);
}
static void e_futex(const char *n, int64_t s) {
    struct timespec ts = ts_of(s * SEC);
    long rc = futex(&fw_never, FUTEX_WAIT_PRIVATE, 0, &ts, 0);
    int e = errno;
    event(n, 5, rc == -1 && e == EINTR, rc, e);
}
static void e_usleep(const char *n, int64_t s) {
    int rc = usleep((useconds_t)(s * 1000000));
    int e = errno;
    event(n, 5, rc == -1 && e == EINTR, rc, e);
}

static int mode_eintr(void) {
    if (pipe(p_never)) return 2;
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p_never[0]};
    epoll_ctl(ep, EPOLL_CTL_ADD, p_never[0], &ev);
    sem_init(&sem_never, 0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    static struct job jobs[] = {
        {"eintr_nanosleep", 60, e_nanosleep}, {"eintr_clock_nanosleep", 60, e_clock_nanosleep},
        {"eintr_poll", 60, e_poll},           {"eintr_select", 60, e_select},
        {"eintr_epoll_wait", 60, e_epoll},    {"eintr_sem_clockwait", 60, e_sem},
        {"eintr_futex", 60, e_futex},         {"eintr_usleep", 30, e_usleep},
    };
    enum { N = sizeof jobs / sizeof jobs[0] };
    pthread_t th[N];
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, run_job, &jobs[i]);
    struct timespec five = ts_of(5 * SEC);
    nanosleep(&five, NULL);
    for (int i = 0; i < N; i++) pthread_kill(th[i], SIGUSR1);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode stray: a wake signal reaching a thread in an unwrapped call does not surface as EINTR       */
/* ---------------------------------------------------------------------------------------------- */

static void *reader(void *arg) {
    (void)arg;
    char c;
    ssize_t rc = read(p_ready[0], &c, 1);
    int e = errno;
    event("stray_read", 2, rc == 1, (long)rc, e);
    return NULL;
}

static int mode_stray(void) {
    if (pipe(p_ready)) return 2;
    pthread_t th;
    pthread_create(&th, NULL, reader, NULL);
    struct timespec one = ts_of(SEC);
    nanosleep(&one, NULL);
    pthread_kill(th, SIGRTMAX - 2);
    nanosleep(&one, NULL);
    if (write(p_ready[1], "x", 1) != 1) return 2;
    pthread_join(th, NULL);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode clocks                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

static int64_t clk(clockid_t c) {
    struct timespec t;
    if (clock_gettime(c, &t) != 0) return -1;
    return ns_of(&t);
}

static int mode_clocks(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct timespec tg;
    timespec_get(&tg, TIME_UTC);
    time_t tt = 0;
    time_t tr = time(&tt);
    printf("EVENT clocks realtime=%" PRId64 " realtime_coarse=%" PRId64 " monotonic=%" PRId64
           " monotonic_raw=%" PRId64 " monotonic_coarse=%" PRId64 " boottime=%" PRId64 " tai=%" PRId64
           " gettimeofday_us=%" PRId64 " timespec_get=%" PRId64 " time=%" PRId64 " time_arg=%" PRId64
           " process_cpu=%" PRId64 "\n",
           clk(CLOCK_REALTIME), clk(CLOCK_REALTIME_COARSE), clk(CLOCK_MONOTONIC), clk(CLOCK_MONOTONIC_RAW),
           clk(CLOCK_MONOTONIC_COARSE), clk(CLOCK_BOOTTIME), clk(CLOCK_TAI),
           (int64_t)tv.tv_sec * 1000000 + tv.tv_usec, ns_of(&tg), (int64_t)tr, (int64_t)tt,
           clk(CLOCK_PROCESS_CPUTIME_ID));
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode fork: a forked child and an exec'd image run on the same virtual clock                      */
/* ---------------------------------------------------------------------------------------------- */

static int mode_fork(const char *self) {
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        struct timespec ts = ts_of(30 * SEC);
        int rc = nanosleep(&ts, NULL);
        printf("EVENT fork_child elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=%d pid=%d\n", elapsed(),
               30 * SEC, rc == 0, (int)getpid());
        fflush(stdout);
        char arg[32];
        snprintf(arg, sizeof arg, "%" PRId64, t0);
        execl(self, self, "exec-child", arg, (char *)NULL);
        _exit(3);
    }
    int status = 0;
    pid_t w = waitpid(pid, &status, 0);
    event("fork_parent", 40, w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, (long)w, 0);
    return 0;
}

static int mode_exec_child(const char *t0s) {
    t0 = strtoll(t0s, NULL, 10);
    struct timespec ts = ts_of(10 * SEC);
    int rc = nanosleep(&ts, NULL);
    printf("EVENT exec_child elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=%d pid=%d\n", elapsed(), 40 * SEC,
           rc == 0, (int)getpid());
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode jump: a wall-clock jump shortens wall-clock deadlines, not monotonic ones                   */
/* ---------------------------------------------------------------------------------------------- */

static void k_cond_rt(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (rc == 0) rc = pthread_cond_timedwait(&cond_rt, &mx, &ts);
    pthread_mutex_unlock(&mx);
    event(n, 1800, rc == ETIMEDOUT, rc, 0);
}
static void k_cond_mono(const char *n, int64_t s) {
    struct timespec ts = ts_of(t0 + s * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (rc == 0) rc = pthread_cond_timedwait(&cond_mono, &mx, &ts);
    pthread_mutex_unlock(&mx);
    event(n, 3600, rc == ETIMEDOUT, rc, 0);
}
static void k_cn_wall(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    int rc = clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL);
    event(n, 1800, rc == 0, rc, 0);
}
static void k_sem(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    int rc = sem_timedwait(&sem_never, &ts);
    event(n, 1800, rc == -1 && errno == ETIMEDOUT, rc, errno);
}
static void k_futex_wall(const char *n, int64_t s) {
    struct timespec ts = ts_of(w0 + s * SEC);
    long rc = futex(&fw_never, FUTEX_WAIT_BITSET_PRIVATE | FUTEX_CLOCK_REALTIME, 0, &ts, FUTEX_BITSET_MATCH_ANY);
    event(n, 1800, rc == -1 && errno == ETIMEDOUT, rc, errno);
}
static void k_select(const char *n, int64_t s) {
    struct timeval tv = {(time_t)s, 0};
    int rc = select(0, NULL, NULL, NULL, &tv);
    event(n, 3600, rc == 0, rc, 0);
}
static void k_futex_rel(const char *n, int64_t s) {
    struct timespec ts = ts_of(s * SEC);
    long rc = futex(&fw_never, FUTEX_WAIT_PRIVATE, 0, &ts, 0);
    event(n, 3600, rc == -1 && errno == ETIMEDOUT, rc, errno);
}

static int mode_jump(void) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cond_mono, &ca);
    sem_init(&sem_never, 0, 0);
    static struct job jobs[] = {
        {"jump_cond_realtime", 3600, k_cond_rt}, {"jump_cond_monotonic", 3600, k_cond_mono},
        {"jump_clock_nanosleep_wall", 3600, k_cn_wall}, {"jump_sem_timedwait", 3600, k_sem},
        {"jump_futex_wall", 3600, k_futex_wall}, {"jump_select", 3600, k_select},
        {"jump_futex_relative", 3600, k_futex_rel},
    };
    enum { N = sizeof jobs / sizeof jobs[0] };
    pthread_t th[N];
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, run_job, &jobs[i]);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode speed: a sleep follows a speed change made while it sleeps                                  */
/* ---------------------------------------------------------------------------------------------- */

static int mode_speed(void) {
    struct timespec ts = ts_of(60 * SEC);
    int rc = nanosleep(&ts, NULL);
    event("speed_nanosleep", 60, rc == 0, rc, 0);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode timers: timerfd / setitimer / alarm scaled by the speed at set time                         */
/* ---------------------------------------------------------------------------------------------- */

static volatile sig_atomic_t alarmed;
static void on_alarm(int sig) {
    (void)sig;
    alarmed = 1;
}

static int mode_timers(void) {
    int64_t start = elapsed();
    int fd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 0}, ts_of(10 * SEC)}, cur;
    timerfd_settime(fd, 0, &its, NULL);
    timerfd_gettime(fd, &cur);
    int64_t left = ns_of(&cur.it_value);
    uint64_t n = 0;
    ssize_t r = read(fd, &n, sizeof n);
    printf("EVENT timerfd_relative elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=%d left_ns=%" PRId64 "\n",
           elapsed() - start, 10 * SEC, r == 8 && n == 1 && left > 9 * SEC && left <= 10 * SEC, left);

    start = elapsed();
    its.it_value = ts_of(mono() + 10 * SEC);
    timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL);
    r = read(fd, &n, sizeof n);
    printf("EVENT timerfd_absolute elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=%d\n", elapsed() - start,
           10 * SEC, r == 8 && n == 1);
    close(fd);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    sigprocmask(SIG_BLOCK, &block, &old);
    start = elapsed();
    alarmed = 0;
    alarm(10);
    while (!alarmed) sigsuspend(&old);
    printf("EVENT alarm elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=1\n", elapsed() - start, 10 * SEC);

    start = elapsed();
    alarmed = 0;
    struct itimerval itv = {{0, 0}, {10, 0}}, gv;
    setitimer(ITIMER_REAL, &itv, NULL);
    getitimer(ITIMER_REAL, &gv);
    while (!alarmed) sigsuspend(&old);
    printf("EVENT setitimer elapsed_ns=%" PRId64 " expected_ns=%" PRId64 " ok=%d\n", elapsed() - start, 10 * SEC,
           gv.it_value.tv_sec >= 9 && gv.it_value.tv_sec <= 10);
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode handler: a signal handler sleeps (a wrapped wait) while its thread is in a condvar wait,    */
/* which glibc resumes after the handler: the outer wait's deadline must stay published            */
/* ---------------------------------------------------------------------------------------------- */

static void on_usr1_sleep(int sig) {
    (void)sig;
    struct timespec ts = ts_of(SEC);
    nanosleep(&ts, NULL);
}

static void *cond_waiter_60(void *arg) {
    (void)arg;
    struct timespec ts = ts_of(t0 + 60 * SEC);
    pthread_mutex_lock(&mx);
    int rc = 0;
    while (rc == 0) rc = pthread_cond_timedwait(&cond_mono, &mx, &ts);
    pthread_mutex_unlock(&mx);
    event("handler_outer_cond", 60, rc == ETIMEDOUT, rc, 0);
    return NULL;
}

static int mode_handler(void) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cond_mono, &ca);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1_sleep;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t th;
    pthread_create(&th, NULL, cond_waiter_60, NULL);
    struct timespec five = ts_of(5 * SEC);
    nanosleep(&five, NULL);
    pthread_kill(th, SIGUSR1);
    pthread_join(th, NULL);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode pingpong: two threads pass a token through pipes (one of them always runs), while a third   */
/* sleeps 1000 s: the driver must never take that for idleness and skip time                        */
/* ---------------------------------------------------------------------------------------------- */

static int ab[2], ba[2];
#define PINGPONG_ROUNDS 100000

static void *pong(void *arg) {
    (void)arg;
    char c;
    for (int i = 0; i < PINGPONG_ROUNDS; i++) {
        if (read(ab[0], &c, 1) != 1 || write(ba[1], &c, 1) != 1) return NULL;
    }
    return NULL;
}

static void *long_sleeper(void *arg) {
    (void)arg;
    struct timespec ts = ts_of(1000 * SEC);
    nanosleep(&ts, NULL);
    return NULL;
}

static int mode_pingpong(void) {
    if (pipe(ab) || pipe(ba)) return 2;
    pthread_t s, p;
    pthread_create(&s, NULL, long_sleeper, NULL);
    pthread_create(&p, NULL, pong, NULL);
    int64_t start = elapsed();
    char c = 'x';
    int done = 0;
    for (int i = 0; i < PINGPONG_ROUNDS; i++) {
        if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1) break;
        done++;
    }
    pthread_join(p, NULL);
    /* the virtual time the ping-pong took: about its real time, never the sleeper's 1000 s */
    printf("EVENT pingpong elapsed_ns=%" PRId64 " rounds=%d ok=%d\n", elapsed() - start, done,
           done == PINGPONG_ROUNDS);
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode relay: a token passes from thread to thread, each started by the one before it, which then   */
/* exits: the set of threads changes all the time while their number hardly does, beside a 1000 s   */
/* sleeper; the driver must never take that for idleness and skip time                             */
/* ---------------------------------------------------------------------------------------------- */

#define RELAY_HOPS 20000
static int relay_token[2], relay_done[2];
static atomic_int relay_left = RELAY_HOPS;

static void *relay_hop(void *arg) {
    (void)arg;
    char c;
    if (read(relay_token[0], &c, 1) != 1) return NULL;
    if (atomic_fetch_sub(&relay_left, 1) <= 1) {
        if (write(relay_done[1], &c, 1) != 1) return NULL;
        return NULL;
    }
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_t next;
    int rc = pthread_create(&next, &a, relay_hop, NULL);
    pthread_attr_destroy(&a);
    if (rc != 0 || write(relay_token[1], &c, 1) != 1) {
        if (write(relay_done[1], "e", 1) != 1) return NULL;
    }
    return NULL;
}

static int mode_relay(void) {
    if (pipe(relay_token) || pipe(relay_done)) return 2;
    pthread_t s, first;
    pthread_create(&s, NULL, long_sleeper, NULL);
    int64_t start = elapsed();
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&first, &a, relay_hop, NULL) != 0) return 2;
    pthread_attr_destroy(&a);
    char c = 'x';
    if (write(relay_token[1], &c, 1) != 1 || read(relay_done[0], &c, 1) != 1) return 2;
    int left = atomic_load(&relay_left);
    printf("EVENT relay elapsed_ns=%" PRId64 " hops=%d ok=%d\n", elapsed() - start, RELAY_HOPS - left,
           c == 'x' && left <= 0);
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* mode idle: a 1 s select loop (a C MQTT client's idle loop); lateness statistics                  */
/* ---------------------------------------------------------------------------------------------- */

static int mode_idle(int64_t seconds) {
    int64_t max_late = 0, sum_late = 0, n = 0;
    while (elapsed() < seconds * SEC) {
        int64_t start = mono();
        struct timeval tv = {1, 0};
        select(0, NULL, NULL, NULL, &tv);
        int64_t late = mono() - start - SEC;
        if (late > max_late) max_late = late;
        sum_late += late;
        n++;
    }
    printf("EVENT idle elapsed_ns=%" PRId64 " loops=%" PRId64 " max_late_ns=%" PRId64 " mean_late_ns=%" PRId64
           " ok=1\n",
           elapsed(), n, max_late, n ? sum_late / n : 0);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    t0 = mono();
    w0 = wall();
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "waits")) return mode_waits();
    if (!strcmp(mode, "eintr")) return mode_eintr();
    if (!strcmp(mode, "stray")) return mode_stray();
    if (!strcmp(mode, "clocks")) return mode_clocks();
    if (!strcmp(mode, "fork")) return mode_fork(argv[0]);
    if (!strcmp(mode, "exec-child") && argc > 2) return mode_exec_child(argv[2]);
    if (!strcmp(mode, "jump")) return mode_jump();
    if (!strcmp(mode, "speed")) return mode_speed();
    if (!strcmp(mode, "timers")) return mode_timers();
    if (!strcmp(mode, "pingpong")) return mode_pingpong();
    if (!strcmp(mode, "relay")) return mode_relay();
    if (!strcmp(mode, "handler")) return mode_handler();
    if (!strcmp(mode, "idle") && argc > 2) return mode_idle(strtoll(argv[2], NULL, 10));
    fprintf(stderr, "usage: %s waits|eintr|stray|clocks|fork|jump|speed|timers|idle SECONDS\n", argv[0]);
    return 2;
}
