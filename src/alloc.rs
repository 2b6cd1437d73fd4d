//! The allocator the `quartic` command, the examples and the benches run on: mimalloc, set up
//! for tensors before its first allocation.
//!
//! - **Freed memory stays in the process.** Every dfdx op allocates its output, and the edge
//!   tensors of one layer are tens of megabytes. The system allocator hands such buffers back to
//!   the kernel when they are freed, so the next op faults them in again, zeroed page by page: a
//!   fifth of a forward pass went to clearing pages. With purging off, the peak stays what the
//!   largest step needs.
//! - **No transparent huge pages.** mimalloc advises the kernel to back its 1 GiB arena with
//!   huge pages. Where the machine's free memory is fragmented, the kernel then compacts memory
//!   inside the page faults that first touch the arena. On this project's machine that cost a
//!   README-model training process 5–9 s of system time on top of 3 s of work, and the default
//!   `quartic train` about 1.2 s, varying from run to run. The arena is reserved at the first
//!   allocation, before `main` runs, so the options are set there.
//!
//! Use: `#[global_allocator] static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;`

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay` (a delay of −1 means never purge).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc v3's `mi_option_allow_thp`.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// mimalloc, with its options set before the first allocation.
pub struct Allocator;

impl Allocator {
    #[inline]
    fn configure_once() {
        if !CONFIGURED.load(Ordering::Relaxed) && !CONFIGURED.swap(true, Ordering::Relaxed) {
            // Safety: sets two options (no allocation); mimalloc reads options atomically. Two
            // threads racing here set the same values.
            unsafe {
                libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
                libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
            }
        }
    }
}

/// Whether the options of this module are in force (after the first allocation through
/// [`Allocator`]).
pub fn configured() -> bool {
    // Safety: reads two options.
    unsafe {
        libmimalloc_sys::mi_option_get(PURGE_DELAY) == -1
            && libmimalloc_sys::mi_option_get(ALLOW_THP) == 0
    }
}

// Safety: every call goes to mimalloc unchanged, after setting its options once.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::configure_once();
        // Safety: the caller's contract, passed on unchanged.
        unsafe { MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::configure_once();
        // Safety: the caller's contract, passed on unchanged.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Safety: the caller's contract, passed on unchanged.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::configure_once();
        // Safety: the caller's contract, passed on unchanged.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}
