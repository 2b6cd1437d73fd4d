//! The specifications both sides of the backend share: what a kernel is asked to compute
//! (the edge pattern, how scores become weights, which RMSNorm, the tensors of a feedforward
//! block and of an edge self-attention's projections, who sees whom, a softmax along an axis), and the shape checks
//! the fused and the composite forms run alike. A leaf: it imports only the element type and
//! the errors.

pub mod axis;
pub mod pointwise;
pub mod visibility;

use dfdx::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::*;

pub use visibility::Visibility;

/// A mask value far below any score, so exp underflows to exactly 0 in f32 and f64.
pub const MASKED: f64 = -1e30;

// ---- edge patterns ---------------------------------------------------------------------

/// Which edges an edge attends to: its row, its column, every edge, or the diagonal among
/// itself (see `ops::patterns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgePattern {
    /// Every edge attends to every edge (n⁴).
    All,
    /// Edge (i, j) attends to the edges (i, k) of its row.
    Row,
    /// Edge (i, j) attends to the edges (k, j) of its column.
    Column,
    /// The diagonal edges (i, i) attend to each other.
    Diagonal,
}

/// `(problems, queries, keys)` of a pattern on a batch of `b` graphs with `n` nodes.
pub fn pattern_dims(pattern: EdgePattern, b: usize, n: usize) -> Shape3 {
    match pattern {
        EdgePattern::All => (b, n * n, n * n),
        EdgePattern::Row | EdgePattern::Column => (b * n, n, n),
        EdgePattern::Diagonal => (b, n, n),
    }
}

/// The projections of an edge self-attention, PyTorch layout `[out, in]`: queries and keys
/// `[h·d, c]`, values `[h·e, c]`.
pub struct EdgeProjections<E: Real, D: Device<E>, T> {
    /// Queries `[h·d, c]`.
    pub to_q: T2<E, D, T>,
    /// Keys `[h·d, c]`.
    pub to_k: T2<E, D, T>,
    /// Values `[h·e, c]`.
    pub to_v: T2<E, D, T>,
}

impl<E: Real, D: Device<E>, T: Tape<E, D>> EdgeProjections<E, D, T> {
    /// Queries, keys and values of the edges `x [b, n, n, c]`, each `[b, n, n, out]`, from
    /// dfdx matmuls; queries and keys branch off, the input's history goes with the values.
    pub fn project(self, x: T4<E, D, T>) -> [T4<E, D, T>; 3] {
        let (b, n, _, c) = *x.shape();
        let project = |x: T4<E, D, T>, w: T2<E, D, T>| {
            let out = w.shape().0;
            x.reshape_like(&(b * n * n, c))
                .matmul(w.permute::<_, Axes2<1, 0>>())
                .reshape_like(&(b, n, n, out))
        };
        let q = project(x.with_empty_tape(), self.to_q);
        let k = project(x.with_empty_tape(), self.to_k);
        [q, k, project(x, self.to_v)]
    }
}

// ---- attention weights -----------------------------------------------------------------

/// How scores become weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalizer {
    /// `softmax(s)` over the visible keys.
    Softmax,
    /// Second-order Taylor kernel `1 + s + s²/2`, normalized by `max(Σ, eps)`.
    Taylor {
        /// The least the normaliser may be.
        eps: f64,
    },
}

/// Everything about a weights call that is not a tensor.
#[derive(Clone, Debug)]
pub struct WeightsSpec {
    /// Multiplies the scores before the normaliser.
    pub scale: f64,
    /// Softmax or Taylor.
    pub normalizer: Normalizer,
    /// Which keys each query sees (padding, causality).
    pub visibility: Visibility,
}

/// Checks attention keys `[P, H, nk, d]` and values `[P, H, nk, e]` against queries
/// `[P, H, nq, d]`.
pub fn check_attention_shapes(q: Shape4, k: Shape4, v: Shape4) -> Result<()> {
    let (p, h, _, d) = q;
    let (kp, kh, nk, kd) = k;
    let (vp, vh, vn, _) = v;
    if (kp, kh, kd) != (p, h, d) || (vp, vh, vn) != (p, h, nk) {
        return Err(Error::shape(
            "attention keys and values",
            format!("[{p}, {h}, nk, {d}] and [{p}, {h}, nk, e]"),
            format!("{k:?} and {v:?}"),
        ));
    }
    Ok(())
}

/// Checks the inputs of a path attention (`ops::path`): `q`, `k` `[b, n, n, h·d]`, `v1`, `v2`
/// `[b, n, n, h·e]`, channels divisible by `heads`, and a visibility of `b` problems with n²
/// queries (the edges) and n keys (the middle nodes).
pub fn check_path_shapes(
    q: Shape4,
    k: Shape4,
    v1: Shape4,
    v2: Shape4,
    heads: usize,
    vis: &Visibility,
) -> Result<()> {
    let (b, n, n2, hd) = q;
    let he = v1.3;
    for (name, got, want) in [
        ("path attention queries", q, (b, n, n, hd)),
        ("path attention keys", k, (b, n, n, hd)),
        ("path attention values (first edge)", v1, (b, n, n, he)),
        ("path attention values (second edge)", v2, (b, n, n, he)),
    ] {
        if got != want || n2 != n {
            return Err(Error::shape(name, format!("{want:?}"), format!("{got:?}")));
        }
    }
    if heads == 0 || hd % heads != 0 || he % heads != 0 {
        return Err(Error::shape(
            "path attention heads",
            format!("{heads} heads dividing {hd} and {he} channels"),
            format!("{heads} heads"),
        ));
    }
    if (vis.batch, vis.queries, vis.keys) != (b, n * n, n) {
        return Err(Error::shape(
            "path attention visibility",
            format!("batch {b}, {} queries, {n} keys", n * n),
            format!(
                "batch {}, {} queries, {} keys",
                vis.batch, vis.queries, vis.keys
            ),
        ));
    }
    Ok(())
}

/// Checks the shapes of a weights call: q `[B,H,Nq,D]`, k `[B,H,Nk,D]`, bias `[B,H,Nq,Nk]`,
/// talking `[H,H]`, and the visibility `[B,Nq,Nk]`. Returns `(B, H, Nq, Nk)`.
pub fn check_weights_shapes(
    q: Shape4,
    k: Shape4,
    bias: Option<Shape4>,
    talking: Option<Shape2>,
    vis: &Visibility,
) -> Result<Shape4> {
    let (b, h, nq, d) = q;
    let (kb, kh, nk, kd) = k;
    if (kb, kh, kd) != (b, h, d) {
        return Err(Error::shape(
            "attention keys",
            format!("[{b}, {h}, _, {d}] to match queries"),
            format!("[{kb}, {kh}, {nk}, {kd}]"),
        ));
    }
    if let Some(bs) = bias {
        if bs != (b, h, nq, nk) {
            return Err(Error::shape(
                "attention bias",
                format!("{:?}", (b, h, nq, nk)),
                format!("{bs:?}"),
            ));
        }
    }
    if let Some(ts) = talking {
        if ts != (h, h) {
            return Err(Error::shape(
                "talking-heads matrix",
                format!("{:?}", (h, h)),
                format!("{ts:?}"),
            ));
        }
    }
    if (vis.batch, vis.queries, vis.keys) != (b, nq, nk) {
        return Err(Error::shape(
            "attention visibility",
            format!("batch {b}, {nq} queries, {nk} keys"),
            format!(
                "batch {}, {} queries, {} keys",
                vis.batch, vis.queries, vis.keys
            ),
        ));
    }
    Ok((b, h, nq, nk))
}

// ---- norms and feedforward ---------------------------------------------------------------

/// Which RMSNorm: `x · rsqrt(mean(x²) + eps) · γ`, or the unit-norm form `normalize(x) · √c · γ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RmsKind {
    /// `x · rsqrt(mean(x²) + eps) · γ`.
    Scaled {
        /// Added to the mean square.
        eps: f64,
    },
    /// `normalize(x) · √c · γ`.
    Unit,
}

/// The tensors of a feedforward block `RMSNorm → Linear(c, H) → GELU → Linear(H, c)` (no
/// biases), PyTorch layouts: `w_in [H, c]`, `w_out [c, H]`.
pub struct FeedForwardParams<E: Real, D: Device<E>, T> {
    /// The norm's gain `[c]`.
    pub gamma: T1<E, D, T>,
    /// `[H, c]`.
    pub w_in: T2<E, D, T>,
    /// `[c, H]`.
    pub w_out: T2<E, D, T>,
    /// The prenorm's form.
    pub kind: RmsKind,
}

// ---- shape checks both forms run -----------------------------------------------------------

/// Checks the cross-entropy's wanted classes: one per row of `[rows, classes]` logits, each
/// one of the classes, and at least one row.
pub fn check_classes((rows, classes): (usize, usize), wanted: &[usize]) -> Result<()> {
    if wanted.len() != rows {
        return Err(Error::shape("wanted classes", rows, wanted.len()));
    }
    if rows == 0 {
        return Err(Error::config("cross-entropy", "no row has a target"));
    }
    if let Some(&bad) = wanted.iter().find(|&&c| c >= classes) {
        return Err(Error::config(
            "targets",
            format!("class {bad} is outside the {classes} logits"),
        ));
    }
    Ok(())
}

/// Sources and targets of an outer sum must have one shape `[b, n, c]`.
pub fn check_outer_sum(
    sources: (usize, usize, usize),
    targets: (usize, usize, usize),
) -> Result<()> {
    if targets != sources {
        let (b, n, c) = sources;
        return Err(Error::shape(
            "outer sum",
            format!("targets [{b}, {n}, {c}] like the sources"),
            format!("{targets:?}"),
        ));
    }
    Ok(())
}

/// How many copies of `y`'s shape make up `x` (an add that repeats `y` along `x`'s leading
/// axes), or the error naming both shapes.
pub fn repeats<S: Shape, R: Shape>(x: &S, y: &R) -> Result<usize> {
    let (len, per) = (x.num_elements(), y.num_elements());
    if per == 0 || len % per != 0 {
        return Err(Error::shape(
            "add",
            format!(
                "a tensor that repeats along the leading axes of {:?}",
                x.concrete()
            ),
            format!("{:?}", y.concrete()),
        ));
    }
    Ok(len / per)
}

// ---- gathers ---------------------------------------------------------------------------

/// A gather's index table, built on the host: output element `i` reads source element
/// `index[i]` (the interpreter's layout moves: transposes, broadcasts, lifts). Whether no two
/// outputs read one source element is known once, so a backward pass can write each source
/// gradient from one place, in parallel.
#[derive(Debug)]
pub struct GatherTable {
    index: Vec<usize>,
    source_len: usize,
    injective: bool,
    strides: Option<Strides>,
}

/// A gather table as strides: output element e, written in the mixed radix of `dims`
/// (outermost first), reads `base + Σ digit_d(e) · strides[d]`. The interpreter's layout moves
/// are of this form (a slot missing from the source has stride 0), and reading runs of the
/// innermost digit (contiguous, repeated or strided) replaces reading an 8-byte index per
/// element: for a rule's n² terms read at n³ positions the index table is most of the memory
/// traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strides {
    base: usize,
    dims: Vec<usize>,
    strides: Vec<usize>,
}

impl Strides {
    /// The most digits a table may have and still be read by strides: `runs` keeps its
    /// position on the stack, as it is called once per block of a kernel's loop. Layout moves
    /// have one digit per axis of the rule's terms, after merging.
    const MAX_DIGITS: usize = 12;

    /// The strides `index` follows, if it follows any: each digit is the longest run of
    /// equal steps at the period of the digits inside it (so digits that run on contiguously
    /// merge into one), then the whole table is checked against them.
    fn of(index: &[usize]) -> Option<Self> {
        let len = index.len();
        let base = *index.first()?;
        let (mut dims, mut strides) = (Vec::new(), Vec::new());
        let mut period = 1;
        while period < len {
            let count = len / period;
            let stride = index[period].checked_sub(base)?;
            let mut run = 2;
            while run < count && index[run * period] == base + run * stride {
                run += 1;
            }
            if count % run != 0 {
                return None;
            }
            dims.push(run);
            strides.push(stride);
            period *= run;
        }
        if dims.len() > Self::MAX_DIGITS {
            return None;
        }
        dims.reverse();
        strides.reverse();
        let found = Self {
            base,
            dims,
            strides,
        };
        let mut same = true;
        found.runs(0, len, |at, src, count, stride| {
            same &= (0..count).all(|r| index[at + r] == src + r * stride);
        });
        same.then_some(found)
    }

    /// The source element the first output element reads.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The output's digits, outermost first (their extents), and the source stride of each.
    pub fn digits(&self) -> (&[usize], &[usize]) {
        (&self.dims, &self.strides)
    }

    /// Calls `f(at, src, count, stride)` for each run of the innermost digit within output
    /// elements `start..start + len`: elements `at..at + count` (counted from `start`) read
    /// `src, src + stride, …`.
    pub fn runs(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let Some((&inner, &step)) = self.dims.last().zip(self.strides.last()) else {
            // a table of one element
            if len > 0 {
                f(0, self.base, len, 0);
            }
            return;
        };
        let last = self.dims.len() - 1;
        let mut pos = [0; Self::MAX_DIGITS];
        let mut rest = start;
        let mut src = self.base;
        for d in (0..self.dims.len()).rev() {
            pos[d] = rest % self.dims[d];
            rest /= self.dims[d];
            src += pos[d] * self.strides[d];
        }
        let mut at = 0;
        while at < len {
            let count = (inner - pos[last]).min(len - at);
            f(at, src, count, step);
            at += count;
            pos[last] += count;
            src += count * step;
            // carry into the outer digits
            let mut d = last;
            while pos[d] == self.dims[d] && d > 0 {
                src -= self.dims[d] * self.strides[d];
                pos[d] = 0;
                d -= 1;
                pos[d] += 1;
                src += self.strides[d];
            }
        }
    }
}

impl GatherTable {
    /// The table `index` into a source of `source_len` elements; refused if an index is out
    /// of range.
    pub fn new(index: Vec<usize>, source_len: usize) -> Result<Self> {
        let mut seen = vec![false; source_len];
        let mut injective = true;
        for (at, &i) in index.iter().enumerate() {
            let Some(s) = seen.get_mut(i) else {
                return Err(Error::shape(
                    "gather table",
                    format!("indices below {source_len}"),
                    format!("{i} at {at}"),
                ));
            };
            injective &= !*s;
            *s = true;
        }
        let strides = Strides::of(&index);
        Ok(Self {
            index,
            source_len,
            injective,
            strides,
        })
    }

    /// The table as strides, when it is of that form.
    pub fn strides(&self) -> Option<&Strides> {
        self.strides.as_ref()
    }

    /// For each output element, the source element it reads.
    pub fn index(&self) -> &[usize] {
        &self.index
    }

    /// The number of source elements.
    pub fn source_len(&self) -> usize {
        self.source_len
    }

    /// Whether every source element is read at most once.
    pub fn injective(&self) -> bool {
        self.injective
    }
}
