//! A thread of its own that runs a single-threaded runtime for a hub's live connections (see
//! [`crate::HubBuilder::live_runtime`]), and the hand-over of connections to it.
//!
//! Handing a connection to another thread wakes that thread when it sleeps, and in a connection
//! storm it would sleep and be woken again for nearly every connection (measured: three context
//! switches per connection, 20 µs of CPU each on a 2-core VM). Connections that arrive within
//! [`BATCH_GAP`] of the last hand-over therefore wait for the next one, and go over together:
//! a lone connection goes over at once, a storm in batches at most every [`BATCH_GAP`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// Connections handed over within this time of the last hand-over wait for the next one.
pub const BATCH_GAP: Duration = Duration::from_millis(2);

/// A connection's remaining work, to run on the live runtime.
pub(crate) type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The thread and its runtime; dropping it stops the runtime (what still runs there is dropped:
/// a connection's task that is dropped records its close) and waits for the thread.
pub struct LiveThread {
    runtime: LiveRuntime,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LiveThread {
    /// Start the thread (named `fakehub-live`).
    pub fn start() -> std::io::Result<LiveThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fakehub-live".into())
            .spawn(move || {
                // Runs the tasks spawned through the handle until told to stop (or until the
                // LiveThread is gone without saying so).
                let _ = runtime.block_on(stopped);
            })?;
        Ok(LiveThread {
            runtime: LiveRuntime {
                handle,
                queue: Arc::default(),
            },
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime, for [`crate::HubBuilder::live_runtime`].
    pub fn runtime(&self) -> LiveRuntime {
        self.runtime.clone()
    }
}

impl Drop for LiveThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where live connections are served, and the queue of those on their way there.
#[derive(Clone)]
pub struct LiveRuntime {
    handle: tokio::runtime::Handle,
    queue: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Job>,
    /// A hand-over of what waits is already on its way.
    scheduled: bool,
    last: Option<Instant>,
}

impl std::fmt::Debug for LiveRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRuntime")
            .field("id", &self.handle.id())
            .finish_non_exhaustive()
    }
}

impl LiveRuntime {
    /// Whether the calling task runs on this runtime.
    pub(crate) fn is_current(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.handle.id())
    }

    /// Run `job` on the live runtime, tracked by `tasks` (at once, or with the next batch). Call
    /// it from a task of another runtime: that runtime times the batch.
    pub(crate) fn hand_over(&self, tasks: &TaskTracker, job: Job) {
        let delay = {
            let mut q = self.lock();
            q.waiting.push(job);
            if q.scheduled {
                return;
            }
            q.scheduled = true;
            q.last
                .map_or(Duration::ZERO, |t| BATCH_GAP.saturating_sub(t.elapsed()))
        };
        if delay.is_zero() {
            self.send_waiting(tasks);
        } else {
            let (live, spawner) = (self.clone(), tasks.clone());
            tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                live.send_waiting(&spawner);
            });
        }
    }

    /// Send what waits to the live runtime: one wake of its thread for the whole batch.
    fn send_waiting(&self, tasks: &TaskTracker) {
        let jobs = {
            let mut q = self.lock();
            q.scheduled = false;
            q.last = Some(Instant::now());
            std::mem::take(&mut q.waiting)
        };
        let spawner = tasks.clone();
        tasks.spawn_on(
            async move {
                for job in jobs {
                    spawner.spawn(job);
                }
            },
            &self.handle,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds no invariant a panic elsewhere could break.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
