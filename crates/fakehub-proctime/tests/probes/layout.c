/* Prints the clock file layout as the C header defines it, in the names of layout::layout_table(). */
#include <stdio.h>
#include "fakehub_clock_shm.h"

#define SIZE(t) printf("sizeof(%s) %zu\n", #t, sizeof(struct t))
#define OFF(t, f) printf("%s.%s %zu\n", #t, #f, offsetof(struct t, f))

int main(void) {
    SIZE(fh_header);
    SIZE(fh_anchor);
    SIZE(fh_process_slot);
    SIZE(fh_thread_slot);
    OFF(fh_header, magic);
    OFF(fh_header, version);
    OFF(fh_header, header_size);
    OFF(fh_header, max_processes);
    OFF(fh_header, max_threads);
    OFF(fh_header, process_slot_size);
    OFF(fh_header, thread_slot_size);
    OFF(fh_header, wake_signal);
    OFF(fh_header, flags);
    OFF(fh_header, condvar_slice_ns);
    OFF(fh_header, other_slice_ns);
    OFF(fh_header, seq);
    OFF(fh_header, anchor);
    OFF(fh_header, thread_hwm);
    OFF(fh_header, reserved32);
    OFF(fh_header, reserved);
    OFF(fh_anchor, real_mono_ns);
    OFF(fh_anchor, virt_mono_ns);
    OFF(fh_anchor, virt_wall_ns);
    OFF(fh_anchor, speed_bits);
    OFF(fh_process_slot, pid);
    OFF(fh_process_slot, flags);
    OFF(fh_process_slot, start_time);
    OFF(fh_thread_slot, tid);
    OFF(fh_thread_slot, pid);
    OFF(fh_thread_slot, state);
    OFF(fh_thread_slot, call);
    OFF(fh_thread_slot, deadline_ns);
    OFF(fh_thread_slot, changes);
    printf("FH_PROCESS_TABLE_OFFSET %zu\n", FH_PROCESS_TABLE_OFFSET);
    printf("FH_THREAD_TABLE_OFFSET(3) %zu\n", FH_THREAD_TABLE_OFFSET(3));
    printf("FH_FILE_SIZE(3,5) %zu\n", FH_FILE_SIZE(3, 5));
    /* constants shared with Rust */
    printf("FH_VERSION %u\nFH_HEADER_SIZE %u\nFH_THREAD_TIMED %u\nFH_THREAD_UNTIMED %u\nFH_THREAD_TIMED_WALL %u\n",
           FH_VERSION, FH_HEADER_SIZE, FH_THREAD_TIMED, FH_THREAD_UNTIMED, FH_THREAD_TIMED_WALL);
    printf("FH_PROC_PRELOAD %u\nFH_PROC_HUB %u\nFH_PROC_CONDVAR_CLOCK %u\nFH_MAGIC %s\n", FH_PROC_PRELOAD, FH_PROC_HUB,
           FH_PROC_CONDVAR_CLOCK, FH_MAGIC);
    printf("FH_MAX_PROCESSES_LIMIT %u\nFH_MAX_THREADS_LIMIT %u\nFH_ENV_SHM %s\n", FH_MAX_PROCESSES_LIMIT,
           FH_MAX_THREADS_LIMIT, FH_ENV_SHM);
    return 0;
}
