//! Parameters: named, stored flat, traced on demand.
//!
//! A block's constructor takes an [`Init`] scoped to its path (`init.pp("to_q").pp("0")`), so
//! parameter names fall out of the structure (`to_q.0.weight`) and match checkpoint keys. An
//! `Init` either draws fresh values from a seeded generator or reads them from a named map
//! (a checkpoint or the reference's `state_dict`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{Error, Result};
use crate::tensor::*;

/// One parameter: its dotted name, logical dims, and values stored flat (a contiguous reshape
/// keeps the tensor id, so gradients are found under the flat tensor).
#[derive(Clone, Debug)]
pub struct Param<E: Real, D: Device<E>> {
    /// Its full name (`layers.0.attn.to_q.weight`).
    pub name: String,
    /// Its shape as PyTorch stores it.
    pub dims: Vec<usize>,
    /// Its values, flat.
    pub value: T1<E, D>,
}

impl<E: Real, D: Device<E>> Param<E, D> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.value.shape().0
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values with a fresh tape of type `T` (gradients are recorded under this param's id).
    pub fn vector<T: Tape<E, D>>(&self) -> T1<E, D, T> {
        self.value.retaped::<T>()
    }
    /// A 2-D parameter as a matrix `[dims[0], dims[1]]`.
    pub fn matrix<T: Tape<E, D>>(&self) -> T2<E, D, T> {
        self.value
            .retaped::<T>()
            .reshape_like(&(self.dims[0], self.dims[1]))
    }
}

/// How a fresh parameter is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitKind {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// `U(-bound, bound)`; PyTorch's Linear uses `bound = 1/√fan_in`.
    Uniform(f64),
    /// `N(0, std²)`.
    Normal(f64),
    /// The identity matrix (dims `[n, n]`), as PyTorch's `dirac_` for 1×1 convolutions.
    Eye,
}

enum Source {
    Random(StdRng),
    Named(HashMap<String, (Vec<usize>, Vec<f64>)>),
    /// Shapes only: counts the elements a model would have and allocates none of them (its
    /// parameters come out empty), so a run's memory can be checked before it allocates.
    Count(u64),
}

/// A path-scoped parameter factory.
#[derive(Clone)]
pub struct Init<D> {
    dev: D,
    path: String,
    source: Rc<RefCell<Source>>,
}

impl<D: Clone> Init<D> {
    /// Fresh parameters from a seed.
    pub fn random(dev: &D, seed: u64) -> Self {
        Self {
            dev: dev.clone(),
            path: String::new(),
            source: Rc::new(RefCell::new(Source::Random(StdRng::seed_from_u64(seed)))),
        }
    }

    /// Parameters read by name from `(dims, values)` entries.
    pub fn from_map(dev: &D, map: HashMap<String, (Vec<usize>, Vec<f64>)>) -> Self {
        Self {
            dev: dev.clone(),
            path: String::new(),
            source: Rc::new(RefCell::new(Source::Named(map))),
        }
    }

    /// Counts parameter elements without allocating them (see [`Init::counted`]); the
    /// parameters it gives are empty and only good for counting.
    pub fn counting(dev: &D) -> Self {
        Self {
            dev: dev.clone(),
            path: String::new(),
            source: Rc::new(RefCell::new(Source::Count(0))),
        }
    }

    /// The elements counted so far by a [`Init::counting`] init (`None` for the others).
    pub fn counted(&self) -> Option<u64> {
        match &*self.source.borrow() {
            Source::Count(n) => Some(*n),
            _ => None,
        }
    }

    /// A child scope: `init.pp("attn").pp("to_q")` names parameters `attn.to_q.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let path = if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        };
        Self {
            dev: self.dev.clone(),
            path,
            source: self.source.clone(),
        }
    }

    /// The device parameters are made on.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The parameter `name` in this scope, of `dims`, drawn with `kind` or read from the map.
    pub fn param<E: Real>(&self, name: &str, dims: &[usize], kind: InitKind) -> Result<Param<E, D>>
    where
        D: Device<E>,
    {
        self.make(name, dims, Fresh::Kind(kind))
    }

    /// A parameter whose fresh values are `values` (laid out as `dims`); from a named source
    /// it is read like any other.
    pub fn param_with<E: Real>(
        &self,
        name: &str,
        dims: &[usize],
        values: Vec<f64>,
    ) -> Result<Param<E, D>>
    where
        D: Device<E>,
    {
        self.make(name, dims, Fresh::Values(values))
    }

    fn make<E: Real>(&self, name: &str, dims: &[usize], fresh: Fresh) -> Result<Param<E, D>>
    where
        D: Device<E>,
    {
        let full = self.pp(name).path;
        let len = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::config(&full, format!("dims {dims:?} overflow a count")))?;
        let values: Vec<E> = match &mut *self.source.borrow_mut() {
            Source::Count(count) => {
                *count = count.saturating_add(len as u64);
                Vec::new()
            }
            Source::Random(_) if len > isize::MAX as usize / std::mem::size_of::<E>() => {
                return Err(Error::config(
                    &full,
                    format!("{len} values cannot be allocated"),
                ))
            }
            Source::Random(rng) => match fresh {
                Fresh::Values(v) if v.len() != len => {
                    return Err(Error::shape(
                        format!("parameter `{full}`"),
                        format!("{len} values"),
                        v.len(),
                    ))
                }
                Fresh::Values(v) => v.into_iter().map(E::of).collect(),
                Fresh::Kind(kind) => match kind {
                    InitKind::Zeros => vec![E::zero(); len],
                    InitKind::Ones => vec![E::one(); len],
                    InitKind::Uniform(bound) => {
                        let u = Uniform::new_inclusive(-bound, bound);
                        (0..len).map(|_| E::of(u.sample(rng))).collect()
                    }
                    InitKind::Eye => (0..len)
                        .map(|e| {
                            if e / dims[0] == e % dims[0] {
                                E::one()
                            } else {
                                E::zero()
                            }
                        })
                        .collect(),
                    InitKind::Normal(std) => {
                        let n = Normal::new(0.0, std)
                            .map_err(|e| Error::config(&full, e.to_string()))?;
                        (0..len).map(|_| E::of(n.sample(rng))).collect()
                    }
                },
            },
            Source::Named(map) => {
                let (found_dims, values) = map.get(&full).ok_or_else(|| {
                    Error::config("parameters", format!("missing parameter `{full}`"))
                })?;
                if found_dims.as_slice() != dims {
                    return Err(Error::shape(
                        format!("parameter `{full}`"),
                        format!("{dims:?}"),
                        format!("{found_dims:?}"),
                    ));
                }
                values.iter().map(|&v| E::of(v)).collect()
            }
        };
        let stored = values.len();
        let value = self
            .dev
            .try_tensor_from_vec(values, (stored,))
            .map_err(device_err)?;
        Ok(Param {
            name: full,
            dims: dims.to_vec(),
            value,
        })
    }
}

/// Where a fresh parameter's values come from.
enum Fresh {
    Kind(InitKind),
    Values(Vec<f64>),
}

/// Blocks that own parameters list them, in a stable order, for optimizers and checkpoints.
///
/// A block declares its parameters once, with `visit_fields!` (a struct: its fields in order)
/// or `visit_variants!` (an enum: each variant's fields in order), which write both visitors
/// from the one list; a field may be a [`Param`], a block, or an `Option`, `Vec` or pair of them.
pub trait HasParams<E: Real, D: Device<E>> {
    /// Every parameter, in a fixed order (the order checkpoints and optimizers use).
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>));
    /// The same parameters, in the same order, mutably (for optimizers and loading).
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>));

    /// Every parameter, in order.
    fn params(&self) -> Vec<&Param<E, D>> {
        let mut out = Vec::new();
        self.visit_params(&mut |p| out.push(p));
        out
    }

    /// Elements across all parameters.
    fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.len()).sum()
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for Param<E, D> {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        f(self)
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        f(self)
    }
}

impl<E: Real, D: Device<E>, T: HasParams<E, D>> HasParams<E, D> for Option<T> {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        if let Some(t) = self {
            t.visit_params(f)
        }
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        if let Some(t) = self {
            t.visit_params_mut(f)
        }
    }
}

impl<E: Real, D: Device<E>, T: HasParams<E, D>> HasParams<E, D> for Vec<T> {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        for t in self {
            t.visit_params(f)
        }
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        for t in self {
            t.visit_params_mut(f)
        }
    }
}

impl<E: Real, D: Device<E>, A: HasParams<E, D>, B: HasParams<E, D>> HasParams<E, D> for (A, B) {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        self.0.visit_params(f);
        self.1.visit_params(f);
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        self.0.visit_params_mut(f);
        self.1.visit_params_mut(f);
    }
}

/// `impl HasParams for Block { visit_fields!(weight, bias); }`: both visitors, visiting the
/// fields in the order written (the order of checkpoint keys and optimizer state).
macro_rules! visit_fields {
    ($($field:ident),+ $(,)?) => {
        fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a $crate::nn::Param<E, D>)) {
            $($crate::nn::HasParams::<E, D>::visit_params(&self.$field, f);)+
        }
        fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut $crate::nn::Param<E, D>)) {
            $($crate::nn::HasParams::<E, D>::visit_params_mut(&mut self.$field, f);)+
        }
    };
}

/// `impl HasParams for Kind { visit_variants!(A(x), B { y, z }); }`: both visitors for an enum,
/// each variant visiting its fields in the order written.
macro_rules! visit_variants {
    ($($variant:ident $fields:tt),+ $(,)?) => {
        fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a $crate::nn::Param<E, D>)) {
            match self {
                $($crate::nn::visit_variants!(@pattern $variant $fields) =>
                    $crate::nn::visit_variants!(@visit visit_params f $fields),)+
            }
        }
        fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut $crate::nn::Param<E, D>)) {
            match self {
                $($crate::nn::visit_variants!(@pattern $variant $fields) =>
                    $crate::nn::visit_variants!(@visit visit_params_mut f $fields),)+
            }
        }
    };
    (@pattern $variant:ident ($($x:ident),*)) => { Self::$variant($($x),*) };
    (@pattern $variant:ident {$($x:ident),*}) => { Self::$variant { $($x),* } };
    (@visit $method:ident $f:ident ($($x:ident),*)) => {{
        $($crate::nn::HasParams::<E, D>::$method($x, $f);)*
    }};
    (@visit $method:ident $f:ident {$($x:ident),*}) => {{
        $($crate::nn::HasParams::<E, D>::$method($x, $f);)*
    }};
}

pub(crate) use {visit_fields, visit_variants};
