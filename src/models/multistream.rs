//! `MultiStreamTransformer` (quartic-transformer 0.0.18, `multi_stream_transformer.py`): the
//! sequence runs as `s` parallel streams (shared embeddings plus a per-stream embedding, or
//! separate embeddings per stream) whose attention heads talk across streams, before the
//! softmax (pre) and after it (post), linearly (a 1×1 conv over stream·heads) or through a small
//! residual feedforward. The streams are summed before the logits. An auxiliary loss pushes the
//! heads of different streams to attend differently (the negative entropy of their mean).
//!
//! Parameter names are the original's. Its bugs are fixed: separate position embeddings are
//! indexed by position (the original indexes them with token ids), and heads talk across all
//! `num_streams` streams (the original hard-codes two).

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::rows::{map_rows3, map_rows4};
use crate::nn::{
    visit_fields, visit_variants, FeedForward, HasParams, Init, InitKind, Linear, Param, RmsKind,
    RmsNorm,
};
use crate::ops::activations::gelu_exact;
use crate::ops::weights::{mix_heads, Normalizer, WeightsSpec};
use crate::spec::visibility::Visibility;
use crate::tensor::*;

fn d2() -> usize {
    2
}
fn d64() -> usize {
    64
}
fn d8() -> usize {
    8
}
fn d_len() -> usize {
    2048
}
fn d_mult() -> f64 {
    4.0
}
fn d_true() -> bool {
    true
}

/// The original's `MultiStreamTransformer` constructor arguments, plus our fixes as options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiStreamConfig {
    /// Vocabulary size.
    pub num_tokens: usize,
    /// Model width.
    pub dim: usize,
    /// Layers.
    pub depth: usize,
    /// Parallel streams the sequence runs as.
    #[serde(default = "d2")]
    pub num_streams: usize,
    /// Channels per attention head.
    #[serde(default = "d64")]
    pub dim_head: usize,
    /// Attention heads per stream.
    #[serde(default = "d8")]
    pub heads: usize,
    /// Longest sequence (position embeddings).
    #[serde(default = "d_len")]
    pub max_seq_len: usize,
    /// Feedforward hidden width as a multiple of `dim`.
    #[serde(default = "d_mult")]
    pub ff_mult: f64,
    /// Heads talk within their own stream only.
    #[serde(default)]
    pub ablate_cross_stream_talking_heads: bool,
    /// Heads talk across streams before the softmax.
    #[serde(default = "d_true")]
    pub pre_talking_heads: bool,
    /// Heads talk across streams after the softmax.
    #[serde(default = "d_true")]
    pub post_talking_heads: bool,
    /// Each stream has its own token and position embeddings (else shared ones plus a stream embedding).
    #[serde(default = "d_true")]
    pub separate_stream_emb: bool,
    /// Talking heads through a small residual feedforward instead of a linear map.
    #[serde(default)]
    pub non_linear_talking_heads: bool,
    /// Causal attention (the original's class has no such option; its attention does).
    #[serde(default)]
    pub causal: bool,
    /// The original's attention scale `dim_head ** 0.5` (a bug) instead of `dim_head ** -0.5`.
    #[serde(default)]
    pub reference_scale: bool,
    /// Compute the stream attention-diversity loss.
    #[serde(default = "d_true")]
    pub diversity_loss: bool,
    /// The original's diversity loss: its `log` helper only clamps (it never takes the log), so
    /// its "negative entropy" is the sum of squared probabilities Σ p². The default is the
    /// negative entropy Σ p·log p the code means.
    #[serde(default)]
    pub reference_diversity: bool,
}

/// Talking heads: a 1×1 conv over heads, or the original's `TalkingHeadsFeedForward`
/// (residual: norm over heads → conv h→2h → GELU → conv 2h→h).
pub enum TalkingHeads<E: Real, D: Device<E>> {
    /// A 1×1 conv over heads, starting from the identity.
    Linear(Param<E, D>),
    /// The original's `TalkingHeadsFeedForward`.
    NonLinear {
        /// The norm over heads.
        norm: RmsNorm<E, D>,
        /// Heads to twice as many.
        up: Linear<E, D>,
        /// Back to the heads.
        down: Linear<E, D>,
    },
}

impl<E: Real, D: Device<E>> TalkingHeads<E, D> {
    fn new(init: &Init<D>, heads: usize, non_linear: bool) -> Result<Self> {
        if non_linear {
            let f = init.pp("fn");
            Ok(Self::NonLinear {
                norm: RmsNorm::new(&f.pp("0"), heads, RmsKind::Scaled { eps: 1e-5 }, "scale")?,
                up: Linear::new(&f.pp("1"), heads, 2 * heads, false)?,
                down: Linear::new(&f.pp("4"), 2 * heads, heads, false)?,
            })
        } else {
            // the original starts from the identity (dirac init)
            Ok(Self::Linear(init.param(
                "weight",
                &[heads, heads],
                InitKind::Eye,
            )?))
        }
    }

    fn is_linear(&self) -> bool {
        matches!(self, Self::Linear(_))
    }

    /// Mixes `[p, h, i, j]` across heads.
    fn apply<T: Tape<E, D>>(&self, x: T4<E, D, T>) -> Result<T4<E, D, T>>
    where
        D: Backend<E>,
    {
        match self {
            Self::Linear(w) => Ok(mix_heads(x, w.matrix::<T>())),
            Self::NonLinear { norm, up, down } => {
                let channels_last = x.with_empty_tape().permute::<_, Axes4<0, 2, 3, 1>>();
                let h = map_rows4(channels_last, |t| {
                    let t = norm.forward(t)?;
                    down.forward(gelu_exact(up.forward(t)?)?)
                })?;
                Ok(x + h.permute::<_, Axes4<0, 3, 1, 2>>())
            }
        }
    }
}

/// One layer's attention: prenorm, queries/keys/values, per-head gates and talking heads.
pub struct StreamAttention<E: Real, D: Device<E>> {
    /// The prenorm.
    pub rmsnorm: RmsNorm<E, D>,
    /// Queries, keys and values for every stream and head.
    pub to_qkv: Linear<E, D>,
    /// Per-head output gates.
    pub to_gates: Linear<E, D>,
    /// The output projection.
    pub to_out: Linear<E, D>,
    /// Talking heads before the softmax, if on.
    pub pre: Option<TalkingHeads<E, D>>,
    /// Talking heads after the softmax, if on.
    pub post: Option<TalkingHeads<E, D>>,
}

/// Token and position embeddings for each stream.
pub enum StreamEmbedding<E: Real, D: Device<E>> {
    /// One token and position embedding for all streams, plus a per-stream embedding.
    Shared {
        /// `[num_tokens, dim]`.
        token: Param<E, D>,
        /// `[max_seq_len, dim]`.
        pos: Param<E, D>,
        /// `[num_streams, dim]`.
        stream: Param<E, D>,
    },
    /// Each stream's own token and position embeddings.
    Separate {
        /// `[num_streams, num_tokens, dim]`.
        token: Param<E, D>,
        /// `[num_streams, max_seq_len, dim]`.
        pos: Param<E, D>,
    },
}

/// The original's multi-stream transformer, with its parameter names.
pub struct MultiStreamTransformer<E: Real, D: Device<E>> {
    /// The sizes it was built with.
    pub config: MultiStreamConfig,
    /// The embeddings.
    pub emb: StreamEmbedding<E, D>,
    /// Each layer's attention and feedforward.
    pub layers: Vec<(StreamAttention<E, D>, FeedForward<E, D>)>,
    /// The final norm (after the streams are summed).
    pub final_norm: RmsNorm<E, D>,
    /// The output projection to token logits.
    pub to_logits: Linear<E, D>,
}

/// What a forward pass returns: logits `[b, n, num_tokens]` and the diversity loss.
pub struct StreamOutput<E: Real, D: Device<E>, T> {
    /// `[b, n, num_tokens]`.
    pub logits: T3<E, D, T>,
    /// The stream attention-diversity loss, when the config asks for it.
    pub aux: Option<Tensor<(), E, D, T>>,
}

/// The feedforward's hidden width as the original computes it (`int(dim * mult)`, truncated).
fn dim_of(dim: usize, mult: f64) -> f64 {
    (dim as f64 * mult).trunc()
}

impl<E: Real, D: Device<E>> MultiStreamTransformer<E, D> {
    /// Builds the model with its parameters drawn (or read) by `init`; refuses zero sizes.
    pub fn new(config: MultiStreamConfig, init: &Init<D>) -> Result<Self> {
        let c = &config;
        if c.num_streams == 0 || c.heads == 0 || c.dim_head == 0 || c.dim == 0 || c.depth == 0 {
            return Err(Error::config(
                "multi-stream model",
                "streams, heads, dim_head, dim and depth must be positive",
            ));
        }
        super::check_depth("multi-stream model", c.depth)?;
        let hidden = dim_of(c.dim, c.ff_mult);
        if !(hidden >= 1.0 && hidden <= crate::rules::check::MAX_CHANNELS as f64) {
            return Err(Error::config(
                "multi-stream model",
                format!("ff_mult {} gives {hidden} hidden channels", c.ff_mult),
            ));
        }
        let (s, dim) = (c.num_streams, c.dim);
        let emb = init.pp("emb");
        let emb = if c.separate_stream_emb {
            StreamEmbedding::Separate {
                token: emb.param("token_emb", &[s, c.num_tokens, dim], InitKind::Normal(0.02))?,
                pos: emb.param("pos_emb", &[s, c.max_seq_len, dim], InitKind::Normal(0.02))?,
            }
        } else {
            StreamEmbedding::Shared {
                token: emb.pp("token_emb").param(
                    "weight",
                    &[c.num_tokens, dim],
                    InitKind::Normal(1.0),
                )?,
                pos: emb.pp("pos_emb").param(
                    "weight",
                    &[c.max_seq_len, dim],
                    InitKind::Normal(1.0),
                )?,
                stream: emb.param("stream_emb", &[s, dim], InitKind::Normal(0.02))?,
            }
        };
        let talk = if c.ablate_cross_stream_talking_heads {
            1
        } else {
            s
        };
        let inner = c.heads * c.dim_head;
        let mut layers = Vec::new();
        for k in 0..c.depth {
            let l = init.pp("layers").pp(k);
            let a = l.pp("0");
            let talking = |name: &str, on: bool| -> Result<Option<TalkingHeads<E, D>>> {
                if on {
                    Ok(Some(TalkingHeads::new(
                        &a.pp(name),
                        talk * c.heads,
                        c.non_linear_talking_heads,
                    )?))
                } else {
                    Ok(None)
                }
            };
            let attn = StreamAttention {
                rmsnorm: RmsNorm::new(
                    &a.pp("rmsnorm"),
                    dim,
                    RmsKind::Scaled { eps: 1e-5 },
                    "scale",
                )?,
                to_qkv: Linear::new(&a.pp("to_qkv").pp("0"), dim, 3 * inner, false)?,
                to_gates: Linear::new(&a.pp("to_gates").pp("0"), dim, c.heads, true)?,
                to_out: Linear::new(&a.pp("to_out").pp("1"), inner, dim, false)?,
                pre: talking("pre_talking_heads", c.pre_talking_heads)?,
                post: talking("post_talking_heads", c.post_talking_heads)?,
            };
            let ff =
                FeedForward::sequential(&l.pp("1"), dim, dim_of(dim, c.ff_mult) as usize, 1e-5)?;
            layers.push((attn, ff));
        }
        Ok(Self {
            emb,
            layers,
            final_norm: RmsNorm::new(
                &init.pp("to_logits").pp("1"),
                dim,
                RmsKind::Scaled { eps: 1e-5 },
                "scale",
            )?,
            to_logits: Linear::new(&init.pp("to_logits").pp("2"), dim, c.num_tokens, false)?,
            config,
        })
    }

    /// Embeds `[b × n]` tokens into `[(b s), n, dim]` (streams minor).
    fn embed<T: Tape<E, D>>(&self, tokens: &[usize], b: usize, n: usize) -> Result<T3<E, D, T>> {
        let c = &self.config;
        let s = c.num_streams;
        if let Some((at, &bad)) = tokens.iter().enumerate().find(|(_, &t)| t >= c.num_tokens) {
            return Err(Error::config(
                "token ids",
                format!(
                    "id {bad} at batch {}, position {} is out of range (vocabulary {})",
                    at / n,
                    at % n,
                    c.num_tokens
                ),
            ));
        }
        if n > c.max_seq_len {
            return Err(Error::config(
                "model input",
                format!("{n} tokens exceed max_seq_len {}", c.max_seq_len),
            ));
        }
        let dev = self.to_logits.weight.value.device().clone();
        let dim = c.dim;
        Ok(match &self.emb {
            StreamEmbedding::Shared { token, pos, stream } => {
                let idx = dev.tensor_from_vec(tokens.to_vec(), (b * n,));
                let tok: T2<E, D, T> = token.matrix::<T>().gather(idx);
                let pidx = dev.tensor_from_vec((0..n).collect::<Vec<_>>(), (n,));
                let p: T2<E, D, T> = pos.matrix::<T>().gather(pidx);
                let shape = (b, s, n, dim);
                let tok = tok
                    .reshape_like(&(b, n, dim))
                    .broadcast_like::<_, Axis<1>>(&shape);
                let p = p.broadcast_like::<_, Axes2<0, 1>>(&shape);
                let st = stream
                    .matrix::<T>()
                    .broadcast_like::<_, Axes2<0, 2>>(&shape);
                (tok + p + st).reshape_like(&(b * s, n, dim))
            }
            StreamEmbedding::Separate { token, pos } => {
                // row (stream, token) of the [s·T, dim] table, for every (b, s, n)
                let (nt, len) = (c.num_tokens, c.max_seq_len);
                let tid: Vec<usize> = (0..b * s * n)
                    .map(|e| {
                        let (bb, ss, i) = (e / (s * n), (e / n) % s, e % n);
                        ss * nt + tokens[bb * n + i]
                    })
                    .collect();
                let pid: Vec<usize> = (0..b * s * n)
                    .map(|e| ((e / n) % s) * len + e % n)
                    .collect();
                let tt: T2<E, D, T> = token
                    .vector::<T>()
                    .reshape_like(&(s * nt, dim))
                    .gather(dev.tensor_from_vec(tid, (b * s * n,)));
                let pp: T2<E, D, T> = pos
                    .vector::<T>()
                    .reshape_like(&(s * len, dim))
                    .gather(dev.tensor_from_vec(pid, (b * s * n,)));
                (tt + pp).reshape_like(&(b * s, n, dim))
            }
        })
    }

    /// Logits and (when configured) the diversity loss, for `[b × n]` tokens; `valid`
    /// (`[b × n]`, false = padding) masks keys.
    pub fn forward<T: Tape<E, D>>(
        &self,
        tokens: &[usize],
        b: usize,
        n: usize,
        valid: Option<&[bool]>,
    ) -> Result<StreamOutput<E, D, T>>
    where
        D: Backend<E>,
    {
        let c = &self.config;
        if tokens.len() != b * n {
            return Err(Error::shape(
                "token ids",
                format!("{} (batch {b} × {n})", b * n),
                tokens.len(),
            ));
        }
        let s = c.num_streams;
        let (h, d) = (c.heads, c.dim_head);
        let talk = if c.ablate_cross_stream_talking_heads {
            1
        } else {
            s
        };
        let problems = b * s / talk;
        let big_h = talk * h;
        let mut vis = Visibility::all(problems, n, n);
        if let Some(v) = valid {
            if v.len() != b * n {
                return Err(Error::shape(
                    "padding mask",
                    format!("{} (batch {b} × {n})", b * n),
                    v.len(),
                ));
            }
            // problems are (batch, stream group): every stream of a sequence shares its padding
            let per_problem = s / talk;
            let keys = (0..problems * n)
                .map(|e| v[((e / n) / per_problem) * n + e % n])
                .collect();
            vis = vis.with_key_valid(keys)?;
        }
        if c.causal {
            vis = vis.with_sequence_causality()?;
        }
        let scale = if c.reference_scale {
            (d as f64).sqrt()
        } else {
            (d as f64).powf(-0.5)
        };
        let mut x = self.embed::<T>(tokens, b, n)?;
        let mut aux: Option<Tensor<(), E, D, T>> = None;
        for (attn, ff) in &self.layers {
            let normed = map_rows3(x.with_empty_tape(), |t| attn.rmsnorm.forward(t))?;
            let qkv = map_rows3(normed.with_empty_tape(), |t| attn.to_qkv.forward(t))?;
            // 'b n (qkv h d)' → three [(b s), h, n, d] → [problems, talk·h, n, d]
            let qkv = qkv
                .reshape_like(&(b * s, n, 3, h, d))
                .permute::<_, Axes5<2, 0, 3, 1, 4>>();
            let dev = x.device().clone();
            let pick = |which: usize| dev.tensor_from_vec(vec![which], (1,));
            let part = |t: Tensor<(usize, usize, usize, usize, usize), E, D, T>,
                        which: usize|
             -> T4<E, D, T> {
                let sel: Tensor<(usize, usize, usize, usize, usize), E, D, T> =
                    t.gather(pick(which));
                sel.reshape_like(&(problems, big_h, n, d))
            };
            let q = part(qkv.with_empty_tape(), 0);
            let k = part(qkv.with_empty_tape(), 1);
            let v = part(qkv, 2);
            let spec = WeightsSpec {
                scale,
                normalizer: Normalizer::Softmax,
                visibility: vis.clone(),
            };
            let w = match &attn.pre {
                None => crate::ops::weights::weights(q, k, None, None, &spec)?,
                Some(t) if t.is_linear() => {
                    let TalkingHeads::Linear(m) = t else {
                        unreachable!()
                    };
                    crate::ops::weights::weights(q, k, None, Some(m.matrix::<T>()), &spec)?
                }
                Some(t) => {
                    // non-linear pre-talking: scores → feedforward across heads → masked softmax
                    let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * E::of(scale);
                    let mixed = t.apply(scores)?;
                    masked_softmax(mixed, &vis)?
                }
            };
            let post_softmax = w.with_empty_tape();
            let w = match &attn.post {
                Some(t) => t.apply(w)?,
                None => w,
            };
            let out = w.matmul(v).reshape_like(&(b * s, h, n, d));
            let gates = map_rows3(normed, |t| attn.to_gates.forward(t))?
                .sigmoid()
                .permute::<_, Axes3<0, 2, 1>>()
                .broadcast_like::<_, Axis<3>>(&(b * s, h, n, d));
            let out = (out * gates)
                .permute::<_, Axes4<0, 2, 1, 3>>()
                .reshape_like(&(b * s, n, h * d));
            x = x + map_rows3(out, |t| attn.to_out.forward(t))?;
            x = x.with_empty_tape() + map_rows3(x, |t| ff.forward(t))?;
            if c.diversity_loss && s > 1 {
                let l = diversity_loss(
                    post_softmax.reshape_like(&(b * s, h, n, n)),
                    b,
                    s,
                    c.reference_diversity,
                )?;
                aux = Some(match aux {
                    None => l,
                    Some(a) => a + l,
                });
            } else {
                // keep the weights' backward (it runs with the output's tape)
                drop(post_softmax);
            }
        }
        let summed = x.reshape_like(&(b, s, n, c.dim)).sum::<_, Axis<1>>();
        let normed = map_rows3(summed, |t| self.final_norm.forward(t))?;
        let logits = map_rows3(normed, |t| self.to_logits.forward(t))?;
        // one owner for the history: the aux loss's tape joins the logits'
        let (logits, aux) = match aux {
            Some(a) => {
                let (a, atape) = a.split_tape();
                let (l, ltape) = logits.split_tape();
                (
                    l.put_tape(ltape.merge(atape)),
                    Some(a.put_tape(T::default())),
                )
            }
            None => (logits, None),
        };
        Ok(StreamOutput { logits, aux })
    }
}

/// Softmax over keys with the visibility rule (invisible keys weigh 0; a row with none is 0).
fn masked_softmax<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    vis: &Visibility,
) -> Result<T4<E, D, T>> {
    let shape = *x.shape();
    let (p, _, i, j) = shape;
    let dev = x.device().clone();
    let keep =
        crate::ops::weights::keep_mask(&dev, vis)?.unwrap_or_else(|| dev.ones_like(&(p, i, j)));
    let keep = keep.broadcast_like::<_, Axis<1>>(&shape);
    let pushed = x + (keep.clone() - E::one()).retaped::<T>() * E::of(-crate::spec::MASKED);
    let w = pushed.softmax::<Axis<3>>();
    Ok(w * keep.retaped::<T>())
}

/// The original's `calc_stream_loss(...).mean()`: heads of all streams combined pairwise (outer
/// sums over streams), averaged over streams, and the negative entropy over keys (or, as the
/// original computes it, Σ p²), averaged.
fn diversity_loss<E: Real, D: Device<E>, T: Tape<E, D>>(
    attn: T4<E, D, T>,
    b: usize,
    s: usize,
    reference: bool,
) -> Result<Tensor<(), E, D, T>> {
    let (_, h, i, j) = *attn.shape();
    let per_stream = attn.reshape_like(&(b, s, h, i, j));
    let dev = per_stream.device().clone();
    let stream =
        |t: Tensor<(usize, usize, usize, usize, usize), E, D, T>, k: usize| -> T4<E, D, T> {
            let sel: Tensor<(usize, usize, usize, usize, usize), E, D, T> = t
                .permute::<_, Axes5<1, 0, 2, 3, 4>>()
                .gather(dev.tensor_from_vec(vec![k], (1,)));
            sel.reshape_like(&(b, h, i, j))
        };
    let mut accum = stream(per_stream.with_empty_tape(), 0);
    let mut heads = h;
    for k in 1..s {
        let rest = stream(per_stream.with_empty_tape(), k);
        let shape = (b, heads, h, i, j);
        accum = (accum.broadcast_like::<_, Axis<2>>(&shape)
            + rest.broadcast_like::<_, Axis<1>>(&shape))
        .reshape_like(&(b, heads * h, i, j));
        heads *= h;
    }
    drop(per_stream);
    let mean = accum * E::of(1.0 / s as f64);
    let clamped = mean.with_empty_tape().clamp(1e-20, f64::INFINITY);
    let logp = if reference { clamped } else { clamped.ln() };
    let neg_entropy = (mean * logp).sum::<_, Axis<3>>();
    Ok(neg_entropy.mean())
}

impl<E: Real, D: Device<E>> HasParams<E, D> for TalkingHeads<E, D> {
    visit_variants!(Linear(weight), NonLinear { norm, up, down });
}

impl<E: Real, D: Device<E>> HasParams<E, D> for StreamAttention<E, D> {
    visit_fields!(rmsnorm, to_qkv, to_gates, to_out, pre, post);
}

impl<E: Real, D: Device<E>> HasParams<E, D> for StreamEmbedding<E, D> {
    visit_variants!(Shared { token, pos, stream }, Separate { token, pos });
}

impl<E: Real, D: Device<E>> HasParams<E, D> for MultiStreamTransformer<E, D> {
    visit_fields!(emb, layers, final_norm, to_logits);
}
