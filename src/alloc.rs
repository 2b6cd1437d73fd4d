//! The allocator the `quartic` command, the examples and the benches run on.
//!
//! Every dfdx op allocates its output, and the edge tensors of one layer are tens of megabytes.
//! The system allocator hands such buffers back to the kernel when they are freed, so the next
//! op faults them in again, zeroed page by page: a fifth of a forward pass went to clearing
//! pages. mimalloc with purging off keeps freed memory in the process for the next op; the peak
//! stays what the largest step needs.
//!
//! Use: `#[global_allocator] static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;`
//! and call [`keep_freed_memory`] first thing in `main`.

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same index in its v2 and v3).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns off mimalloc's purging of freed memory (a delay of −1 means never). Harmless when
/// mimalloc is not the global allocator.
pub fn keep_freed_memory() {
    // Safety: sets one option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}
