//! Matrix products over strided views, the one entry point every CPU kernel multiplies through.
//!
//! A view carries its sizes and strides and is checked once, when it is made, to lie within its
//! buffer; the product then checks that the three views agree and picks the kernel: a direct
//! loop for the small products the kernels run by the thousand (`small_mm`), else the `gemm`
//! crate that dfdx uses.

use std::marker::PhantomData;

use super::shared::Shared;
use super::small_mm::{mm_direct, takes_direct};
use crate::tensor::Real;

/// Panics unless a `rows × cols` matrix with strides `(row, col)`, starting `offset` into a
/// buffer of `len` elements, lies within it (a kernel's bug, never a user's input).
fn check_fits(len: usize, offset: usize, (rows, cols): (usize, usize), (row, col): (usize, usize)) {
    let span = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row + (cols - 1) * col + 1
    };
    assert!(
        offset + span <= len,
        "a {rows}×{cols} matrix with strides {:?} at {offset} spans {span} elements, past {len}",
        (row, col)
    );
}

/// A matrix a product reads: `rows × cols`, element (r, c) at `r·row + c·col` of its slice.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, E> {
    data: &'a [E],
    dims: (usize, usize),
    strides: (usize, usize),
}

impl<'a, E> Mat<'a, E> {
    /// `rows × cols` with strides `(row, col)` from the start of `data`; panics when it does
    /// not fit (a kernel's bug, never a user's input).
    pub fn strided(data: &'a [E], dims: (usize, usize), strides: (usize, usize)) -> Self {
        check_fits(data.len(), 0, dims, strides);
        Self {
            data,
            dims,
            strides,
        }
    }

    /// Rows of `cols` contiguous elements, `row` apart.
    pub fn rows(data: &'a [E], (rows, cols): (usize, usize), row: usize) -> Self {
        Self::strided(data, (rows, cols), (row, 1))
    }

    /// The same elements read as the transpose.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            dims: (self.dims.1, self.dims.0),
            strides: (self.strides.1, self.strides.0),
        }
    }
}

/// A matrix a product writes, borrowed (or, from a [`Shared`] buffer, claimed) for `'a`.
pub(super) struct MatMut<'a, E> {
    ptr: *mut E,
    dims: (usize, usize),
    strides: (usize, usize),
    _buffer: PhantomData<&'a mut [E]>,
}

impl<'a, E> MatMut<'a, E> {
    /// `rows × cols` with strides `(row, col)` from the start of `data`; panics when it does
    /// not fit.
    pub fn strided(data: &'a mut [E], dims: (usize, usize), strides: (usize, usize)) -> Self {
        check_fits(data.len(), 0, dims, strides);
        Self {
            ptr: data.as_mut_ptr(),
            dims,
            strides,
            _buffer: PhantomData,
        }
    }

    /// Rows of `cols` contiguous elements, `row` apart.
    pub fn rows(data: &'a mut [E], (rows, cols): (usize, usize), row: usize) -> Self {
        Self::strided(data, (rows, cols), (row, 1))
    }

    /// Rows of `cols` elements, `row` apart, from `offset` of a buffer tasks share; panics
    /// when it does not fit in the buffer.
    ///
    /// Safety: while the view lives, no other task reads or writes the elements it addresses,
    /// and the product that takes it reads no operand from them.
    pub unsafe fn in_shared(
        buffer: Shared<'a, E>,
        offset: usize,
        (rows, cols): (usize, usize),
        row: usize,
    ) -> Self {
        check_fits(buffer.len(), offset, (rows, cols), (row, 1));
        Self {
            // SAFETY: within the buffer (checked above); exclusive, as the caller guarantees
            ptr: unsafe { buffer.at(offset) },
            dims: (rows, cols),
            strides: (row, 1),
            _buffer: PhantomData,
        }
    }

    /// Rows of uninitialized memory, each written whole by a product with `accumulate` false
    /// (which writes every element without reading one).
    pub fn uninit(
        data: &'a mut [std::mem::MaybeUninit<E>],
        (rows, cols): (usize, usize),
        row: usize,
    ) -> Self {
        check_fits(data.len(), 0, (rows, cols), (row, 1));
        Self {
            ptr: data.as_mut_ptr() as *mut E,
            dims: (rows, cols),
            strides: (row, 1),
            _buffer: PhantomData,
        }
    }
}

/// `dst = [dst +] beta · lhs · rhs`, on the calling thread.
pub(super) fn mm<E: Real>(dst: MatMut<E>, accumulate: bool, lhs: Mat<E>, rhs: Mat<E>, beta: E) {
    mm_with(dst, accumulate, lhs, rhs, beta, gemm::Parallelism::None)
}

/// [`mm`] with a choice of parallelism (one large product: `Rayon(0)`, every thread).
pub(super) fn mm_with<E: Real>(
    dst: MatMut<E>,
    accumulate: bool,
    lhs: Mat<E>,
    rhs: Mat<E>,
    beta: E,
    parallelism: gemm::Parallelism,
) {
    let ((m, k), (k2, n)) = (lhs.dims, rhs.dims);
    assert!(
        k == k2 && dst.dims == (m, n),
        "product of {:?} and {:?} into {:?}",
        lhs.dims,
        rhs.dims,
        dst.dims
    );
    let ((dst_rs, dst_cs), (lhs_rs, lhs_cs), (rhs_rs, rhs_cs)) =
        (dst.strides, lhs.strides, rhs.strides);
    let (dst, lhs, rhs) = (dst.ptr, lhs.data.as_ptr(), rhs.data.as_ptr());
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY (below): every view lies within its buffer (checked when made); the destination
    // is borrowed mutably or claimed for this task, so it does not alias the operands.
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    unsafe { *dst.add(r * dst_rs + c * dst_cs) = E::zero() };
                }
            }
        }
        return;
    }
    let serial = matches!(parallelism, gemm::Parallelism::None);
    if takes_direct((m, n, k), dst_cs, serial) {
        return unsafe {
            mm_direct(
                (m, n, k),
                dst,
                dst_rs,
                accumulate,
                lhs,
                (lhs_rs, lhs_cs),
                rhs,
                (rhs_rs, rhs_cs),
                beta,
            )
        };
    }
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            E::one(),
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `beta · lhs · rhs` into a new buffer of rows, written without being cleared first.
pub(super) fn mm_new<E: Real>(
    lhs: Mat<E>,
    rhs: Mat<E>,
    beta: E,
    parallelism: gemm::Parallelism,
) -> Vec<E> {
    let (m, n) = (lhs.dims.0, rhs.dims.1);
    let mut out = Vec::with_capacity(m * n);
    let dst = MatMut::uninit(&mut out.spare_capacity_mut()[..m * n], (m, n), n);
    mm_with(dst, false, lhs, rhs, beta, parallelism);
    // SAFETY: a product that does not accumulate writes every element of its destination
    // (zeros when the inner dimension is empty); with no rows or columns there are none
    unsafe { out.set_len(m * n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
            }
        }
        out
    }

    #[test]
    fn products_of_transposed_views_match_a_loop_on_both_kernels() {
        // small sizes take the direct kernel, large ones the gemm crate
        for (m, k, n) in [(3, 5, 16), (40, 70, 90)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            // the same operands stored transposed, read back through `t()`
            let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let want = naive(&a, &b, (m, k, n));
            for par in [gemm::Parallelism::None, gemm::Parallelism::Rayon(0)] {
                let mut got = vec![1.0; m * n];
                let lhs = Mat::rows(&at, (k, m), m).t();
                let rhs = Mat::rows(&bt, (n, k), k).t();
                mm_with(MatMut::rows(&mut got, (m, n), n), false, lhs, rhs, 1.0, par);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-12, "{g} against {w}");
                }
                // accumulating with a scale
                let mut acc = want.clone();
                let (lhs, rhs) = (Mat::rows(&a, (m, k), k), Mat::rows(&b, (k, n), n));
                mm_with(MatMut::rows(&mut acc, (m, n), n), true, lhs, rhs, 0.5, par);
                for (g, w) in acc.iter().zip(&want) {
                    assert!((g - 1.5 * w).abs() < 1e-12, "{g} against {}", 1.5 * w);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "past 11")]
    fn a_view_past_its_buffer_is_refused() {
        let data = [0.0f32; 11];
        let _ = Mat::rows(&data, (3, 4), 4);
    }

    #[test]
    #[should_panic(expected = "product of")]
    fn operands_that_do_not_agree_are_refused() {
        let (a, b) = ([0.0f32; 6], [0.0f32; 6]);
        let mut out = [0.0f32; 4];
        let (lhs, rhs) = (Mat::rows(&a, (2, 3), 3), Mat::rows(&b, (2, 3), 3));
        mm(MatMut::rows(&mut out, (2, 2), 2), false, lhs, rhs, 1.0);
    }
}
