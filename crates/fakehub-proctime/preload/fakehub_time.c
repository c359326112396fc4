/*
 * fakehub_time.c — LD_PRELOAD library that puts a process on fakehub's virtual clock.
 *
 * With FAKEHUB_CLOCK_SHM naming a clock file created by the hub (layout: fakehub_clock_shm.h):
 *   - clocks (clock_gettime, gettimeofday, time, timespec_get) return virtual time computed from the
 *     hub's anchor: virtual = anchor.virt + (real CLOCK_MONOTONIC - anchor.real_mono) * anchor.speed;
 *   - every wrapped timed wait converts its timeout into a virtual-monotonic deadline, publishes it in
 *     the calling thread's slot, and waits for real in slices no longer than the header's slice, checking
 *     the virtual clock between slices, until something happens or virtual time reaches the deadline;
 *   - the hub's time driver skips virtual time when every thread of every process is asleep, and sends
 *     the wake signal to the threads whose deadline it reached.
 * Without the variable, or with an unusable file, every wrapper is a pure pass-through.
 *
 * Rules kept throughout: real functions are found with dlsym(RTLD_NEXT) lazily; the signal handler only
 * sets a thread-local flag; time arithmetic saturates; any internal failure means pass-through.
 */
#define _GNU_SOURCE
/* The wrappers test their pointer arguments before using them: keep the C library's nonnull
 * attributes from letting the compiler drop those tests. */
#define __nonnull(params)
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "fakehub_clock_shm.h"

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))
#define NS_PER_SEC 1000000000LL
#define DEFAULT_CONDVAR_SLICE_NS 2000000LL /* 2 ms */
#define DEFAULT_OTHER_SLICE_NS 50000000LL  /* 50 ms */
#define CV_EPOCHS 1024u
#define TIMERFD_TRACKED 4096

/* ------------------------------------------------------------------------------------------------ */
/* Saturating time arithmetic                                                                        */
/* ------------------------------------------------------------------------------------------------ */

static inline int64_t sat_add(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static inline int64_t sat_sub(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static inline int64_t sat_mul(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) return ((a < 0) != (b < 0)) ? INT64_MIN : INT64_MAX;
    return r;
}

static inline int64_t dbl_to_ns(double v) {
    if (v != v) return 0;
    if (v >= 9.2e18) return INT64_MAX;
    if (v <= -9.2e18) return INT64_MIN;
    return (int64_t)v;
}

/* virtual duration for a real one */
static inline int64_t scale_ns(int64_t d, double speed) {
    if (speed == 1.0) return d;
    return dbl_to_ns((double)d * speed);
}

/* real duration (rounded up) for a positive virtual one; speed > 0 */
static inline int64_t unscale_ceil_ns(int64_t d, double speed) {
    if (speed == 1.0) return d;
    double v = (double)d / speed;
    int64_t r = dbl_to_ns(v);
    if ((double)r < v && r < INT64_MAX) r++;
    return r;
}

static inline int64_t ts_to_ns(const struct timespec *ts) {
    return sat_add(sat_mul((int64_t)ts->tv_sec, NS_PER_SEC), (int64_t)ts->tv_nsec);
}

static inline struct timespec ns_to_ts(int64_t ns) {
    struct timespec t;
    int64_t s = ns / NS_PER_SEC, r = ns % NS_PER_SEC;
    if (r < 0) {
        r += NS_PER_SEC;
        s -= 1;
    }
    t.tv_sec = (time_t)s;
    t.tv_nsec = (long)r;
    return t;
}

/* a timeout or deadline the kernel would accept */
static inline int ts_valid(const struct timespec *ts) {
    return ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < NS_PER_SEC;
}

static inline int ts_zero(const struct timespec *ts) { return ts->tv_sec == 0 && ts->tv_nsec == 0; }

/* ------------------------------------------------------------------------------------------------ */
/* Real functions, resolved lazily and thread-safely with dlsym(RTLD_NEXT)                           */
/* ------------------------------------------------------------------------------------------------ */

static void *resolve(const char *name, const char *version) {
    void *p = NULL;
    if (version) p = dlvsym(RTLD_NEXT, name, version);
    if (!p) p = dlsym(RTLD_NEXT, name);
    return p;
}

#define REAL_FN(ret, name, params, version)                                                    \
    typedef ret(*name##_fn) params;                                                            \
    static _Atomic(void *) real_##name##_ptr;                                                  \
    static name##_fn real_##name(void) {                                                       \
        void *p = atomic_load_explicit(&real_##name##_ptr, memory_order_acquire);              \
        if (!p) {                                                                              \
            p = resolve(#name, version);                                                       \
            if (p) atomic_store_explicit(&real_##name##_ptr, p, memory_order_release);         \
        }                                                                                      \
        return (name##_fn)p;                                                                   \
    }

/* x86_64 glibc keeps an old condvar ABI at GLIBC_2.2.5; the current one is GLIBC_2.3.2. */
#if defined(__x86_64__)
#define COND_VERSION "GLIBC_2.3.2"
#else
#define COND_VERSION NULL
#endif

REAL_FN(int, clock_gettime, (clockid_t, struct timespec *), NULL)
REAL_FN(int, gettimeofday, (struct timeval *, void *), NULL)
REAL_FN(time_t, time, (time_t *), NULL)
REAL_FN(int, timespec_get, (struct timespec *, int), NULL)
REAL_FN(int, nanosleep, (const struct timespec *, struct timespec *), NULL)
REAL_FN(int, clock_nanosleep, (clockid_t, int, const struct timespec *, struct timespec *), NULL)
REAL_FN(int, usleep, (useconds_t), NULL)
REAL_FN(unsigned int, sleep, (unsigned int), NULL)
REAL_FN(int, poll, (struct pollfd *, nfds_t, int), NULL)
REAL_FN(int, ppoll, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *), NULL)
REAL_FN(int, select, (int, fd_set *, fd_set *, fd_set *, struct timeval *), NULL)
REAL_FN(int, pselect, (int, fd_set *, fd_set *, fd_set *, const struct timespec *, const sigset_t *), NULL)
REAL_FN(int, epoll_wait, (int, struct epoll_event *, int, int), NULL)
REAL_FN(int, epoll_pwait, (int, struct epoll_event *, int, int, const sigset_t *), NULL)
REAL_FN(int, epoll_pwait2, (int, struct epoll_event *, int, const struct timespec *, const sigset_t *), NULL)
REAL_FN(int, pthread_cond_timedwait, (pthread_cond_t *, pthread_mutex_t *, const struct timespec *), COND_VERSION)
REAL_FN(int, pthread_cond_clockwait, (pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *), NULL)
REAL_FN(int, pthread_cond_wait, (pthread_cond_t *, pthread_mutex_t *), COND_VERSION)
REAL_FN(int, pthread_cond_signal, (pthread_cond_t *), COND_VERSION)
REAL_FN(int, pthread_cond_broadcast, (pthread_cond_t *), COND_VERSION)
REAL_FN(int, pthread_cond_init, (pthread_cond_t *, const pthread_condattr_t *), COND_VERSION)
REAL_FN(int, pthread_cond_destroy, (pthread_cond_t *), COND_VERSION)
REAL_FN(int, sem_wait, (sem_t *), NULL)
REAL_FN(int, sem_timedwait, (sem_t *, const struct timespec *), NULL)
REAL_FN(int, sem_clockwait, (sem_t *, clockid_t, const struct timespec *), NULL)
REAL_FN(int, pthread_mutex_timedlock, (pthread_mutex_t *, const struct timespec *), NULL)
REAL_FN(int, pthread_mutex_clocklock, (pthread_mutex_t *, clockid_t, const struct timespec *), NULL)
REAL_FN(long, syscall, (long, long, long, long, long, long, long), NULL)
REAL_FN(int, timerfd_create, (int, int), NULL)
REAL_FN(int, timerfd_settime, (int, int, const struct itimerspec *, struct itimerspec *), NULL)
REAL_FN(int, timerfd_gettime, (int, struct itimerspec *), NULL)
REAL_FN(int, setitimer, (int, const struct itimerval *, struct itimerval *), NULL)
REAL_FN(int, getitimer, (int, struct itimerval *), NULL)
REAL_FN(unsigned int, alarm, (unsigned int), NULL)

/* ------------------------------------------------------------------------------------------------ */
/* State                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

enum { ST_UNINIT = 0, ST_INIT = 1, ST_ACTIVE = 2, ST_PASS = 3 };

static _Atomic int g_state;
static struct fh_header *g_hdr;
static struct fh_process_slot *g_procs;
static struct fh_thread_slot *g_threads;
static uint32_t g_nprocs, g_nthreads;
static int g_wake_sig;
static int64_t g_cv_slice_ns = DEFAULT_CONDVAR_SLICE_NS;
static int64_t g_slice_ns = DEFAULT_OTHER_SLICE_NS;
static int g_condvar_ok;
static _Atomic int32_t g_pid;
static pthread_key_t g_key;
static _Atomic int g_noted;
static _Atomic int g_pwait2_missing;
static _Atomic int64_t g_mono_floor = INT64_MIN;
static _Atomic uint32_t g_cv_epoch[CV_EPOCHS];
static _Atomic int g_timerfd_clock[TIMERFD_TRACKED]; /* clock id + 1; 0: unknown */

static TLS int tls_slot = -1;
static TLS int tls_claim_failed;
static TLS int tls_in_init;
static TLS volatile sig_atomic_t tls_woken;

/* What this thread's slot holds now. A wrapped wait restores what it found when it ends, so that a
 * wrapped wait made by a signal handler, inside another one, leaves the outer wait's deadline published. */
struct fh_slot_state {
    uint32_t state;
    uint32_t call;
    int64_t deadline;
};
static TLS struct fh_slot_state tls_cur;

/* One line on stderr, once per process. */
static void note(const char *msg) {
    if (atomic_exchange(&g_noted, 1)) return;
    static const char prefix[] = "fakehub-time: ";
    ssize_t r = write(2, prefix, sizeof prefix - 1);
    r = write(2, msg, strlen(msg));
    r = write(2, "\n", 1);
    (void)r;
}

static int32_t current_tid(void) { return (int32_t)gettid(); }

/* ------------------------------------------------------------------------------------------------ */
/* The anchor and the virtual clocks                                                                 */
/* ------------------------------------------------------------------------------------------------ */

struct fh_now {
    int64_t real_mono;
    int64_t vmono;
    int64_t vwall;
    double speed;
};

static inline double bits_to_speed(uint64_t b) {
    double d;
    memcpy(&d, &b, sizeof d);
    if (!(d >= 0.0) || d > 1e12) return 1.0; /* NaN, negative, absurd: the hub never writes these */
    return d;
}

/*
 * The anchor and the real monotonic clock, read together under the seqlock: the pair is consistent
 * (the real time was read while this anchor was the current one).
 */
static int read_now(struct fh_now *n) {
    clock_gettime_fn real = real_clock_gettime();
    if (!real || !g_hdr) return 0;
    for (unsigned i = 0; i < 1000000u; i++) {
        uint64_t s1 = atomic_load_explicit(&g_hdr->seq, memory_order_acquire);
        if (s1 & 1u) {
            if (i > 64) sched_yield();
            continue;
        }
        int64_t rm = atomic_load_explicit(&g_hdr->anchor.real_mono_ns, memory_order_relaxed);
        int64_t vm = atomic_load_explicit(&g_hdr->anchor.virt_mono_ns, memory_order_relaxed);
        int64_t vw = atomic_load_explicit(&g_hdr->anchor.virt_wall_ns, memory_order_relaxed);
        uint64_t sb = atomic_load_explicit(&g_hdr->anchor.speed_bits, memory_order_relaxed);
        struct timespec ts;
        if (real(CLOCK_MONOTONIC, &ts) != 0) return 0;
        atomic_thread_fence(memory_order_acquire);
        uint64_t s2 = atomic_load_explicit(&g_hdr->seq, memory_order_relaxed);
        if (s1 != s2) continue;
        double speed = bits_to_speed(sb);
        int64_t now = ts_to_ns(&ts);
        int64_t d = scale_ns(sat_sub(now, rm), speed);
        n->real_mono = now;
        n->vmono = sat_add(vm, d);
        n->vwall = sat_add(vw, d);
        n->speed = speed;
        return 1;
    }
    return 0; /* the writer died in the middle of a write: callers fall back to real time */
}

/* Virtual monotonic time never goes backwards within a process, even across a speed change. */
static int64_t mono_floor(int64_t v) {
    int64_t cur = atomic_load_explicit(&g_mono_floor, memory_order_relaxed);
    while (v > cur) {
        if (atomic_compare_exchange_weak_explicit(&g_mono_floor, &cur, v, memory_order_relaxed,
                                                  memory_order_relaxed))
            return v;
    }
    return cur > v ? cur : v;
}

enum { VC_NONE = 0, VC_WALL, VC_MONO, VC_TAI };

static int virtual_clock_kind(clockid_t clk) {
    switch (clk) {
    case CLOCK_REALTIME:
    case CLOCK_REALTIME_COARSE:
#ifdef CLOCK_REALTIME_ALARM
    case CLOCK_REALTIME_ALARM:
#endif
        return VC_WALL;
    case CLOCK_MONOTONIC:
    case CLOCK_MONOTONIC_RAW:
    case CLOCK_MONOTONIC_COARSE:
    case CLOCK_BOOTTIME:
#ifdef CLOCK_BOOTTIME_ALARM
    case CLOCK_BOOTTIME_ALARM:
#endif
        return VC_MONO;
#ifdef CLOCK_TAI
    case CLOCK_TAI:
        return VC_TAI;
#endif
    default:
        return VC_NONE; /* CPU-time clocks and anything unknown */
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Thread and process slots                                                                          */
/* ------------------------------------------------------------------------------------------------ */

static void slot_write(int idx, uint32_t state, uint32_t call, int64_t deadline) {
    struct fh_thread_slot *t = &g_threads[idx];
    uint64_t c = atomic_load_explicit(&t->changes, memory_order_relaxed);
    if (c & 1u) c++;
    atomic_store_explicit(&t->changes, c + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&t->deadline_ns, deadline, memory_order_relaxed);
    atomic_store_explicit(&t->call, call, memory_order_relaxed);
    atomic_store_explicit(&t->state, state, memory_order_relaxed);
    atomic_store_explicit(&t->changes, c + 2, memory_order_release);
}

/* The calling thread's own slot: also remembered in tls_cur. */
static void own_slot_write(int idx, uint32_t state, uint32_t call, int64_t deadline) {
    slot_write(idx, state, call, deadline);
    tls_cur.state = state;
    tls_cur.call = call;
    tls_cur.deadline = deadline;
}

static void slot_free(int idx, int32_t tid) {
    struct fh_thread_slot *t = &g_threads[idx];
    slot_write(idx, FH_THREAD_RUNNING, FH_CALL_NONE, 0);
    atomic_store_explicit(&t->pid, 0, memory_order_relaxed);
    int32_t expected = tid;
    atomic_compare_exchange_strong_explicit(&t->tid, &expected, 0, memory_order_release, memory_order_relaxed);
}

static void thread_exit(void *value) {
    intptr_t idx = (intptr_t)value - 1;
    if (idx < 0 || (uint64_t)idx >= g_nthreads) return;
    int32_t tid = current_tid();
    if (atomic_load_explicit(&g_threads[idx].tid, memory_order_relaxed) == tid) slot_free((int)idx, tid);
    if (tls_slot == (int)idx) tls_slot = -1;
}

/* Raises the header's thread_hwm to at least n. */
static void raise_thread_hwm(uint32_t n) {
    uint32_t cur = atomic_load_explicit(&g_hdr->thread_hwm, memory_order_relaxed);
    while (cur < n && !atomic_compare_exchange_weak_explicit(&g_hdr->thread_hwm, &cur, n, memory_order_seq_cst,
                                                             memory_order_relaxed)) {
    }
}

/* The calling thread's slot, claimed on first use; -1 when the table is full. */
static int thread_slot(void) {
    if (tls_slot >= 0) return tls_slot;
    if (tls_claim_failed || !g_threads || !g_hdr) return -1;
    int32_t tid = current_tid();
    int32_t pid = atomic_load_explicit(&g_pid, memory_order_relaxed);
    for (uint32_t i = 0; i < g_nthreads; i++) {
        struct fh_thread_slot *t = &g_threads[i];
        if (atomic_load_explicit(&t->tid, memory_order_relaxed) != 0) continue;
        raise_thread_hwm(i + 1); /* before the claim: the hub reads the table up to the mark only */
        int32_t expected = 0;
        if (!atomic_compare_exchange_strong_explicit(&t->tid, &expected, tid, memory_order_acq_rel,
                                                     memory_order_relaxed))
            continue;
        atomic_store_explicit(&t->pid, pid, memory_order_relaxed);
        own_slot_write((int)i, FH_THREAD_RUNNING, FH_CALL_NONE, 0);
        tls_slot = (int)i;
        (void)pthread_setspecific(g_key, (void *)(intptr_t)(i + 1));
        return (int)i;
    }
    tls_claim_failed = 1;
    note("the thread table of the clock file is full: some threads' waits are invisible to the time driver");
    return -1;
}

/* Field 22 of /proc/self/stat: start time in clock ticks after boot (0 when unreadable). */
static uint64_t own_start_time(void) {
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    p++;
    /* after ')': field 3 is the first; field 22 is the 20th */
    int field = 2;
    while (*p && field < 22) {
        while (*p == ' ') p++;
        field++;
        if (field == 22) break;
        while (*p && *p != ' ') p++;
    }
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return 0;
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    return v;
}

/* Claim (or adopt, after an exec or the hub's registration) this process's slot. */
static int claim_process(int32_t pid) {
    int idx = -1;
    for (uint32_t i = 0; i < g_nprocs && idx < 0; i++)
        if (atomic_load_explicit(&g_procs[i].pid, memory_order_acquire) == pid) idx = (int)i;
    for (uint32_t i = 0; i < g_nprocs && idx < 0; i++) {
        int32_t expected = 0;
        if (atomic_compare_exchange_strong_explicit(&g_procs[i].pid, &expected, pid, memory_order_acq_rel,
                                                    memory_order_relaxed))
            idx = (int)i;
    }
    if (idx < 0) return 0;
    atomic_store_explicit(&g_procs[idx].start_time, own_start_time(), memory_order_relaxed);
    atomic_fetch_or_explicit(&g_procs[idx].flags, FH_PROC_PRELOAD | (g_condvar_ok ? FH_PROC_CONDVAR_CLOCK : 0u),
                             memory_order_release);
    /* slots left by this pid's image before an exec */
    for (uint32_t i = 0; i < g_nthreads; i++) {
        int32_t tid = atomic_load_explicit(&g_threads[i].tid, memory_order_relaxed);
        if (tid != 0 && atomic_load_explicit(&g_threads[i].pid, memory_order_relaxed) == pid) slot_free((int)i, tid);
    }
    atomic_store_explicit(&g_pid, pid, memory_order_release);
    return 1;
}

/* ------------------------------------------------------------------------------------------------ */
/* Initialisation                                                                                    */
/* ------------------------------------------------------------------------------------------------ */

static void on_wake_signal(int sig, siginfo_t *info, void *uctx) {
    (void)sig;
    (void)info;
    (void)uctx;
    tls_woken = 1;
}

static void atfork_child(void) {
    tls_slot = -1;
    memset(&tls_cur, 0, sizeof tls_cur);
    tls_claim_failed = 0;
    tls_woken = 0;
    int s = atomic_load(&g_state);
    if (s == ST_INIT) {
        atomic_store(&g_state, ST_PASS);
        return;
    }
    if (s != ST_ACTIVE) return;
    (void)pthread_setspecific(g_key, NULL);
    if (!claim_process((int32_t)getpid())) {
        note("the process table of the clock file is full: this forked child runs on real time");
        atomic_store(&g_state, ST_PASS);
    }
}

/*
 * glibc (2.25 and later, so Debian 12's 2.36) keeps a condvar's clock in bit 1 of __data.__wrefs
 * (__PTHREAD_COND_CLOCK_MONOTONIC_MASK): set by pthread_cond_init for a CLOCK_MONOTONIC condattr and
 * clear for CLOCK_REALTIME and PTHREAD_COND_INITIALIZER. Checked here before relying on it.
 */
static int condvar_clock_probe(void) {
#ifdef __GLIBC__
    pthread_cond_init_fn init = real_pthread_cond_init();
    pthread_cond_destroy_fn destroy = real_pthread_cond_destroy();
    if (!init || !destroy || !real_pthread_cond_timedwait()) return 0;
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) return 0;
    int ok = 0;
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0) {
        pthread_cond_t mono, real_clock, stat = PTHREAD_COND_INITIALIZER;
        if (init(&mono, &attr) == 0) {
            if (init(&real_clock, NULL) == 0) {
                ok = (mono.__data.__wrefs & 2u) != 0 && (real_clock.__data.__wrefs & 2u) == 0 &&
                     (stat.__data.__wrefs & 2u) == 0;
                destroy(&real_clock);
            }
            destroy(&mono);
        }
    }
    pthread_condattr_destroy(&attr);
    return ok;
#else
    return 0;
#endif
}

static int setup(void) {
    if (!real_clock_gettime() || !real_ppoll() || !real_pselect() || !real_syscall()) {
        note("the C library lacks clock_gettime/ppoll/pselect/syscall: clocks are not virtualised");
        return 0;
    }
    const char *path = getenv(FH_ENV_SHM);
    if (!path || !*path) {
        note(FH_ENV_SHM " is not set: clocks and timers are not virtualised");
        return 0;
    }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        note("cannot open the clock file named by " FH_ENV_SHM ": clocks and timers are not virtualised");
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)FH_HEADER_SIZE) {
        close(fd);
        note("the clock file is too short: clocks and timers are not virtualised");
        return 0;
    }
    void *h = mmap(NULL, FH_HEADER_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) {
        close(fd);
        note("cannot map the clock file: clocks and timers are not virtualised");
        return 0;
    }
    const struct fh_header *hd = h;
    int ok = memcmp(hd->magic, FH_MAGIC, 8) == 0 && hd->version == FH_VERSION &&
             hd->header_size == FH_HEADER_SIZE && hd->process_slot_size == FH_PROCESS_SLOT_SIZE &&
             hd->thread_slot_size == FH_THREAD_SLOT_SIZE && hd->max_processes >= 1 &&
             hd->max_processes <= FH_MAX_PROCESSES_LIMIT && hd->max_threads >= 1 &&
             hd->max_threads <= FH_MAX_THREADS_LIMIT;
    uint32_t np = hd->max_processes, nt = hd->max_threads;
    int sig = hd->wake_signal;
    int64_t cv = hd->condvar_slice_ns, other = hd->other_slice_ns;
    munmap(h, FH_HEADER_SIZE);
    if (!ok) {
        close(fd);
        note("the clock file has a wrong magic, version or layout: clocks and timers are not virtualised");
        return 0;
    }
    size_t total = FH_FILE_SIZE(np, nt);
    if ((uint64_t)st.st_size < (uint64_t)total) {
        close(fd);
        note("the clock file is shorter than its tables: clocks and timers are not virtualised");
        return 0;
    }
    if (sig < SIGRTMIN || sig > SIGRTMAX) {
        close(fd);
        note("the clock file names an unusable wake signal: clocks and timers are not virtualised");
        return 0;
    }
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        note("cannot map the clock file: clocks and timers are not virtualised");
        return 0;
    }
    g_nprocs = np;
    g_nthreads = nt;
    g_wake_sig = sig;
    g_cv_slice_ns = (cv >= 100000 && cv <= NS_PER_SEC) ? cv : DEFAULT_CONDVAR_SLICE_NS;
    g_slice_ns = (other >= 100000 && other <= 10 * NS_PER_SEC) ? other : DEFAULT_OTHER_SLICE_NS;
    g_condvar_ok = condvar_clock_probe();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_wake_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0 || pthread_key_create(&g_key, thread_exit) != 0) {
        munmap(m, total);
        note("cannot install the wake signal handler: clocks and timers are not virtualised");
        return 0;
    }
    g_procs = (struct fh_process_slot *)((char *)m + FH_PROCESS_TABLE_OFFSET);
    g_threads = (struct fh_thread_slot *)((char *)m + FH_THREAD_TABLE_OFFSET(np));
    g_hdr = m;
    if (!claim_process((int32_t)getpid())) {
        note("the process table of the clock file is full: this process runs on real time");
        g_hdr = NULL;
        return 0;
    }
    if (pthread_atfork(NULL, NULL, atfork_child) != 0) {
        note("pthread_atfork failed: forked children would share this process's slot; real time");
        g_hdr = NULL;
        return 0;
    }
    if (!g_condvar_ok) note("cannot read condition variables' clocks: condvar waits are not virtualised");
    return 1;
}

static int init_slow(void) {
    if (tls_in_init) return 0;
    int expected = ST_UNINIT;
    if (atomic_compare_exchange_strong(&g_state, &expected, ST_INIT)) {
        tls_in_init = 1;
        int ok = setup();
        tls_in_init = 0;
        atomic_store_explicit(&g_state, ok ? ST_ACTIVE : ST_PASS, memory_order_release);
        return ok;
    }
    for (int i = 0; i < 100000; i++) {
        int s = atomic_load_explicit(&g_state, memory_order_acquire);
        if (s == ST_ACTIVE) return 1;
        if (s == ST_PASS) return 0;
        sched_yield();
    }
    return 0;
}

static inline int active(void) {
    int s = atomic_load_explicit(&g_state, memory_order_acquire);
    if (__builtin_expect(s == ST_ACTIVE, 1)) return 1;
    if (s == ST_PASS) return 0;
    return init_slow();
}

__attribute__((constructor)) static void fakehub_time_init(void) { (void)active(); }

/* ------------------------------------------------------------------------------------------------ */
/* Clocks                                                                                            */
/* ------------------------------------------------------------------------------------------------ */

/* Virtual time for a clock kind; 0 when it cannot be computed (callers use the real clock). */
static int virtual_time(int kind, int64_t *out) {
    struct fh_now n;
    if (!read_now(&n)) return 0;
    switch (kind) {
    case VC_WALL:
        *out = n.vwall;
        return 1;
    case VC_MONO:
        *out = mono_floor(n.vmono);
        return 1;
    case VC_TAI: {
#ifdef CLOCK_TAI
        struct timespec tai, rt;
        clock_gettime_fn real = real_clock_gettime();
        if (real(CLOCK_TAI, &tai) != 0 || real(CLOCK_REALTIME, &rt) != 0) return 0;
        *out = sat_add(n.vwall, sat_sub(ts_to_ns(&tai), ts_to_ns(&rt)));
        return 1;
#else
        return 0;
#endif
    }
    default:
        return 0;
    }
}

EXPORT int clock_gettime(clockid_t clk, struct timespec *ts) {
    clock_gettime_fn real = real_clock_gettime();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    int kind = virtual_clock_kind(clk);
    if (kind == VC_NONE || !ts || !active()) return real(clk, ts);
    int64_t v;
    if (!virtual_time(kind, &v)) return real(clk, ts);
    *ts = ns_to_ts(v);
    return 0;
}

EXPORT int gettimeofday(struct timeval *tv, void *tz) {
    gettimeofday_fn real = real_gettimeofday();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!tv || !active()) return real(tv, tz);
    int64_t v;
    if (!virtual_time(VC_WALL, &v)) return real(tv, tz);
    if (tz) {
        struct timeval ignored;
        int r = real(&ignored, tz);
        if (r != 0) return r;
    }
    struct timespec ts = ns_to_ts(v);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

EXPORT time_t time(time_t *t) {
    time_fn real = real_time();
    int64_t v;
    if (!active() || !virtual_time(VC_WALL, &v)) {
        if (real) return real(t);
        errno = ENOSYS;
        return (time_t)-1;
    }
    time_t s = ns_to_ts(v).tv_sec;
    if (t) *t = s;
    return s;
}

EXPORT int timespec_get(struct timespec *ts, int base) {
    timespec_get_fn real = real_timespec_get();
    if (!real) return 0;
    int64_t v;
    if (base != TIME_UTC || !ts || !active() || !virtual_time(VC_WALL, &v)) return real(ts, base);
    *ts = ns_to_ts(v);
    return base;
}

/* ------------------------------------------------------------------------------------------------ */
/* The wait machinery                                                                                */
/* ------------------------------------------------------------------------------------------------ */

enum { DL_MONO = 0, DL_WALL = 1 };

struct fh_wait {
    int slot;          /* thread slot, -1 without one */
    int kind;          /* DL_MONO: deadline is virtual monotonic; DL_WALL: virtual wall clock */
    int64_t deadline;  /* ns */
    uint32_t call;     /* FH_CALL_* */
    int64_t published; /* deadline last written to the slot (monotonic or wall, as kind); INT64_MIN: none */
    int64_t slice;     /* longest real wait per step */
    struct fh_slot_state prev; /* the slot's content before this wait, restored at its end */
    int saved_errno;   /* errno at entry, restored on success */
};

static void wait_begin(struct fh_wait *w, uint32_t call, int kind, int64_t deadline, int64_t slice) {
    w->saved_errno = errno;
    w->slot = thread_slot();
    w->kind = kind;
    w->deadline = deadline;
    w->call = call;
    w->published = INT64_MIN;
    w->slice = slice;
    w->prev = tls_cur;
}

/* Relative timeout: the deadline is virtual now + rel. */
static int wait_begin_rel(struct fh_wait *w, uint32_t call, int64_t rel, int64_t slice) {
    struct fh_now n;
    if (!read_now(&n)) return 0;
    wait_begin(w, call, DL_MONO, sat_add(n.vmono, rel), slice);
    return 1;
}

/*
 * One step: publishes the deadline and computes the real time to wait now (0 once the deadline has passed).
 * Returns 1 while virtual time remains, 0 when the deadline has been reached (or the clock is unreadable).
 */
static int wait_step(struct fh_wait *w, int64_t *real_timeout, int64_t *real_mono_now) {
    struct fh_now n;
    if (!read_now(&n)) {
        *real_timeout = 0;
        if (real_mono_now) *real_mono_now = 0;
        return 0;
    }
    if (real_mono_now) *real_mono_now = n.real_mono;
    int64_t dl = w->kind == DL_MONO ? w->deadline : sat_add(n.vmono, sat_sub(w->deadline, n.vwall));
    int64_t rem = sat_sub(dl, n.vmono);
    if (rem <= 0) {
        *real_timeout = 0;
        return 0;
    }
    /* a wall-clock deadline is published as such: the driver converts it with the current anchor */
    int64_t pub = w->kind == DL_MONO ? dl : w->deadline;
    if (w->slot >= 0 && pub != w->published) {
        own_slot_write(w->slot, w->kind == DL_MONO ? FH_THREAD_TIMED : FH_THREAD_TIMED_WALL, w->call, pub);
        w->published = pub;
    }
    int64_t rt = n.speed > 0.0 ? unscale_ceil_ns(rem, n.speed) : w->slice;
    *real_timeout = rt < w->slice ? rt : w->slice;
    return 1;
}

/* Virtual time left until the deadline (>= 0). */
static int64_t wait_remaining(const struct fh_wait *w) {
    struct fh_now n;
    if (!read_now(&n)) return 0;
    int64_t dl = w->kind == DL_MONO ? w->deadline : sat_add(n.vmono, sat_sub(w->deadline, n.vwall));
    int64_t rem = sat_sub(dl, n.vmono);
    return rem > 0 ? rem : 0;
}

static void wait_end(struct fh_wait *w) {
    if (w->slot >= 0 && w->published != INT64_MIN) own_slot_write(w->slot, w->prev.state, w->prev.call, w->prev.deadline);
    w->published = INT64_MIN;
}

struct fh_untimed {
    int slot;
    struct fh_slot_state prev;
};

static struct fh_untimed untimed_begin(uint32_t call) {
    struct fh_untimed u;
    u.slot = thread_slot(); /* may claim the slot, which sets tls_cur */
    u.prev = tls_cur;
    if (u.slot >= 0) own_slot_write(u.slot, FH_THREAD_UNTIMED, call, 0);
    return u;
}

static void untimed_end(struct fh_untimed u) {
    if (u.slot >= 0) own_slot_write(u.slot, u.prev.state, u.prev.call, u.prev.deadline);
}

/* Block the wake signal (so that its arrival cannot be lost between a clock check and the wait). */
static void block_wake(sigset_t *old) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, g_wake_sig);
    pthread_sigmask(SIG_BLOCK, &s, old);
}

static void restore_mask(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

/* The mask for a p-variant wait: the caller's (or the thread's) with the wake signal deliverable. */
static void wait_mask(sigset_t *out, const sigset_t *caller, const sigset_t *old) {
    *out = caller ? *caller : *old;
    sigdelset(out, g_wake_sig);
}

/* For waits without a p-variant: let the wake signal in; returns 1 when it had been blocked. */
static int unblock_wake(sigset_t *old) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, g_wake_sig);
    if (pthread_sigmask(SIG_UNBLOCK, &s, old) != 0) return 0;
    return sigismember(old, g_wake_sig) == 1;
}

/*
 * Sleep until the deadline. Returns 0 when it passed; EINTR (with the virtual time left in *left) when a
 * signal other than fakehub's interrupted the sleep; another error number if the real wait failed.
 */
static int sleep_until(struct fh_wait *w, int64_t *left) {
    ppoll_fn rp = real_ppoll();
    for (;;) {
        sigset_t old, m;
        block_wake(&old);
        tls_woken = 0;
        int64_t rt;
        if (!wait_step(w, &rt, NULL)) {
            restore_mask(&old);
            wait_end(w);
            *left = 0;
            return 0;
        }
        wait_mask(&m, NULL, &old);
        struct timespec ts = ns_to_ts(rt);
        int rc = rp(NULL, 0, &ts, &m);
        int err = errno;
        restore_mask(&old);
        if (rc >= 0) continue;
        if (err == EINTR && tls_woken) continue;
        *left = wait_remaining(w);
        wait_end(w);
        return err;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Sleeps                                                                                            */
/* ------------------------------------------------------------------------------------------------ */

EXPORT int nanosleep(const struct timespec *req, struct timespec *rem) {
    nanosleep_fn real = real_nanosleep();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!req || !ts_valid(req) || ts_zero(req) || !active()) return real(req, rem);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_NANOSLEEP, ts_to_ns(req), g_slice_ns)) return real(req, rem);
    int64_t left;
    int r = sleep_until(&w, &left);
    if (r == 0) {
        errno = w.saved_errno;
        return 0;
    }
    if (r == EINTR && rem) *rem = ns_to_ts(left);
    errno = r;
    return -1;
}

EXPORT int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    clock_nanosleep_fn real = real_clock_nanosleep();
    if (!real) return ENOSYS;
    int kind;
    if (clk == CLOCK_REALTIME)
        kind = DL_WALL;
    else if (clk == CLOCK_MONOTONIC || clk == CLOCK_BOOTTIME)
        kind = DL_MONO;
    else
        return real(clk, flags, req, rem);
    if (!req || !ts_valid(req) || !active()) return real(clk, flags, req, rem);
    int absolute = (flags & TIMER_ABSTIME) != 0;
    struct fh_wait w;
    if (absolute) {
        wait_begin(&w, FH_CALL_CLOCK_NANOSLEEP, kind, ts_to_ns(req), g_slice_ns);
    } else {
        if (ts_zero(req)) return real(clk, flags, req, rem);
        if (!wait_begin_rel(&w, FH_CALL_CLOCK_NANOSLEEP, ts_to_ns(req), g_slice_ns))
            return real(clk, flags, req, rem);
    }
    int64_t left;
    int r = sleep_until(&w, &left);
    errno = w.saved_errno;
    if (r == EINTR && !absolute && rem) *rem = ns_to_ts(left);
    return r;
}

EXPORT int usleep(useconds_t us) {
    usleep_fn real = real_usleep();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (us == 0 || !active()) return real(us);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_USLEEP, sat_mul((int64_t)us, 1000), g_slice_ns)) return real(us);
    int64_t left;
    int r = sleep_until(&w, &left);
    if (r == 0) {
        errno = w.saved_errno;
        return 0;
    }
    errno = r;
    return -1;
}

EXPORT unsigned int sleep(unsigned int seconds) {
    sleep_fn real = real_sleep();
    if (!real) return seconds;
    if (seconds == 0 || !active()) return real(seconds);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_SLEEP, sat_mul((int64_t)seconds, NS_PER_SEC), g_slice_ns)) return real(seconds);
    int64_t left;
    int r = sleep_until(&w, &left);
    if (r == 0) {
        errno = w.saved_errno;
        return 0;
    }
    errno = r;
    /* like glibc: the unslept time, rounded to the nearest second */
    return (unsigned int)(left / NS_PER_SEC + ((left % NS_PER_SEC) >= NS_PER_SEC / 2 ? 1 : 0));
}

/* ------------------------------------------------------------------------------------------------ */
/* poll, ppoll                                                                                       */
/* ------------------------------------------------------------------------------------------------ */

static int ppoll_loop(struct fh_wait *w, struct pollfd *fds, nfds_t n, const sigset_t *caller_mask) {
    ppoll_fn rp = real_ppoll();
    for (;;) {
        sigset_t old, m;
        block_wake(&old);
        tls_woken = 0;
        int64_t rt;
        int more = wait_step(w, &rt, NULL);
        wait_mask(&m, caller_mask, &old);
        struct timespec ts = ns_to_ts(rt);
        int rc = rp(fds, n, &ts, &m);
        int err = errno;
        restore_mask(&old);
        if (rc > 0 || (rc == 0 && !more)) {
            wait_end(w);
            errno = w->saved_errno;
            return rc;
        }
        if (rc == 0) continue;
        if (err == EINTR && tls_woken) continue;
        wait_end(w);
        errno = err;
        return -1;
    }
}

EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout) {
    poll_fn real = real_poll();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (timeout == 0 || !active()) return real(fds, n, timeout);
    if (timeout < 0) {
        struct fh_untimed s = untimed_begin(FH_CALL_POLL);
        int rc = real(fds, n, timeout);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_POLL, sat_mul((int64_t)timeout, 1000000), g_slice_ns))
        return real(fds, n, timeout);
    return ppoll_loop(&w, fds, n, NULL);
}

EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *tmo, const sigset_t *sigmask) {
    ppoll_fn real = real_ppoll();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!active()) return real(fds, n, tmo, sigmask);
    if (!tmo) {
        struct fh_untimed s = untimed_begin(FH_CALL_PPOLL);
        int rc = real(fds, n, tmo, sigmask);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    if (!ts_valid(tmo) || ts_zero(tmo)) return real(fds, n, tmo, sigmask);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_PPOLL, ts_to_ns(tmo), g_slice_ns)) return real(fds, n, tmo, sigmask);
    return ppoll_loop(&w, fds, n, sigmask);
}

/* ------------------------------------------------------------------------------------------------ */
/* select, pselect                                                                                   */
/* ------------------------------------------------------------------------------------------------ */

/* The bytes of an fd_set the kernel reads and writes for nfds: whole longs. */
static size_t fdset_bytes(int nfds) {
    size_t longs = ((size_t)nfds + 8 * sizeof(long) - 1) / (8 * sizeof(long));
    return longs * sizeof(long);
}

static int select_loop(struct fh_wait *w, int nfds, fd_set *r, fd_set *wr, fd_set *e, const sigset_t *caller_mask,
                       struct timeval *tv_out) {
    pselect_fn rp = real_pselect();
    size_t nb = fdset_bytes(nfds);
    fd_set cr, cw, ce;
    for (;;) {
        if (r) memcpy(&cr, r, nb);
        if (wr) memcpy(&cw, wr, nb);
        if (e) memcpy(&ce, e, nb);
        sigset_t old, m;
        block_wake(&old);
        tls_woken = 0;
        int64_t rt;
        int more = wait_step(w, &rt, NULL);
        wait_mask(&m, caller_mask, &old);
        struct timespec ts = ns_to_ts(rt);
        int rc = rp(nfds, r ? &cr : NULL, wr ? &cw : NULL, e ? &ce : NULL, &ts, &m);
        int err = errno;
        restore_mask(&old);
        if (rc > 0 || (rc == 0 && !more)) {
            if (r) memcpy(r, &cr, nb);
            if (wr) memcpy(wr, &cw, nb);
            if (e) memcpy(e, &ce, nb);
            if (tv_out) {
                struct timespec left = ns_to_ts(wait_remaining(w));
                tv_out->tv_sec = left.tv_sec;
                tv_out->tv_usec = left.tv_nsec / 1000;
            }
            wait_end(w);
            errno = w->saved_errno;
            return rc;
        }
        if (rc == 0) continue;
        if (err == EINTR && tls_woken) continue;
        if (tv_out) {
            struct timespec left = ns_to_ts(wait_remaining(w));
            tv_out->tv_sec = left.tv_sec;
            tv_out->tv_usec = left.tv_nsec / 1000;
        }
        wait_end(w);
        errno = err;
        return -1;
    }
}

EXPORT int select(int nfds, fd_set *r, fd_set *wr, fd_set *e, struct timeval *tv) {
    select_fn real = real_select();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!active() || nfds < 0 || nfds > FD_SETSIZE) return real(nfds, r, wr, e, tv);
    if (!tv) {
        struct fh_untimed s = untimed_begin(FH_CALL_SELECT);
        int rc = real(nfds, r, wr, e, tv);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    if (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1000000 || (tv->tv_sec == 0 && tv->tv_usec == 0))
        return real(nfds, r, wr, e, tv);
    int64_t rel = sat_add(sat_mul((int64_t)tv->tv_sec, NS_PER_SEC), (int64_t)tv->tv_usec * 1000);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_SELECT, rel, g_slice_ns)) return real(nfds, r, wr, e, tv);
    return select_loop(&w, nfds, r, wr, e, NULL, tv);
}

EXPORT int pselect(int nfds, fd_set *r, fd_set *wr, fd_set *e, const struct timespec *tmo, const sigset_t *sigmask) {
    pselect_fn real = real_pselect();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!active() || nfds < 0 || nfds > FD_SETSIZE) return real(nfds, r, wr, e, tmo, sigmask);
    if (!tmo) {
        struct fh_untimed s = untimed_begin(FH_CALL_PSELECT);
        int rc = real(nfds, r, wr, e, tmo, sigmask);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    if (!ts_valid(tmo) || ts_zero(tmo)) return real(nfds, r, wr, e, tmo, sigmask);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_PSELECT, ts_to_ns(tmo), g_slice_ns)) return real(nfds, r, wr, e, tmo, sigmask);
    return select_loop(&w, nfds, r, wr, e, sigmask, NULL);
}

/* ------------------------------------------------------------------------------------------------ */
/* epoll                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

static int epoll_loop(struct fh_wait *w, int epfd, struct epoll_event *ev, int max, const sigset_t *caller_mask) {
    epoll_pwait_fn rp = real_epoll_pwait();
    epoll_pwait2_fn rp2 = real_epoll_pwait2();
    for (;;) {
        sigset_t old, m;
        block_wake(&old);
        tls_woken = 0;
        int64_t rt;
        int more = wait_step(w, &rt, NULL);
        wait_mask(&m, caller_mask, &old);
        int rc = -1, err = ENOSYS;
        if (rp2 && !atomic_load_explicit(&g_pwait2_missing, memory_order_relaxed)) {
            struct timespec ts = ns_to_ts(rt);
            rc = rp2(epfd, ev, max, &ts, &m);
            err = errno;
            if (rc < 0 && err == ENOSYS) atomic_store_explicit(&g_pwait2_missing, 1, memory_order_relaxed);
        }
        if (rc < 0 && err == ENOSYS && rp) {
            int64_t ms = rt / 1000000 + (rt % 1000000 ? 1 : 0);
            rc = rp(epfd, ev, max, ms > INT_MAX ? INT_MAX : (int)ms, &m);
            err = errno;
        }
        restore_mask(&old);
        if (rc > 0 || (rc == 0 && !more)) {
            wait_end(w);
            errno = w->saved_errno;
            return rc;
        }
        if (rc == 0) continue;
        if (err == EINTR && tls_woken) continue;
        wait_end(w);
        errno = err;
        return -1;
    }
}

EXPORT int epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout) {
    epoll_wait_fn real = real_epoll_wait();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (timeout == 0 || !active() || !real_epoll_pwait()) return real(epfd, ev, max, timeout);
    if (timeout < 0) {
        struct fh_untimed s = untimed_begin(FH_CALL_EPOLL_WAIT);
        int rc = real(epfd, ev, max, timeout);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_EPOLL_WAIT, sat_mul((int64_t)timeout, 1000000), g_slice_ns))
        return real(epfd, ev, max, timeout);
    return epoll_loop(&w, epfd, ev, max, NULL);
}

EXPORT int epoll_pwait(int epfd, struct epoll_event *ev, int max, int timeout, const sigset_t *sigmask) {
    epoll_pwait_fn real = real_epoll_pwait();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (timeout == 0 || !active()) return real(epfd, ev, max, timeout, sigmask);
    if (timeout < 0) {
        struct fh_untimed s = untimed_begin(FH_CALL_EPOLL_PWAIT);
        int rc = real(epfd, ev, max, timeout, sigmask);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_EPOLL_PWAIT, sat_mul((int64_t)timeout, 1000000), g_slice_ns))
        return real(epfd, ev, max, timeout, sigmask);
    return epoll_loop(&w, epfd, ev, max, sigmask);
}

EXPORT int epoll_pwait2(int epfd, struct epoll_event *ev, int max, const struct timespec *tmo, const sigset_t *sigmask) {
    epoll_pwait2_fn real = real_epoll_pwait2();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!active()) return real(epfd, ev, max, tmo, sigmask);
    if (!tmo) {
        struct fh_untimed s = untimed_begin(FH_CALL_EPOLL_PWAIT2);
        int rc = real(epfd, ev, max, tmo, sigmask);
        int err = errno;
        untimed_end(s);
        errno = err;
        return rc;
    }
    if (!ts_valid(tmo) || ts_zero(tmo)) return real(epfd, ev, max, tmo, sigmask);
    struct fh_wait w;
    if (!wait_begin_rel(&w, FH_CALL_EPOLL_PWAIT2, ts_to_ns(tmo), g_slice_ns)) return real(epfd, ev, max, tmo, sigmask);
    return epoll_loop(&w, epfd, ev, max, sigmask);
}

/* ------------------------------------------------------------------------------------------------ */
/* Condition variables                                                                               */
/* ------------------------------------------------------------------------------------------------ */

/*
 * A condvar wait cannot be interrupted (glibc retries its futex wait after a signal), so it waits in short
 * slices. Between two slices the thread holds the mutex but is no waiter: a pthread_cond_signal made
 * without the mutex in that gap would be lost. Every signal and broadcast bumps an epoch (hashed on the
 * condvar's address); a wait that sees the epoch moved across a slice returns 0 — a spurious wake-up,
 * which POSIX permits — instead of waiting on.
 */
static inline _Atomic uint32_t *cv_epoch(const pthread_cond_t *c) {
    uint64_t h = ((uint64_t)(uintptr_t)c >> 3) * 0x9E3779B97F4A7C15ull;
    return &g_cv_epoch[(h >> 32) % CV_EPOCHS];
}

static clockid_t cond_clock(const pthread_cond_t *c) {
#ifdef __GLIBC__
    unsigned int wrefs = atomic_load_explicit((_Atomic unsigned int *)&c->__data.__wrefs, memory_order_relaxed);
    return (wrefs & 2u) ? CLOCK_MONOTONIC : CLOCK_REALTIME;
#else
    (void)c;
    return CLOCK_REALTIME;
#endif
}

static int cond_loop(pthread_cond_t *c, pthread_mutex_t *mx, clockid_t clk, const struct timespec *abst,
                     uint32_t call, int use_clockwait) {
    pthread_cond_timedwait_fn rtw = real_pthread_cond_timedwait();
    pthread_cond_clockwait_fn rcw = real_pthread_cond_clockwait();
    clock_gettime_fn rcg = real_clock_gettime();
    struct fh_wait w;
    wait_begin(&w, call, clk == CLOCK_REALTIME ? DL_WALL : DL_MONO, ts_to_ns(abst), g_cv_slice_ns);
    _Atomic uint32_t *ep = cv_epoch(c);
    uint32_t epoch = atomic_load_explicit(ep, memory_order_acquire);
    for (;;) {
        int64_t rt;
        int more = wait_step(&w, &rt, NULL);
        struct timespec now;
        if (rcg(clk, &now) != 0) now.tv_sec = 0, now.tv_nsec = 0;
        struct timespec ra = ns_to_ts(sat_add(ts_to_ns(&now), rt));
        int rc = use_clockwait ? rcw(c, mx, clk, &ra) : rtw(c, mx, &ra);
        if (rc != ETIMEDOUT) {
            wait_end(&w);
            errno = w.saved_errno;
            return rc;
        }
        if (!more) {
            wait_end(&w);
            errno = w.saved_errno;
            return ETIMEDOUT;
        }
        if (atomic_load_explicit(ep, memory_order_acquire) != epoch) {
            wait_end(&w);
            errno = w.saved_errno;
            return 0;
        }
    }
}

EXPORT int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *mx, const struct timespec *abst) {
    pthread_cond_timedwait_fn real = real_pthread_cond_timedwait();
    if (!real) return ENOSYS;
    if (!c || !abst || !ts_valid(abst) || !active() || !g_condvar_ok) return real(c, mx, abst);
    return cond_loop(c, mx, cond_clock(c), abst, FH_CALL_COND_TIMEDWAIT, 0);
}

EXPORT int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *mx, clockid_t clk, const struct timespec *abst) {
    pthread_cond_clockwait_fn real = real_pthread_cond_clockwait();
    if (!real) return ENOSYS;
    if (!c || !abst || !ts_valid(abst) || (clk != CLOCK_MONOTONIC && clk != CLOCK_REALTIME) || !active() ||
        !g_condvar_ok)
        return real(c, mx, clk, abst);
    return cond_loop(c, mx, clk, abst, FH_CALL_COND_CLOCKWAIT, 1);
}

EXPORT int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *mx) {
    pthread_cond_wait_fn real = real_pthread_cond_wait();
    if (!real) return ENOSYS;
    if (!active()) return real(c, mx);
    struct fh_untimed s = untimed_begin(FH_CALL_COND_WAIT);
    int rc = real(c, mx);
    untimed_end(s);
    return rc;
}

EXPORT int pthread_cond_signal(pthread_cond_t *c) {
    pthread_cond_signal_fn real = real_pthread_cond_signal();
    if (!real) return ENOSYS;
    if (c && active()) atomic_fetch_add_explicit(cv_epoch(c), 1, memory_order_acq_rel);
    return real(c);
}

EXPORT int pthread_cond_broadcast(pthread_cond_t *c) {
    pthread_cond_broadcast_fn real = real_pthread_cond_broadcast();
    if (!real) return ENOSYS;
    if (c && active()) atomic_fetch_add_explicit(cv_epoch(c), 1, memory_order_acq_rel);
    return real(c);
}

/* ------------------------------------------------------------------------------------------------ */
/* Semaphores                                                                                        */
/* ------------------------------------------------------------------------------------------------ */

static int sem_loop(sem_t *s, struct fh_wait *w) {
    sem_clockwait_fn rcw = real_sem_clockwait();
    sem_timedwait_fn rtw = real_sem_timedwait();
    clock_gettime_fn rcg = real_clock_gettime();
    for (;;) {
        tls_woken = 0;
        int64_t rt, now_mono;
        int more = wait_step(w, &rt, &now_mono);
        sigset_t old;
        int was_blocked = unblock_wake(&old);
        int rc, err;
        if (tls_woken) {
            rc = -1;
            err = EINTR;
        } else if (rcw) {
            struct timespec ra = ns_to_ts(sat_add(now_mono, rt));
            rc = rcw(s, CLOCK_MONOTONIC, &ra);
            err = errno;
        } else {
            struct timespec now;
            if (rcg(CLOCK_REALTIME, &now) != 0) now.tv_sec = 0, now.tv_nsec = 0;
            struct timespec ra = ns_to_ts(sat_add(ts_to_ns(&now), rt));
            rc = rtw(s, &ra);
            err = errno;
        }
        if (was_blocked) restore_mask(&old);
        if (rc == 0) {
            wait_end(w);
            errno = w->saved_errno;
            return 0;
        }
        if (err == ETIMEDOUT && more) continue;
        if (err == EINTR && tls_woken) continue;
        wait_end(w);
        errno = err;
        return -1;
    }
}

EXPORT int sem_wait(sem_t *s) {
    sem_wait_fn real = real_sem_wait();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!active()) return real(s);
    struct fh_untimed slot = untimed_begin(FH_CALL_SEM_WAIT);
    int rc = real(s);
    int err = errno;
    untimed_end(slot);
    errno = err;
    return rc;
}

EXPORT int sem_timedwait(sem_t *s, const struct timespec *abst) {
    sem_timedwait_fn real = real_sem_timedwait();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!s || !abst || !ts_valid(abst) || !active()) return real(s, abst);
    struct fh_wait w;
    wait_begin(&w, FH_CALL_SEM_TIMEDWAIT, DL_WALL, ts_to_ns(abst), g_slice_ns);
    return sem_loop(s, &w);
}

EXPORT int sem_clockwait(sem_t *s, clockid_t clk, const struct timespec *abst) {
    sem_clockwait_fn real = real_sem_clockwait();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (!s || !abst || !ts_valid(abst) || (clk != CLOCK_MONOTONIC && clk != CLOCK_REALTIME) || !active())
        return real(s, clk, abst);
    struct fh_wait w;
    wait_begin(&w, FH_CALL_SEM_CLOCKWAIT, clk == CLOCK_REALTIME ? DL_WALL : DL_MONO, ts_to_ns(abst), g_slice_ns);
    return sem_loop(s, &w);
}

/* ------------------------------------------------------------------------------------------------ */
/* Mutexes with a timeout (not interruptible either: short slices)                                   */
/* ------------------------------------------------------------------------------------------------ */

static int mutex_loop(pthread_mutex_t *mx, struct fh_wait *w) {
    pthread_mutex_clocklock_fn rcl = real_pthread_mutex_clocklock();
    pthread_mutex_timedlock_fn rtl = real_pthread_mutex_timedlock();
    clock_gettime_fn rcg = real_clock_gettime();
    for (;;) {
        int64_t rt, now_mono;
        int more = wait_step(w, &rt, &now_mono);
        int rc;
        if (rcl) {
            struct timespec ra = ns_to_ts(sat_add(now_mono, rt));
            rc = rcl(mx, CLOCK_MONOTONIC, &ra);
        } else {
            struct timespec now;
            if (rcg(CLOCK_REALTIME, &now) != 0) now.tv_sec = 0, now.tv_nsec = 0;
            struct timespec ra = ns_to_ts(sat_add(ts_to_ns(&now), rt));
            rc = rtl(mx, &ra);
        }
        if (rc == ETIMEDOUT && more) continue;
        wait_end(w);
        errno = w->saved_errno;
        return rc;
    }
}

EXPORT int pthread_mutex_timedlock(pthread_mutex_t *mx, const struct timespec *abst) {
    pthread_mutex_timedlock_fn real = real_pthread_mutex_timedlock();
    if (!real) return ENOSYS;
    if (!mx || !abst || !ts_valid(abst) || !active()) return real(mx, abst);
    struct fh_wait w;
    wait_begin(&w, FH_CALL_MUTEX_TIMEDLOCK, DL_WALL, ts_to_ns(abst), g_cv_slice_ns);
    return mutex_loop(mx, &w);
}

EXPORT int pthread_mutex_clocklock(pthread_mutex_t *mx, clockid_t clk, const struct timespec *abst) {
    pthread_mutex_clocklock_fn real = real_pthread_mutex_clocklock();
    if (!real) return ENOSYS;
    if (!mx || !abst || !ts_valid(abst) || (clk != CLOCK_MONOTONIC && clk != CLOCK_REALTIME) || !active())
        return real(mx, clk, abst);
    struct fh_wait w;
    wait_begin(&w, FH_CALL_MUTEX_CLOCKLOCK, clk == CLOCK_REALTIME ? DL_WALL : DL_MONO, ts_to_ns(abst), g_cv_slice_ns);
    return mutex_loop(mx, &w);
}

/* ------------------------------------------------------------------------------------------------ */
/* syscall(SYS_futex, ...) — how Rust's std (Mutex, Condvar, park) and so tokio wait                 */
/* ------------------------------------------------------------------------------------------------ */

static long futex_wait(long uaddr, long op, long val, const struct timespec *tmo, long uaddr2, long val3) {
    syscall_fn real = real_syscall();
    int cmd = (int)(op & FUTEX_CMD_MASK);
    int realtime = (op & FUTEX_CLOCK_REALTIME) != 0;
    uint32_t call = cmd == FUTEX_WAIT ? FH_CALL_FUTEX_WAIT : FH_CALL_FUTEX_WAIT_BITSET;
    struct fh_wait w;
    if (cmd == FUTEX_WAIT) {
        /* FUTEX_WAIT's timeout is relative, whatever the clock flag */
        if (!wait_begin_rel(&w, call, ts_to_ns(tmo), g_slice_ns))
            return real(SYS_futex, uaddr, op, val, (long)tmo, uaddr2, val3);
    } else {
        wait_begin(&w, call, realtime ? DL_WALL : DL_MONO, ts_to_ns(tmo), g_slice_ns);
    }
    long real_op = op & ~(long)FUTEX_CLOCK_REALTIME;
    for (;;) {
        tls_woken = 0;
        int64_t rt, now_mono;
        int more = wait_step(&w, &rt, &now_mono);
        struct timespec ts = cmd == FUTEX_WAIT ? ns_to_ts(rt) : ns_to_ts(sat_add(now_mono, rt));
        sigset_t old;
        int was_blocked = unblock_wake(&old);
        long rc;
        int err;
        if (tls_woken) {
            rc = -1;
            err = EINTR;
        } else {
            rc = real(SYS_futex, uaddr, real_op, val, (long)&ts, uaddr2, val3);
            err = errno;
        }
        if (was_blocked) restore_mask(&old);
        if (rc >= 0) {
            wait_end(&w);
            errno = w.saved_errno;
            return rc;
        }
        if (err == ETIMEDOUT && more) continue;
        if (err == EINTR && tls_woken) continue;
        wait_end(&w);
        errno = err;
        return -1;
    }
}

EXPORT long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    syscall_fn real = real_syscall();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (number == SYS_futex && active()) {
        int cmd = (int)(a2 & FUTEX_CMD_MASK);
        if (cmd == FUTEX_WAIT || cmd == FUTEX_WAIT_BITSET) {
            const struct timespec *tmo = (const struct timespec *)a4;
            if (!tmo) {
                struct fh_untimed s = untimed_begin(cmd == FUTEX_WAIT ? FH_CALL_FUTEX_WAIT : FH_CALL_FUTEX_WAIT_BITSET);
                long rc = real(number, a1, a2, a3, a4, a5, a6);
                int err = errno;
                untimed_end(s);
                errno = err;
                return rc;
            }
            if (ts_valid(tmo)) return futex_wait(a1, a2, a3, tmo, a5, a6);
        }
    }
    return real(number, a1, a2, a3, a4, a5, a6);
}

/* ------------------------------------------------------------------------------------------------ */
/* timerfd, setitimer, alarm: scaled by the speed at set time (an approximation: they follow neither a */
/* later speed change nor a skip of the time driver)                                                  */
/* ------------------------------------------------------------------------------------------------ */

static int current_speed(double *speed, struct fh_now *n) {
    if (!read_now(n)) return 0;
    *speed = n->speed;
    return 1;
}

static struct timespec ts_virtual_to_real(const struct timespec *v, double speed) {
    if (ts_zero(v)) return *v;
    if (!(speed > 0.0)) return ns_to_ts(INT64_MAX / 4); /* time stands still: practically never */
    int64_t r = unscale_ceil_ns(ts_to_ns(v), speed);
    return ns_to_ts(r > 0 ? r : 1);
}

static struct timespec ts_real_to_virtual(const struct timespec *r, double speed) {
    if (ts_zero(r)) return *r;
    int64_t v = scale_ns(ts_to_ns(r), speed);
    return ns_to_ts(v > 0 ? v : 1);
}

EXPORT int timerfd_create(int clk, int flags) {
    timerfd_create_fn real = real_timerfd_create();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    int fd = real(clk, flags);
    if (fd >= 0 && fd < TIMERFD_TRACKED) atomic_store_explicit(&g_timerfd_clock[fd], clk + 1, memory_order_relaxed);
    return fd;
}

EXPORT int timerfd_settime(int fd, int flags, const struct itimerspec *nv, struct itimerspec *ov) {
    timerfd_settime_fn real = real_timerfd_settime();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    struct fh_now n;
    double speed;
    if (!nv || !ts_valid(&nv->it_value) || !ts_valid(&nv->it_interval) || !active() || !current_speed(&speed, &n))
        return real(fd, flags, nv, ov);
    int clk = CLOCK_MONOTONIC;
    if (fd >= 0 && fd < TIMERFD_TRACKED) {
        int c = atomic_load_explicit(&g_timerfd_clock[fd], memory_order_relaxed);
        if (c > 0) clk = c - 1;
    }
    struct itimerspec rv;
    rv.it_interval = ts_virtual_to_real(&nv->it_interval, speed);
    if (ts_zero(&nv->it_value)) {
        rv.it_value = nv->it_value;
    } else if (flags & TFD_TIMER_ABSTIME) {
        int kind = virtual_clock_kind(clk);
        int64_t vnow = kind == VC_WALL ? n.vwall : n.vmono;
        int64_t left = sat_sub(ts_to_ns(&nv->it_value), vnow);
        struct timespec real_now;
        clock_gettime_fn rcg = real_clock_gettime();
        if (kind == VC_NONE || rcg(clk, &real_now) != 0) return real(fd, flags, nv, ov);
        int64_t real_left = left <= 0 ? 0 : (speed > 0.0 ? unscale_ceil_ns(left, speed) : INT64_MAX / 4);
        int64_t abs = sat_add(ts_to_ns(&real_now), real_left);
        rv.it_value = ns_to_ts(abs > 0 ? abs : 1);
    } else {
        rv.it_value = ts_virtual_to_real(&nv->it_value, speed);
    }
    int rc = real(fd, flags, &rv, ov);
    if (rc == 0 && ov) {
        ov->it_value = ts_real_to_virtual(&ov->it_value, speed);
        ov->it_interval = ts_real_to_virtual(&ov->it_interval, speed);
    }
    return rc;
}

EXPORT int timerfd_gettime(int fd, struct itimerspec *cur) {
    timerfd_gettime_fn real = real_timerfd_gettime();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    int rc = real(fd, cur);
    struct fh_now n;
    double speed;
    if (rc == 0 && cur && active() && current_speed(&speed, &n)) {
        cur->it_value = ts_real_to_virtual(&cur->it_value, speed);
        cur->it_interval = ts_real_to_virtual(&cur->it_interval, speed);
    }
    return rc;
}

static struct timeval tv_scale(const struct timeval *tv, double speed, int to_real) {
    struct timespec ts = {tv->tv_sec, (long)tv->tv_usec * 1000};
    struct timespec out = to_real ? ts_virtual_to_real(&ts, speed) : ts_real_to_virtual(&ts, speed);
    struct timeval r;
    r.tv_sec = out.tv_sec;
    r.tv_usec = out.tv_nsec / 1000;
    if (r.tv_sec == 0 && r.tv_usec == 0 && !ts_zero(&out)) r.tv_usec = 1;
    return r;
}

EXPORT int setitimer(__itimer_which_t which, const struct itimerval *nv, struct itimerval *ov) {
    setitimer_fn real = real_setitimer();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    struct fh_now n;
    double speed;
    if (which != ITIMER_REAL || !nv || nv->it_value.tv_usec < 0 || nv->it_value.tv_usec >= 1000000 ||
        nv->it_interval.tv_usec < 0 || nv->it_interval.tv_usec >= 1000000 || nv->it_value.tv_sec < 0 ||
        nv->it_interval.tv_sec < 0 || !active() || !current_speed(&speed, &n) || speed == 1.0)
        return real(which, nv, ov);
    struct itimerval rv;
    rv.it_value = tv_scale(&nv->it_value, speed, 1);
    rv.it_interval = tv_scale(&nv->it_interval, speed, 1);
    int rc = real(which, &rv, ov);
    if (rc == 0 && ov) {
        ov->it_value = tv_scale(&ov->it_value, speed, 0);
        ov->it_interval = tv_scale(&ov->it_interval, speed, 0);
    }
    return rc;
}

EXPORT int getitimer(__itimer_which_t which, struct itimerval *cur) {
    getitimer_fn real = real_getitimer();
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    int rc = real(which, cur);
    struct fh_now n;
    double speed;
    if (rc == 0 && cur && which == ITIMER_REAL && active() && current_speed(&speed, &n) && speed != 1.0) {
        cur->it_value = tv_scale(&cur->it_value, speed, 0);
        cur->it_interval = tv_scale(&cur->it_interval, speed, 0);
    }
    return rc;
}

EXPORT unsigned int alarm(unsigned int seconds) {
    alarm_fn real = real_alarm();
    setitimer_fn rsi = real_setitimer();
    struct fh_now n;
    double speed;
    if (!rsi || !active() || !current_speed(&speed, &n) || speed == 1.0) {
        if (real) return real(seconds);
        return 0;
    }
    struct itimerval nv, ov;
    memset(&nv, 0, sizeof nv);
    nv.it_value.tv_sec = (time_t)seconds;
    nv.it_value = tv_scale(&nv.it_value, speed, 1);
    if (rsi(ITIMER_REAL, &nv, &ov) != 0) return 0;
    struct timeval left = tv_scale(&ov.it_value, speed, 0);
    /* like glibc: round to the nearest second, and never report 0 for a pending alarm */
    unsigned int r = (unsigned int)left.tv_sec;
    if (left.tv_usec >= 500000 || (r == 0 && left.tv_usec > 0)) r++;
    return r;
}
