//! Coordinate-descent soft top-k (CoLT5 routing), after `colt5_attention.coor_descent` / `topk`.
//!
//! Coordinate descent (Wright 2015) with ε-scaling (Schmitzer 2016) finds soft scores that sum to
//! k per row; they are differentiable in the input scores. Routing picks the hard top-k of the
//! scores times straight-through gates, runs a block on the picked elements only, and scatters the
//! results back scaled by the gates, so the gradient reaches the router.
//!
//! The CPU picks the hard top-k by sorting on the host; other devices rank the elements with
//! tensor ops and pick and scatter by products with one-hot rows ([`PickOn`]), so nothing is
//! read back. Both pick the same positions.

use std::cell::Cell;

use dfdx::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::*;

/// The coordinate-descent iteration's settings (the original's defaults: eps 0.1, no schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoorDescent {
    /// Iterations.
    pub n_iters: usize,
    /// The entropy regulariser (the last, when annealed).
    pub eps: f64,
    /// Start ε (annealed down to `eps` by `eps_decay` per iteration); `None` starts at `eps`.
    pub eps_init: Option<f64>,
    /// ε's factor per iteration when annealed.
    pub eps_decay: f64,
}

impl Default for CoorDescent {
    fn default() -> Self {
        Self {
            n_iters: 20,
            eps: 0.1,
            eps_init: None,
            eps_decay: 1.0,
        }
    }
}

impl CoorDescent {
    fn validate(&self) -> Result<()> {
        if self.n_iters == 0
            || !(self.eps > 0.0)
            || !(self.eps_decay > 0.0)
            || self.eps_init.is_some_and(|e| !(e > 0.0))
        {
            return Err(Error::config(
                "coordinate descent",
                format!("needs n_iters > 0 and positive eps, eps_init, eps_decay; got {self:?}"),
            ));
        }
        Ok(())
    }
}

/// Soft top-k scores of each row of `s` (`[rows, n]`), summing to about `k` per row.
/// `mask` (`[rows × n]`, true = may be picked) excludes elements; they score exactly 0.
pub fn coor_descent<E: Real, D: Device<E>, T: Tape<E, D>>(
    s: T2<E, D, T>,
    k: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
) -> Result<T2<E, D, T>> {
    cfg.validate()?;
    let shape = *s.shape();
    let (rows, n) = shape;
    if !(k > 0.0) {
        return Err(Error::config(
            "coordinate descent",
            format!("k must be positive, got {k}"),
        ));
    }
    let dev = s.device().clone();
    let mask_value = E::of(-E::max_value().as_f64());
    let keep: Option<Tensor<Shape2, bool, D>> = match mask {
        Some(m) if m.len() != rows * n => {
            return Err(Error::shape("coordinate descent mask", rows * n, m.len()))
        }
        // everything selectable: no fill in each iteration (the same values either way)
        Some(m) if m.iter().all(|&selectable| selectable) => None,
        Some(m) => Some(constant(&dev, indicator(m.iter().copied()), shape)?.gt(E::of(0.5))),
        None => None,
    };
    let fill = |x: T2<E, D, T>| -> T2<E, D, T> {
        match &keep {
            Some(keep) => keep.clone().choose(x, dev.ones_like(&shape) * mask_value),
            None => x,
        }
    };
    let s = fill(s);
    let logk = E::of(k.max(1e-20).ln());
    let mut eps = cfg.eps_init.unwrap_or(cfg.eps).max(cfg.eps);
    let mut a: Option<T1<E, D, T>> = None;
    let mut b: T2<E, D, T> = s.with_empty_tape().negate();
    for it in 0..cfg.n_iters {
        let sb = fill((s.with_empty_tape() + b) / E::of(eps));
        let lse = sb.logsumexp::<(usize,), Axis<1>>();
        let a_new = (lse.negate() + logk) * E::of(eps);
        // each iteration's `a` is consumed by `b`: dropping a tensor that owns history would lose
        // its gradients. Only the last `a` is kept (owning its history) for the final scores.
        if it + 1 == cfg.n_iters {
            b = (s.with_empty_tape()
                + a_new.with_empty_tape().broadcast_like::<_, Axis<1>>(&shape))
            .relu()
            .negate();
            a = Some(a_new);
        } else {
            b = (s.with_empty_tape() + a_new.broadcast_like::<_, Axis<1>>(&shape))
                .relu()
                .negate();
        }
        eps = (eps * cfg.eps_decay).max(cfg.eps);
    }
    let a = a.expect("n_iters > 0");
    let scores = ((s + a.broadcast_like::<_, Axis<1>>(&shape) + b) / E::of(eps)).exp();
    Ok(match keep {
        Some(keep) => keep.choose(scores, dev.zeros_like(&shape)),
        None => scores,
    })
}

/// What [`soft_topk`] returns, like the original's `TopkReturn`.
///
/// `values` owns the tape with the whole routing history (coordinate descent included);
/// `coor_descent_values` and `gates` are branches of it. A loss must reach `values` (or the
/// output of [`route`], which merges it) for the router's gradients to be computed.
pub struct TopK<E: Real, D: Device<E>, T> {
    /// `[rows, k]`: the picked scores times their straight-through gates (equal to the scores).
    pub values: T2<E, D, T>,
    /// The picked positions, best first.
    pub picks: Picks<E, D>,
    /// `[rows, k]`: the coordinate-descent scores of the picked positions.
    pub coor_descent_values: T2<E, D, T>,
    /// `[rows, k]`: straight-through gates (value 1, gradient of the soft scores).
    pub gates: T2<E, D, T>,
    /// Picks per row.
    pub k: usize,
    /// `[rows × k]`: whether each pick was selectable (all true unless rows were padded, see
    /// [`soft_topk_padded`]).
    pub valid: Vec<bool>,
}

/// Which positions a top-k picked, best first, and where that was worked out.
pub enum Picks<E: Real, D: Device<E>> {
    /// `[rows × k]` positions, chosen on the host (the CPU, whose memory it is).
    Indices(Vec<usize>),
    /// `[rows, k, n]`: one-hot rows, 1 at the position of each pick, chosen on the device (so
    /// nothing is read back): picking and scattering are then products with it.
    OneHot(T3<E, D>),
}

impl<E: Real, D: Device<E>> Picks<E, D> {
    /// The `[rows × k]` positions (reads a one-hot choice back from the device).
    pub fn indices(&self) -> Vec<usize> {
        match self {
            Self::Indices(i) => i.clone(),
            Self::OneHot(onehot) => {
                let n = onehot.shape().2;
                host::values(onehot)
                    .chunks(n)
                    .map(|row| row.iter().position(|&x| x == E::one()).unwrap_or(n))
                    .collect()
            }
        }
    }
}

/// Where a top-k is chosen: on the host from the scores read back, or on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickOn {
    /// Sort each row on the host (the CPU's way: its memory is the host's).
    Host,
    /// Rank the elements on the device, by comparing every pair in a row.
    Device,
}

impl PickOn {
    /// Where a device picks: the host when its memory is the host's (unless
    /// [`picking_on_device`] says otherwise on this thread).
    pub fn of<E: Real, D: Backend<E>>() -> Self {
        if D::HOST_MEMORY && !DEVICE_PICKS_ON_CPU.with(Cell::get) {
            Self::Host
        } else {
            Self::Device
        }
    }
}

thread_local! {
    static DEVICE_PICKS_ON_CPU: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the CPU picking every top-k the way other devices do, on this thread only
/// (work handed to other threads picks as usual): lets a test run, and count the host reads
/// of, a GPU's path on the CPU. Both paths pick the same positions.
pub fn picking_on_device<R>(f: impl FnOnce() -> R) -> R {
    let before = DEVICE_PICKS_ON_CPU.with(|d| d.replace(true));
    let out = f();
    DEVICE_PICKS_ON_CPU.with(|d| d.set(before));
    out
}

/// Differentiable top-k on the last axis of `x` (`[rows, n]`). The soft scores are computed for
/// `k · fetch_ratio` elements (CoLT5 fetches 9/8 as many for better learning).
pub fn soft_topk<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    k: usize,
    fetch_ratio: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
) -> Result<TopK<E, D, T>> {
    topk_with(x, k, fetch_ratio, mask, cfg, false, PickOn::of::<E, D>())
}

/// [`soft_topk`] for rows that may have fewer than `k` selectable elements (padding, or a causal
/// row early in the sequence): such rows are filled up with unselectable elements, marked
/// invalid in [`TopK::valid`]; their soft scores are 0, so they carry no gradient.
pub fn soft_topk_padded<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    k: usize,
    fetch_ratio: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
) -> Result<TopK<E, D, T>> {
    topk_with(x, k, fetch_ratio, mask, cfg, true, PickOn::of::<E, D>())
}

/// [`soft_topk`] (or, with `pad_short_rows`, [`soft_topk_padded`]) picking where `on` says.
/// Both places pick the same positions: the best scores first, ties to the lower position.
pub fn topk_with<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    k: usize,
    fetch_ratio: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
    pad_short_rows: bool,
    on: PickOn,
) -> Result<TopK<E, D, T>> {
    let shape = *x.shape();
    let (rows, n) = shape;
    if k == 0 || k > n || !(fetch_ratio >= 1.0) {
        return Err(Error::config(
            "top-k routing",
            format!("needs 0 < k ≤ {n} and fetch ratio ≥ 1, got k = {k}, ratio = {fetch_ratio}"),
        ));
    }
    let dev = x.device().clone();
    let soft = coor_descent(
        x.with_empty_tape(),
        (k as f64 * fetch_ratio).min(n as f64),
        mask,
        cfg,
    )?;
    let soft_branch = soft.with_empty_tape();
    // straight-through: value 1, gradient of the soft scores (the detached copy gets its own id)
    let detached: T2<E, D> = (soft.with_empty_tape() * E::one()).split_tape().0;
    let gates_full = soft + (detached.negate() + E::one());
    let gates_branch = gates_full.with_empty_tape();
    let scored = x * gates_full;
    // selectable elements per row: known on the host, whichever side picks
    let mut valid = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let selectable = mask.map_or(n, |m| m[r * n..(r + 1) * n].iter().filter(|&&v| v).count());
        if selectable < k && !pad_short_rows {
            return Err(Error::config(
                "top-k routing",
                format!("row {r} has {selectable} selectable elements, fewer than k = {k}"),
            ));
        }
        valid.extend((0..k).map(|s| s < selectable));
    }
    let picks = match on {
        PickOn::Host => Picks::Indices(pick_on_host(&host::values(&scored), n, k, mask)),
        PickOn::Device => Picks::OneHot(pick_on_device(scored.retaped::<NoneTape>(), k, mask)?),
    };
    let gather = |t: T2<E, D, T>| -> T2<E, D, T> {
        match &picks {
            Picks::Indices(indices) => t.gather(dev.tensor_from_vec(indices.clone(), (rows, k))),
            Picks::OneHot(onehot) => onehot
                .clone()
                .retaped::<T>()
                .matmul(t.reshape_like(&(rows, n, 1)))
                .reshape_like(&(rows, k)),
        }
    };
    Ok(TopK {
        values: gather(scored),
        coor_descent_values: gather(soft_branch),
        gates: gather(gates_branch),
        picks,
        k,
        valid,
    })
}

/// Each row's k best positions of `scores` (`[rows × n]`), best first, ties to the lower
/// position; the selectable ones (`mask`) first, then, filling short rows, the others in order.
fn pick_on_host<E: Real>(scores: &[E], n: usize, k: usize, mask: Option<&[bool]>) -> Vec<usize> {
    let rows = scores.len() / n;
    let ok = |r: usize, j: usize| mask.map_or(true, |m| m[r * n + j]);
    let mut indices = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &scores[r * n..(r + 1) * n];
        let mut order: Vec<usize> = (0..n).filter(|&j| ok(r, j)).collect();
        // stable: equal scores keep their order
        order.sort_by(|&i, &j| {
            row[j]
                .partial_cmp(&row[i])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order.extend((0..n).filter(|&j| !ok(r, j)));
        indices.extend_from_slice(&order[..k]);
    }
    indices
}

/// Elements compared per pass of [`pick_on_device`] (`[rows, chunk, n]`): 64 MB of f32.
const RANK_CHUNK_ELEMENTS: usize = 1 << 24;

/// [`pick_on_host`]'s choice made on the device, as one-hot rows `[rows, k, n]`. Position j's
/// rank is the number of positions ahead of it: a selectable i with a larger score, or an equal
/// one and i < j; for an unselectable j, every selectable position and the unselectable ones
/// before it. The j whose rank is s is the s-th pick.
fn pick_on_device<E: Real, D: Device<E>>(
    scores: T2<E, D>,
    k: usize,
    mask: Option<&[bool]>,
) -> Result<T3<E, D>> {
    let (rows, n) = *scores.shape();
    let dev = scores.device().clone();
    let selectable: T2<E, D> = match mask {
        Some(m) => constant(&dev, indicator(m.iter().copied()), (rows, n))?,
        None => dev.ones_like(&(rows, n)),
    };
    let chunk = (RANK_CHUNK_ELEMENTS / (rows * n).max(1)).clamp(1, n);
    let mut ranks: Option<T2<E, D>> = None;
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let shape = (rows, c, n);
        // [r, j, i]: candidate i against position j (j in this chunk)
        let of_j = |t: &T2<E, D>| -> T3<E, D> {
            t.clone()
                .slice((.., start..start + c))
                .realize::<(usize, usize)>()
                .broadcast_like::<_, Axis<2>>(&shape)
        };
        let of_i = |t: &T2<E, D>| -> T3<E, D> { t.clone().broadcast_like::<_, Axis<1>>(&shape) };
        let (s_j, s_i) = (of_j(&scores), of_i(&scores));
        let (ok_j, ok_i) = (of_j(&selectable), of_i(&selectable));
        let before: T3<E, D> = constant(
            &dev,
            indicator((0..rows * c * n).map(|e| e % n < start + e / n % c)),
            shape,
        )?;
        let ones = dev.ones_like(&shape);
        let zeros = dev.zeros_like(&shape);
        let larger = s_i.gt(&s_j).choose(ones.clone(), zeros.clone());
        let equal = s_i.eq(&s_j).choose(ones.clone(), zeros);
        let ahead_of_selectable = ok_i.clone() * (larger + equal * before.clone());
        let ahead_of_other = ok_i.clone() + (ones - ok_i) * before;
        let ahead =
            ok_j.clone() * ahead_of_selectable + (ok_j.negate() + E::one()) * ahead_of_other;
        let rank = ahead.sum::<(usize, usize), Axis<2>>();
        ranks = Some(match ranks {
            None => rank,
            Some(r) => (r, rank).concat_along(Axis::<1>),
        });
    }
    let ranks = ranks.expect("n > 0");
    let shape = (rows, k, n);
    let place: T3<E, D> = constant(
        &dev,
        (0..rows * k * n)
            .map(|e| E::of((e / n % k) as f64))
            .collect(),
        shape,
    )?;
    let at = ranks.broadcast_like::<_, Axis<1>>(&shape).eq(&place);
    Ok(at.choose(dev.ones_like(&shape), dev.zeros_like(&shape)))
}

/// Gathers the picked rows of `x` (`[rows, n, c]`, picks from a [`TopK`] over `[rows, n]`), runs
/// `block` on them (`[rows, k, c] -> [rows, k, c']`), and scatters the results back scaled by the
/// gates; unpicked positions get zeros.
pub fn route<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T3<E, D, T>,
    picks: TopK<E, D, T>,
    block: impl FnOnce(T3<E, D, T>) -> Result<T3<E, D, T>>,
) -> Result<T3<E, D, T>> {
    let (rows, n, _) = *x.shape();
    let k = picks.k;
    let dev = x.device().clone();
    // Scattering back: picks on the host become a gather from the block's outputs with one
    // zero row appended (position m reads the output of the pick that chose it, or the zero
    // row); a one-hot choice made on the device stays a product with it (nothing read back).
    // Each writes every output exactly once: no sum, so both give the same values.
    let scatter = match &picks.picks {
        Picks::Indices(indices) => Scatter::Gather(scatter_sources(indices, rows, n, k)?),
        Picks::OneHot(onehot) => {
            if *onehot.shape() != (rows, k, n) {
                return Err(Error::shape(
                    "routing",
                    format!("one-hot picks [{rows}, {k}, {n}]"),
                    format!("{:?}", onehot.shape()),
                ));
            }
            Scatter::Product(onehot.clone())
        }
    };
    let picked: T3<E, D, T> = match &picks.picks {
        Picks::Indices(indices) => x.gather(dev.tensor_from_vec(indices.clone(), (rows, k))),
        Picks::OneHot(onehot) => onehot.clone().retaped::<T>().matmul(x),
    };
    let y = block(picked)?;
    let (yr, yk, c2) = *y.shape();
    if (yr, yk) != (rows, k) {
        return Err(Error::shape(
            "routed block output",
            format!("[{rows}, {k}, _]"),
            format!("{:?}", y.shape()),
        ));
    }
    let y = y * picks.gates.broadcast_like::<_, Axis<2>>(&(rows, k, c2));
    let scattered: T3<E, D, T> = match scatter {
        Scatter::Gather(sources) => {
            let zero_row: T3<E, D> = dev.zeros_like(&(rows, 1, c2));
            (y, zero_row)
                .concat_along(Axis::<1>)
                .gather(dev.tensor_from_vec(sources, (rows, n)))
        }
        // out[r, :, m] = Σ_s y[r, s, m] · [pick s = m]
        Scatter::Product(onehot) => y
            .permute::<_, Axes3<0, 2, 1>>()
            .matmul(onehot.retaped::<T>())
            .permute::<_, Axes3<0, 2, 1>>(),
    };
    // the routing history lives on `values`' tape: merge it so the router gets its gradients
    let (scattered, tape) = scattered.split_tape();
    let (_, history) = picks.values.split_tape();
    Ok(scattered.put_tape(tape.merge(history)))
}

/// How [`route`] writes the block's outputs back to their positions.
enum Scatter<E: Real, D: Device<E>> {
    /// `[rows × n]`: the pick (0..k) whose output each position takes, or k (a zero row).
    Gather(Vec<usize>),
    /// `[rows, k, n]` one-hot picks.
    Product(T3<E, D>),
}

/// For picks `[rows × k]` of positions below `n`: each position's pick, or `k` where none
/// chose it. Refuses a position out of range or picked twice in a row (its outputs would sum).
fn scatter_sources(indices: &[usize], rows: usize, n: usize, k: usize) -> Result<Vec<usize>> {
    if indices.len() != rows * k {
        return Err(Error::shape(
            "routing",
            format!("{} picks ({rows} rows × k {k})", rows * k),
            indices.len(),
        ));
    }
    let mut sources = vec![k; rows * n];
    for (p, &m) in indices.iter().enumerate() {
        let (r, s) = (p / k, p % k);
        if m >= n {
            return Err(Error::shape(
                "routing",
                format!("picks below {n} (the routed tensor's length)"),
                m,
            ));
        }
        let source = &mut sources[r * n + m];
        if *source != k {
            return Err(Error::config(
                "routing",
                format!(
                    "row {r} picks position {m} twice (picks {} and {s})",
                    *source
                ),
            ));
        }
        *source = s;
    }
    Ok(sources)
}
