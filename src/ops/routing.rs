//! Coordinate-descent soft top-k (CoLT5 routing), after `colt5_attention.coor_descent` / `topk`.
//!
//! Coordinate descent (Wright 2015) with ε-scaling (Schmitzer 2016) finds soft scores that sum to
//! k per row; they are differentiable in the input scores. Routing picks the hard top-k of the
//! scores times straight-through gates, runs a block on the picked elements only, and scatters the
//! results back scaled by the gates, so the gradient reaches the router.

use dfdx::prelude::*;

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
    /// `[rows × k]`: the picked positions, best first.
    pub indices: Vec<usize>,
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

/// Differentiable top-k on the last axis of `x` (`[rows, n]`). The soft scores are computed for
/// `k · fetch_ratio` elements (CoLT5 fetches 9/8 as many for better learning).
pub fn soft_topk<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    k: usize,
    fetch_ratio: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
) -> Result<TopK<E, D, T>> {
    topk_with(x, k, fetch_ratio, mask, cfg, false)
}

/// [`soft_topk`] for rows that may have fewer than `k` selectable elements (padding, or a causal
/// row early in the sequence): such rows are filled up with unselectable elements, marked
/// invalid in [`TopK::valid`]; their soft scores are 0, so they carry no gradient.
pub fn soft_topk_padded<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    k: usize,
    fetch_ratio: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
) -> Result<TopK<E, D, T>> {
    topk_with(x, k, fetch_ratio, mask, cfg, true)
}

fn topk_with<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    k: usize,
    fetch_ratio: f64,
    mask: Option<&[bool]>,
    cfg: &CoorDescent,
    pad_short_rows: bool,
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
    let host = host::values(&scored);
    let mut indices = Vec::with_capacity(rows * k);
    let mut valid = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &host[r * n..(r + 1) * n];
        let mut order: Vec<usize> = (0..n)
            .filter(|&j| mask.map_or(true, |m| m[r * n + j]))
            .collect();
        order.sort_by(|&i, &j| {
            row[j]
                .partial_cmp(&row[i])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let selectable = order.len().min(k);
        valid.extend((0..k).map(|s| s < selectable));
        if order.len() < k && pad_short_rows {
            order.extend((0..n).filter(|&j| !mask.map_or(true, |m| m[r * n + j])));
        }
        if order.len() < k {
            return Err(Error::config(
                "top-k routing",
                format!(
                    "row {r} has {} selectable elements, fewer than k = {k}",
                    order.len()
                ),
            ));
        }
        indices.extend_from_slice(&order[..k]);
    }
    let index = dev.tensor_from_vec(indices.clone(), (rows, k));
    Ok(TopK {
        values: scored.gather(index.clone()),
        coor_descent_values: soft_branch.gather(index.clone()),
        gates: gates_branch.gather(index),
        indices,
        k,
        valid,
    })
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
    if picks.indices.len() != rows * k {
        return Err(Error::shape(
            "routing",
            format!("{} picks ({rows} rows × k {k})", rows * k),
            picks.indices.len(),
        ));
    }
    if let Some(&bad) = picks.indices.iter().find(|&&i| i >= n) {
        return Err(Error::shape(
            "routing",
            format!("picks below {n} (the routed tensor's length)"),
            bad,
        ));
    }
    let dev = x.device().clone();
    let index = dev.tensor_from_vec(picks.indices.clone(), (rows, k));
    let picked: T3<E, D, T> = x.gather(index);
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
    // scatter as a matmul with the one-hot pick matrix: out[r, :, m] = Σ_s y[r, s, m] · [pick s = m]
    let mut onehot = vec![E::zero(); rows * k * n];
    for r in 0..rows {
        for s in 0..k {
            onehot[(r * k + s) * n + picks.indices[r * k + s]] = E::one();
        }
    }
    let onehot: T3<E, D> = constant(&dev, onehot, (rows, k, n))?;
    let scattered = y
        .permute::<_, Axes3<0, 2, 1>>()
        .matmul(onehot.retaped::<T>())
        .permute::<_, Axes3<0, 2, 1>>();
    // the routing history lives on `values`' tape: merge it so the router gets its gradients
    let (scattered, tape) = scattered.split_tape();
    let (_, history) = picks.values.split_tape();
    Ok(scattered.put_tape(tape.merge(history)))
}
