//! The one raw pointer that rayon tasks share to write disjoint parts of one buffer.

use std::marker::PhantomData;

/// A buffer's elements, writable from many tasks at once. It borrows the buffer for as long as
/// it lives (so the buffer cannot be moved or read meanwhile), and in debug builds checks every
/// offset against the buffer's length. Each task must write a set of elements no other task
/// reads or writes.
pub(super) struct Shared<'a, E> {
    ptr: *mut E,
    len: usize,
    _buffer: PhantomData<&'a mut [E]>,
}

// a pointer and a length, whatever `E` is (a derive would ask `E: Copy`)
impl<E> Clone for Shared<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Shared<'_, E> {}

// SAFETY: tasks write disjoint elements (each use's contract); E itself crosses threads.
unsafe impl<E: Send> Send for Shared<'_, E> {}
unsafe impl<E: Send> Sync for Shared<'_, E> {}

impl<'a, E> Shared<'a, E> {
    /// Every element of `buffer`.
    pub(super) fn new(buffer: &'a mut [E]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
            _buffer: PhantomData,
        }
    }

    /// The capacity of a vector that the tasks fill before its length is set.
    pub(super) fn spare(buffer: &'a mut Vec<E>) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.capacity(),
            _buffer: PhantomData,
        }
    }

    /// How many elements the buffer holds.
    pub(super) fn len(self) -> usize {
        self.len
    }

    /// The element `offset` places on (a method, so that closures capture the whole `Shared`).
    ///
    /// Safety: `offset` lies within the buffer (checked in debug builds), and what the caller
    /// writes through the pointer no other task touches.
    #[inline]
    pub(super) unsafe fn at(self, offset: usize) -> *mut E {
        debug_assert!(offset <= self.len, "offset {offset} past {}", self.len);
        // SAFETY: within the buffer, as the caller guarantees
        unsafe { self.ptr.add(offset) }
    }

    /// Writes element `i`.
    ///
    /// Safety: `i` lies within the buffer (checked in debug builds) and no other task reads or
    /// writes it at the same time.
    #[inline]
    pub(super) unsafe fn write(self, i: usize, v: E) {
        debug_assert!(i < self.len, "index {i} past {}", self.len);
        // SAFETY: as the caller guarantees
        unsafe { *self.ptr.add(i) = v }
    }
}
