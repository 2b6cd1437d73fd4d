//! The thread pool the `quartic` command, the examples and the benches run on.
//!
//! rayon's default pool runs beside the thread that calls it: the caller sleeps while the pool
//! runs a parallel kernel, and the pool's threads fall asleep while the caller runs dfdx's serial
//! ops between kernels. A small model's training step made about 2,000 such hand-offs (56,000
//! context switches in 30 steps), a fifth of its time. With the calling thread in the pool, a
//! parallel kernel starts on it at once and the other threads join in.

/// Makes the calling thread one of rayon's global pool threads (one per core, itself
/// included). Call first thing in `main`, before anything runs in parallel; a no-op when the
/// global pool was already built (a second call, or a library that built it first).
pub fn include_calling_thread() {
    // an error only says that the pool exists already, and that pool works too
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
}
