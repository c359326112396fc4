/*
 * fakehub_clock_shm.h — layout of the fakehub shared-memory clock file.
 *
 * One file per hub run. The hub (Rust, `fakehub_proctime::ClockShm`) creates it and is the only writer
 * of the header but for `thread_hwm`, which processes raise; each process writes only its own process slot
 * and the slots of its own threads (the hub also frees the slots of processes and threads that are gone). Everything is little-endian and naturally
 * aligned; every field that changes after creation is accessed with atomic operations.
 *
 * This header is mirrored by `src/layout.rs`; `tests/layout.rs` compiles a program against this header and
 * checks every offset and size against the Rust definitions.
 */
#ifndef FAKEHUB_CLOCK_SHM_H
#define FAKEHUB_CLOCK_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define FH_MAGIC "FHCLOCK1" /* 8 bytes, no terminating NUL in the file */
#define FH_VERSION 2u
#define FH_HEADER_SIZE 128u
#define FH_PROCESS_SLOT_SIZE 16u
#define FH_THREAD_SLOT_SIZE 32u
#define FH_MAX_PROCESSES_LIMIT 65536u
#define FH_MAX_THREADS_LIMIT 1048576u
#define FH_ENV_SHM "FAKEHUB_CLOCK_SHM"

/* fh_thread_slot.state */
#define FH_THREAD_RUNNING 0u /* not in a wrapped wait */
#define FH_THREAD_TIMED 1u   /* in a wrapped wait that ends at deadline_virt_mono_ns at the latest */
#define FH_THREAD_UNTIMED 2u /* in a wrapped wait without a timeout */
#define FH_THREAD_TIMED_WALL 3u /* in a wrapped wait that ends at a virtual wall-clock time (deadline field) at
                                   the latest: the driver converts it with the current anchor, so a wall-clock
                                   jump moves it even while the thread cannot be interrupted (condvars) */

/* fh_thread_slot.call: which wrapped function the thread waits in (diagnostics only) */
#define FH_CALL_NONE 0u
#define FH_CALL_NANOSLEEP 1u
#define FH_CALL_CLOCK_NANOSLEEP 2u
#define FH_CALL_USLEEP 3u
#define FH_CALL_SLEEP 4u
#define FH_CALL_POLL 5u
#define FH_CALL_PPOLL 6u
#define FH_CALL_SELECT 7u
#define FH_CALL_PSELECT 8u
#define FH_CALL_EPOLL_WAIT 9u
#define FH_CALL_EPOLL_PWAIT 10u
#define FH_CALL_EPOLL_PWAIT2 11u
#define FH_CALL_COND_TIMEDWAIT 12u
#define FH_CALL_COND_CLOCKWAIT 13u
#define FH_CALL_COND_WAIT 14u
#define FH_CALL_SEM_WAIT 15u
#define FH_CALL_SEM_TIMEDWAIT 16u
#define FH_CALL_SEM_CLOCKWAIT 17u
#define FH_CALL_MUTEX_TIMEDLOCK 18u
#define FH_CALL_MUTEX_CLOCKLOCK 19u
#define FH_CALL_FUTEX_WAIT 20u
#define FH_CALL_FUTEX_WAIT_BITSET 21u

/* fh_process_slot.flags */
#define FH_PROC_PRELOAD 1u       /* the preload inside the process claimed the slot */
#define FH_PROC_HUB 2u           /* the hub registered the pid (right after spawning it) */
#define FH_PROC_CONDVAR_CLOCK 4u /* the preload could read condition variables' clocks: condvars virtualised */

/* The anchor: virtual = virt + (real CLOCK_MONOTONIC now - real_mono_ns) * speed. */
struct fh_anchor {
    _Atomic int64_t real_mono_ns;
    _Atomic int64_t virt_mono_ns;
    _Atomic int64_t virt_wall_ns;
    _Atomic uint64_t speed_bits; /* an IEEE-754 double, finite and >= 0 */
};

struct fh_header {
    char magic[8];             /*   0 "FHCLOCK1" */
    uint32_t version;          /*   8 FH_VERSION */
    uint32_t header_size;      /*  12 FH_HEADER_SIZE */
    uint32_t max_processes;    /*  16 process table length */
    uint32_t max_threads;      /*  20 thread table length */
    uint32_t process_slot_size;/*  24 FH_PROCESS_SLOT_SIZE */
    uint32_t thread_slot_size; /*  28 FH_THREAD_SLOT_SIZE */
    int32_t wake_signal;       /*  32 signal number the hub sends to wake a waiting thread */
    uint32_t flags;            /*  36 reserved, 0 */
    int64_t condvar_slice_ns;  /*  40 longest real wait of a condvar / mutex wait between clock checks */
    int64_t other_slice_ns;    /*  48 longest real wait of any other wrapped wait between clock checks */
    _Atomic uint64_t seq;      /*  56 seqlock over the anchor: odd while the hub writes it */
    struct fh_anchor anchor;   /*  64 */
    _Atomic uint32_t thread_hwm; /* 96 one past the highest thread slot index ever claimed: a thread raises it
                                   before it claims a slot, so the hub reads no further */
    uint32_t reserved32;       /* 100 */
    uint64_t reserved[3];      /* 104 */
};

struct fh_process_slot {
    _Atomic int32_t pid;         /* 0: free */
    _Atomic uint32_t flags;      /* FH_PROC_* */
    _Atomic uint64_t start_time; /* field 22 of /proc/<pid>/stat (clock ticks after boot); 0: unknown */
};

struct fh_thread_slot {
    _Atomic int32_t tid;                  /* 0: free */
    _Atomic int32_t pid;                  /* the thread's process */
    _Atomic uint32_t state;               /* FH_THREAD_* */
    _Atomic uint32_t call;                /* FH_CALL_* */
    _Atomic int64_t deadline_ns;          /* TIMED: virtual monotonic; TIMED_WALL: virtual wall clock */
    _Atomic uint64_t changes;             /* odd while the thread rewrites the slot; +2 per change */
};

_Static_assert(sizeof(struct fh_header) == FH_HEADER_SIZE, "header size");
_Static_assert(offsetof(struct fh_header, seq) == 56, "seq offset");
_Static_assert(offsetof(struct fh_header, anchor) == 64, "anchor offset");
_Static_assert(sizeof(struct fh_process_slot) == FH_PROCESS_SLOT_SIZE, "process slot size");
_Static_assert(sizeof(struct fh_thread_slot) == FH_THREAD_SLOT_SIZE, "thread slot size");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the clock file is little-endian");

/* Process table at FH_HEADER_SIZE; thread table right after it. */
#define FH_PROCESS_TABLE_OFFSET ((size_t)FH_HEADER_SIZE)
#define FH_THREAD_TABLE_OFFSET(max_processes) \
    (FH_PROCESS_TABLE_OFFSET + (size_t)(max_processes) * FH_PROCESS_SLOT_SIZE)
#define FH_FILE_SIZE(max_processes, max_threads) \
    (FH_THREAD_TABLE_OFFSET(max_processes) + (size_t)(max_threads) * FH_THREAD_SLOT_SIZE)

#endif
