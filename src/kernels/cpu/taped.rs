//! The tape bookkeeping every fused op shares, in one place: each input's tape split off and
//! merged into one, and the output built from host data with a backward that receives the
//! output's gradient. What differs between ops (the forward and the backward arithmetic) stays
//! in the op.

use dfdx::prelude::*;

use super::fused::CpuBuffer;
use crate::error::Result;
use crate::tensor::*;

/// The inputs of one fused op, their tapes merged as they are taken.
pub(super) struct Taped<E: Real, T> {
    tape: T,
    _element: std::marker::PhantomData<E>,
}

impl<E: Real, T: Tape<E, Cpu>> Taped<E, T>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    pub fn new() -> Self {
        Self {
            tape: T::default(),
            _element: std::marker::PhantomData,
        }
    }

    /// `t` without its tape (kept here), made contiguous: gradient buffers follow the tensor's
    /// strides, so logical order and buffer order then agree (no copy when it already is).
    pub fn input<S: Shape>(&mut self, t: Tensor<S, E, Cpu, T>) -> Tensor<S, E, Cpu> {
        let (t, tape) = t.contiguous().split_tape();
        self.tape = std::mem::take(&mut self.tape).merge(tape);
        t
    }

    /// [`Taped::input`] for an input that may be absent.
    pub fn optional<S: Shape>(
        &mut self,
        t: Option<Tensor<S, E, Cpu, T>>,
    ) -> Option<Tensor<S, E, Cpu>> {
        t.map(|t| self.input(t))
    }

    /// The output `data` of `shape`, carrying every input's tape. When the tape records,
    /// `backward(g, grads)` runs on the way back with `g`, the output's gradient; it adds into
    /// the inputs' gradients in `grads`.
    pub fn output<S: Shape>(
        self,
        dev: &Cpu,
        data: Vec<E>,
        shape: S,
        backward: impl FnOnce(&[E], &mut Gradients<E, Cpu>) -> Result<(), CpuError> + 'static,
    ) -> Result<Tensor<S, E, Cpu, T>> {
        let out = dev.try_tensor_from_vec(data, shape).map_err(device_err)?;
        let mut tape = self.tape;
        if T::OWNS_TAPE {
            let out_g = out.ghost();
            tape.add_backward_op(move |grads| {
                // The output's gradient is moved out of `grads` while the inputs' gradients
                // are borrowed from it, and put back after: dfdx lends one gradient mutably
                // and another immutably only inside the crate, and a copy cost a pass over
                // every fused op's output (3 % of the small model's step).
                let g = std::mem::take(&mut **grads.get_or_alloc_mut(&out_g)?);
                let done = backward(&g, grads);
                **grads.get_or_alloc_mut(&out_g)? = g;
                done
            });
        }
        Ok(out.put_tape(tape))
    }
}
