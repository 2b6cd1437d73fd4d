//! The thread pool the `quartic` command, the examples and the benches run on, and how its
//! threads are kept ready between the many short parallel kernels of a step.
//!
//! rayon's default pool runs beside the thread that calls it: the caller sleeps while the pool
//! runs a parallel kernel, and the pool's threads fall asleep while the caller runs dfdx's serial
//! ops between kernels. A small model's training step made about 2,000 such hand-offs (56,000
//! context switches in 30 steps), a fifth of its time. With the calling thread in the pool, a
//! parallel kernel starts on it at once and the other threads join in.
//!
//! They join in only when awake: an idle rayon thread goes to sleep after a few microseconds,
//! and waking it (on a virtual machine especially) takes longer than most of a small model's
//! kernels, which then run on the calling thread alone. [`keep_warm`] keeps the other threads
//! looking for work for a while after the last job they ran.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Makes the calling thread one of rayon's global pool threads (one per core, itself
/// included). Call first thing in `main`, before anything runs in parallel; a no-op when the
/// global pool was already built (a second call, or a library that built it first).
pub fn include_calling_thread() {
    // an error only says that the pool exists already, and that pool works too
    let built = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    if built.is_ok() {
        CALLER_IN_POOL.store(true, Ordering::Release);
    }
}

/// Whether [`include_calling_thread`] made its caller thread 0 of the pool: that thread has
/// its own work to return to and never polls.
static CALLER_IN_POOL: AtomicBool = AtomicBool::new(false);

/// How long a warm thread keeps looking for work after the last job it ran, in microseconds
/// (20 ms unless [`set_stay_warm`] says otherwise; 0: never, the threads sleep between kernels).
static STAY_WARM_US: AtomicU64 = AtomicU64::new(20_000);

/// The environment variable the `quartic` command reads for [`set_stay_warm`]: milliseconds,
/// 0 to 1000.
pub const STAY_WARM_ENV: &str = "QUARTIC_STAY_WARM_MS";

/// How long idle pool threads keep polling for work after a kernel ([`keep_warm`]). Polling
/// burns those cores: on cores billed by the second (a cluster), `Duration::ZERO` turns it
/// off, at the price of waking the threads for every parallel kernel (a small model's step then
/// takes longer).
pub fn set_stay_warm(d: Duration) {
    STAY_WARM_US.store(
        d.as_micros().min(u64::MAX as u128) as u64,
        Ordering::Release,
    );
}

/// Broadcast jobs of the last [`keep_warm`] not yet finished (one per pool thread); a new
/// call starts pollers only when this is zero.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Live [`pause_polling`] guards.
static PAUSES: AtomicUsize = AtomicUsize::new(0);

/// While the returned guard lives, [`keep_warm`] starts no pollers. For work that keeps every
/// thread busy on its own (the shards of a training step): a poller would start on a thread
/// waiting inside such work, and that work could not go on until the poller stopped, 20 ms
/// after the last job.
pub fn pause_polling() -> PollingPaused {
    PAUSES.fetch_add(1, Ordering::AcqRel);
    PollingPaused(())
}

/// See [`pause_polling`].
pub struct PollingPaused(());

impl Drop for PollingPaused {
    fn drop(&mut self) {
        PAUSES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps the global pool's other threads polling for work (instead of asleep) until none has
/// run a job for the time [`set_stay_warm`] set (20 ms by default). Cheap to call before every parallel kernel: it starts the
/// pollers only when none are running. Polling burns its core while it lasts, so it stops on
/// its own once the work does.
pub fn keep_warm() {
    let stay = Duration::from_micros(STAY_WARM_US.load(Ordering::Acquire));
    if stay.is_zero() || PAUSES.load(Ordering::Acquire) > 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if threads < 2
        || PENDING
            .compare_exchange(0, threads, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    let caller = rayon::current_thread_index();
    rayon::spawn_broadcast(move |ctx| {
        // the calling thread and the program's own thread have their own work to do; every
        // other thread polls
        let own_work = Some(ctx.index()) == caller
            || (ctx.index() == 0 && CALLER_IN_POOL.load(Ordering::Acquire));
        if !own_work {
            let mut last_job = Instant::now();
            let mut idle_polls = 0u32;
            loop {
                match rayon::yield_now() {
                    Some(rayon::Yield::Executed) => {
                        last_job = Instant::now();
                        idle_polls = 0;
                    }
                    // the clock is read every 64 idle polls only
                    _ if idle_polls % 64 == 63 && last_job.elapsed() > stay => break,
                    _ => {
                        idle_polls = idle_polls.wrapping_add(1);
                        std::hint::spin_loop();
                    }
                }
            }
        }
        PENDING.fetch_sub(1, Ordering::AcqRel);
    });
}
