//! Importing the PyTorch original's weights: its constructor config (the class name and its
//! arguments) becomes one of our model configs, and its `state_dict` names map onto ours.
//! Fused projections (`to_qkv`, `to_kv`) split into row blocks; 1×1 convolutions drop their
//! trailing unit dims. The same map carries our gradients back to the original's names, which is
//! how the parity tests compare them.

use std::collections::HashMap;

use super::configs::{QuarticConfig, RelationalConfig};
use super::multistream::MultiStreamConfig;
use super::ModelConfig;
use crate::error::{Error, Result};

/// Parameter values by name: `(dims, values)`.
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f64>)>;

/// A reference model: which class and with which arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum ReferenceModel {
    /// `QuarticTransformer`.
    Quartic(QuarticConfig),
    /// `RelationalTransformer`.
    Relational(RelationalConfig),
    /// `MultiStreamTransformer`.
    MultiStream(MultiStreamConfig),
}

/// One of our parameters taken from the reference: the whole tensor, or rows
/// `[start, start + len)` of its first axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// Our parameter's name.
    pub ours: String,
    /// The original's `state_dict` key.
    pub theirs: String,
    /// `(start, len)` rows of theirs, or the whole tensor.
    pub rows: Option<(usize, usize)>,
}

/// A hyper-connection's parameters, named alike on both sides.
const HYPER_PARAMS: [&str; 7] = [
    "static_alpha",
    "dynamic_alpha_fn",
    "dynamic_alpha_scale",
    "static_beta",
    "dynamic_beta_fn",
    "dynamic_beta_scale",
    "norm.gamma",
];

fn err(message: impl Into<String>) -> Error {
    Error::config("reference import", message)
}

impl ReferenceModel {
    /// Reads the constructor config (`{"cls": "QuarticTransformer", ...}`).
    pub fn from_config(config: &serde_json::Value) -> Result<Self> {
        let cls = config
            .get("cls")
            .and_then(|c| c.as_str())
            .ok_or_else(|| err("the config names no class (`cls`)"))?;
        // the constructor arguments alone
        let mut args = config.clone();
        if let Some(o) = args.as_object_mut() {
            o.remove("cls");
            o.remove("package");
        }
        let bad = |e: serde_json::Error| err(format!("{cls} config: {e}"));
        Ok(match cls {
            "QuarticTransformer" => Self::Quartic(serde_json::from_value(args.clone()).map_err(bad)?),
            "RelationalTransformer" => {
                Self::Relational(serde_json::from_value(args.clone()).map_err(bad)?)
            }
            "MultiStreamTransformer" => {
                Self::MultiStream(serde_json::from_value(args.clone()).map_err(bad)?)
            }
            other => {
                return Err(err(format!(
                    "unknown class `{other}` (QuarticTransformer, RelationalTransformer, MultiStreamTransformer)"
                )))
            }
        })
    }

    /// The reference model our `config` computes, when it has one: the inverse of
    /// [`ReferenceModel::model_config`]. A model of ours the original cannot express (another
    /// rule, the standard attention scale, our own options) is refused, naming what differs.
    pub fn from_model_config(config: &ModelConfig, rule_source: Option<&str>) -> Result<Self> {
        let reference = match config {
            ModelConfig::Graph(g) => {
                let rules = match rule_source {
                    Some(src) => crate::rules::LayerRules::from_source(&g.rule, src)?,
                    None => crate::rules::LayerRules::resolve(&g.rule)?,
                };
                let Some(rule) = rules.single() else {
                    return Err(err(format!(
                        "the layers run different rules (`{}`); the original's layers are alike",
                        g.rule
                    )));
                };
                // every rule parameter after defaults and overrides
                let plan = rule.plan(&g.rule_config())?;
                let num = |name: &str| match plan.params.iter().find(|(k, _)| k == name) {
                    Some((_, crate::rules::Const::Num(x))) => Ok(*x),
                    _ => Err(err(format!("rule `{}` has no number `{name}`", g.rule))),
                };
                match g.rule.as_str() {
                    "taylor" => Self::Quartic(QuarticConfig {
                        num_tokens: g.num_tokens,
                        dim: g.dim,
                        depth: g.depth,
                        dim_edges: Some(g.dim_edges),
                        dim_head: num("dim_head")? as usize,
                        heads: num("heads")? as usize,
                        causal: g.causal,
                        linear_dim_head: num("edge_dim_head")? as usize,
                        linear_heads: num("edge_heads")? as usize,
                        ff_mult: num("ff_mult")?,
                        max_seq_len: g.max_seq_len,
                        edges_diagonal_attn: false,
                        num_residual_streams: g.residual_streams,
                    }),
                    "relational" => Self::Relational(RelationalConfig {
                        num_tokens: g.num_tokens,
                        dim: g.dim,
                        depth: g.depth,
                        dim_edges: g.dim_edges,
                        dim_head: num("dim_head")? as usize,
                        heads: num("heads")? as usize,
                        causal: g.causal,
                        ff_mult: num("ff_mult")?,
                        max_seq_len: g.max_seq_len,
                    }),
                    other => {
                        return Err(err(format!(
                            "rule `{other}` has no counterpart in the original (taylor: \
                             QuarticTransformer, relational: RelationalTransformer)"
                        )))
                    }
                }
            }
            ModelConfig::MultiStream(m) => {
                if m.causal {
                    return Err(err(
                        "this model has no counterpart in the original: it is causal, and the \
                         original's MultiStreamTransformer never is",
                    ));
                }
                // the original's arguments; `model_config` sets its quirks back on
                let mut m = m.clone();
                m.reference_scale = false;
                m.reference_diversity = false;
                Self::MultiStream(m)
            }
        };
        // the round trip must give this very model back
        let back = reference.model_config()?;
        if &back != config {
            let (ours, theirs) = (
                serde_json::to_value(config).unwrap_or_default(),
                serde_json::to_value(&back).unwrap_or_default(),
            );
            return Err(err(format!(
                "this model has no counterpart in the original: {}",
                differences(&ours, &theirs, "")
            )));
        }
        Ok(reference)
    }

    /// The constructor config the original takes (`{"cls": "QuarticTransformer", ...}`).
    pub fn config_json(&self) -> serde_json::Value {
        let (cls, args) = match self {
            Self::Quartic(c) => ("QuarticTransformer", serde_json::to_value(c)),
            Self::Relational(c) => ("RelationalTransformer", serde_json::to_value(c)),
            Self::MultiStream(c) => ("MultiStreamTransformer", serde_json::to_value(c)),
        };
        let mut args = args.unwrap_or_default();
        if let Some(o) = args.as_object_mut() {
            if let Self::MultiStream(_) = self {
                // our own switches, not the original's arguments
                for ours in OUR_MULTISTREAM_OPTIONS {
                    o.remove(ours);
                }
            }
            o.insert("cls".into(), cls.into());
        }
        args
    }

    /// Our model config computing exactly what the reference computes (its quirks included:
    /// the attention scale, the relational model's unused final norm).
    pub fn model_config(&self) -> Result<ModelConfig> {
        Ok(match self {
            Self::Quartic(c) => ModelConfig::Graph(c.to_graph("taylor", true)?),
            Self::Relational(c) => ModelConfig::Graph(c.to_graph(true)),
            Self::MultiStream(c) => {
                let mut c = c.clone();
                c.reference_scale = true;
                c.reference_diversity = true;
                ModelConfig::MultiStream(c)
            }
        })
    }

    /// The name map from the reference's `state_dict` to our parameters.
    pub fn mappings(&self) -> Vec<Mapping> {
        let mut m = Vec::new();
        let mut same = |name: &str| {
            m.push(Mapping {
                ours: name.into(),
                theirs: name.into(),
                rows: None,
            })
        };
        match self {
            Self::Quartic(c) => {
                for n in ["token_emb.weight", "pos_emb.weight"] {
                    same(n);
                }
                for n in ["to_rows", "to_cols", "to_edges.0"] {
                    same(&format!("to_edge_emb.{n}.weight"));
                }
                same("to_edge_emb.to_edges.1.weight");
                same("to_edge_emb.to_edges.1.bias");
                for k in 0..3 {
                    let p = if k < 2 {
                        format!("mlp.{k}.0")
                    } else {
                        format!("mlp.{k}")
                    };
                    same(&format!("dynamic_rel_pos_bias.{p}.weight"));
                    same(&format!("dynamic_rel_pos_bias.{p}.bias"));
                }
                let inner = c.heads * c.dim_head;
                let linner = c.linear_heads * c.linear_dim_head;
                for k in 0..c.depth {
                    let r = format!("layers.{k}");
                    let attn = format!("{r}.0.0.branch");
                    let mut one = |ours: String, theirs: String| {
                        m.push(Mapping {
                            ours,
                            theirs,
                            rows: None,
                        })
                    };
                    one(
                        format!("{r}.x.rmsnorm0.weight"),
                        format!("{attn}.rmsnorm.scale"),
                    );
                    one(
                        format!("{r}.attended.rmsnorm0.weight"),
                        format!("{attn}.edges_to_attn_bias.0.scale"),
                    );
                    one(
                        format!("{r}.attended.linear0.weight"),
                        format!("{attn}.edges_to_attn_bias.1.weight"),
                    );
                    one(
                        format!("{r}.attended.linear0.bias"),
                        format!("{attn}.edges_to_attn_bias.1.bias"),
                    );
                    one(
                        format!("{r}.attended.linear1.weight"),
                        format!("{attn}.to_gates.0.weight"),
                    );
                    one(
                        format!("{r}.attended.linear1.bias"),
                        format!("{attn}.to_gates.0.bias"),
                    );
                    one(
                        format!("{r}.attended.attend0.to_out.weight"),
                        format!("{attn}.to_out.1.weight"),
                    );
                    one(
                        format!("{r}.attended.attend0.talking"),
                        format!("{attn}.pre_talking_heads.weight"),
                    );
                    one(
                        format!("{r}.to_edges.linear0.weight"),
                        format!("{attn}.to_edges_out.0.weight"),
                    );
                    for (s, which) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                        m.push(Mapping {
                            ours: format!("{r}.attended.attend0.{which}.weight"),
                            theirs: format!("{attn}.to_qkv.0.weight"),
                            rows: Some((s * inner, inner)),
                        });
                    }
                    feedforward(
                        &mut m,
                        &format!("{r}.ff.feedforward0"),
                        &format!("{r}.0.1.branch"),
                        "scale",
                    );
                    // the hyper-connections around the attention (branch 0) and the feedforward
                    if c.num_residual_streams > 1 {
                        for j in 0..2 {
                            for p in HYPER_PARAMS {
                                m.push(Mapping {
                                    ours: format!("{r}.hyper.{j}.{p}"),
                                    theirs: format!("{r}.0.{j}.{p}"),
                                    rows: None,
                                });
                            }
                        }
                    }
                    for (theirs, norm, st) in
                        [("row_attn", "r", "rows"), ("col_attn", "c", "columns")]
                    {
                        let t = format!("{r}.1.0.{theirs}");
                        let mut one = |ours: String, theirs: String| {
                            m.push(Mapping {
                                ours,
                                theirs,
                                rows: None,
                            })
                        };
                        one(
                            format!("{r}.{norm}.unitnorm0.weight"),
                            format!("{t}.norm.gamma"),
                        );
                        one(
                            format!("{r}.{st}.attend0.to_q.weight"),
                            format!("{t}.to_q.0.weight"),
                        );
                        one(
                            format!("{r}.{st}.linear0.weight"),
                            format!("{t}.to_v_gates.0.weight"),
                        );
                        one(
                            format!("{r}.{st}.attend0.to_out.weight"),
                            format!("{t}.to_out.0.weight"),
                        );
                        for (s, which) in ["to_k", "to_v"].iter().enumerate() {
                            m.push(Mapping {
                                ours: format!("{r}.{st}.attend0.{which}.weight"),
                                theirs: format!("{t}.to_kv.0.weight"),
                                rows: Some((s * linner, linner)),
                            });
                        }
                    }
                    feedforward(
                        &mut m,
                        &format!("{r}.ff_edges.feedforward0"),
                        &format!("{r}.1.1"),
                        "scale",
                    );
                }
                m.push(Mapping {
                    ours: "final_norm.weight".into(),
                    theirs: "to_logits.0.scale".into(),
                    rows: None,
                });
                m.push(Mapping {
                    ours: "to_logits.weight".into(),
                    theirs: "to_logits.1.weight".into(),
                    rows: None,
                });
            }
            Self::Relational(c) => {
                for n in ["token_emb.weight", "pos_emb.weight", "to_logits.weight"] {
                    same(n);
                }
                for n in ["to_rows", "to_cols", "to_edges.0"] {
                    same(&format!("to_edge_emb.{n}.weight"));
                }
                same("to_edge_emb.to_edges.1.weight");
                same("to_edge_emb.to_edges.1.bias");
                let inner = c.heads * c.dim_head;
                for k in 0..c.depth {
                    let r = format!("layers.{k}");
                    let attn = format!("{r}.0.0");
                    let n2e = format!("{r}.1.0");
                    let mut one = |ours: String, theirs: String| {
                        m.push(Mapping {
                            ours,
                            theirs,
                            rows: None,
                        })
                    };
                    one(
                        format!("{r}.x.rmsnorm0.weight"),
                        format!("{attn}.norm.weight"),
                    );
                    one(
                        format!("{r}.e.rmsnorm0.weight"),
                        format!("{attn}.edges_norm.weight"),
                    );
                    one(
                        format!("{r}.out.linear0.weight"),
                        format!("{attn}.to_out.1.weight"),
                    );
                    one(
                        format!("{r}.xn.rmsnorm0.weight"),
                        format!("{n2e}.node_norm.weight"),
                    );
                    one(
                        format!("{r}.en.rmsnorm0.weight"),
                        format!("{n2e}.edges_norm.weight"),
                    );
                    one(
                        format!("{r}.to_edges.linear0.weight"),
                        format!("{n2e}.proj.weight"),
                    );
                    one(
                        format!("{r}.to_edges.linear0.bias"),
                        format!("{n2e}.proj.bias"),
                    );
                    for (s, which) in ["q", "k", "v"].iter().enumerate() {
                        for (site, theirs) in [("linear0", "to_qkv"), ("linear1", "to_edges_qkv")] {
                            m.push(Mapping {
                                ours: format!("{r}.{which}.{site}.weight"),
                                theirs: format!("{attn}.{theirs}.0.weight"),
                                rows: Some((s * inner, inner)),
                            });
                        }
                    }
                    feedforward(
                        &mut m,
                        &format!("{r}.ff.feedforward0"),
                        &format!("{r}.0.1"),
                        "weight",
                    );
                    feedforward(
                        &mut m,
                        &format!("{r}.ff_edges.feedforward0"),
                        &format!("{r}.1.1"),
                        "weight",
                    );
                }
            }
            Self::MultiStream(c) => {
                // the Rust model keeps the original's structure and names
                let emb = if c.separate_stream_emb {
                    vec!["emb.token_emb", "emb.pos_emb"]
                } else {
                    vec![
                        "emb.token_emb.weight",
                        "emb.pos_emb.weight",
                        "emb.stream_emb",
                    ]
                };
                for n in emb {
                    same(n);
                }
                for k in 0..c.depth {
                    let a = format!("layers.{k}.0");
                    for n in [
                        "rmsnorm.scale",
                        "to_qkv.0.weight",
                        "to_gates.0.weight",
                        "to_gates.0.bias",
                        "to_out.1.weight",
                    ] {
                        same(&format!("{a}.{n}"));
                    }
                    for t in ["pre_talking_heads", "post_talking_heads"] {
                        let on = if t == "pre_talking_heads" {
                            c.pre_talking_heads
                        } else {
                            c.post_talking_heads
                        };
                        if !on {
                            continue;
                        }
                        if c.non_linear_talking_heads {
                            for n in ["fn.0.scale", "fn.1.weight", "fn.4.weight"] {
                                same(&format!("{a}.{t}.{n}"));
                            }
                        } else {
                            same(&format!("{a}.{t}.weight"));
                        }
                    }
                    for n in ["0.scale", "1.weight", "4.weight"] {
                        same(&format!("layers.{k}.1.{n}"));
                    }
                }
                same("to_logits.1.scale");
                same("to_logits.2.weight");
            }
        }
        m
    }

    /// Reference tensors the original creates but never uses (the relational model's
    /// `final_norm`): accepted on import, zero gradient on export.
    pub fn unused(&self) -> Vec<String> {
        match self {
            Self::Relational(_) => vec!["final_norm.weight".into()],
            _ => vec![],
        }
    }

    /// Our parameters from the reference's `state_dict`. Every reference tensor must be used.
    pub fn import(&self, state: &NamedTensors) -> Result<NamedTensors> {
        let mut out = NamedTensors::new();
        let mut used = std::collections::HashSet::new();
        for mp in self.mappings() {
            let (dims, values) = state
                .get(&mp.theirs)
                .ok_or_else(|| err(format!("the state_dict has no `{}`", mp.theirs)))?;
            used.insert(mp.theirs.clone());
            let (dims, values) = match mp.rows {
                None => (dims.clone(), values.clone()),
                Some((start, len)) => {
                    if dims.is_empty() || start + len > dims[0] {
                        return Err(err(format!(
                            "`{}` has {:?}, too few rows for {}..{}",
                            mp.theirs,
                            dims,
                            start,
                            start + len
                        )));
                    }
                    let row: usize = dims[1..].iter().product();
                    let mut d = dims.clone();
                    d[0] = len;
                    (d, values[start * row..(start + len) * row].to_vec())
                }
            };
            out.insert(mp.ours, (squeeze(dims), values));
        }
        let ignored = self.unused();
        let mut unused: Vec<&String> = state
            .keys()
            .filter(|k| !used.contains(*k) && !ignored.contains(k))
            .collect();
        unused.sort();
        if let Some(first) = unused.first() {
            return Err(err(format!(
                "the state_dict has {} tensors this model does not use, first `{first}` \
                 (a different class or config?)",
                unused.len()
            )));
        }
        Ok(out)
    }

    /// Our parameters as the reference's `state_dict`: names, shapes (1×1 convolutions get
    /// their trailing unit dims back) and values; row blocks are reassembled. The inverse of
    /// [`ReferenceModel::import`].
    pub fn export_state(&self, ours: &NamedTensors) -> Result<NamedTensors> {
        let maps = self.mappings();
        let get = |name: &str| {
            ours.get(name)
                .ok_or_else(|| err(format!("the model has no parameter `{name}`")))
        };
        // the reference tensors' shapes: ours, with the row blocks stacked
        let mut dims: HashMap<String, Vec<usize>> = HashMap::new();
        for mp in &maps {
            let (d, _) = get(&mp.ours)?;
            let mut d = d.clone();
            if let Some((start, len)) = mp.rows {
                if d.is_empty() || d[0] != len {
                    return Err(err(format!("`{}` is {d:?}, not {len} rows", mp.ours)));
                }
                let rows = dims.get(&mp.theirs).map_or(0, |e| e[0]);
                d[0] = rows.max(start + len);
            }
            if CONV_1X1.iter().any(|suffix| mp.theirs.ends_with(suffix)) {
                d.extend([1, 1]);
            }
            dims.insert(mp.theirs.clone(), d);
        }
        let values: HashMap<String, Vec<f64>> = ours
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let flat = self.export(&values, &dims)?;
        let mut out: NamedTensors = flat
            .into_iter()
            .map(|(name, v)| {
                let d = dims.get(&name).cloned().unwrap_or_else(|| vec![v.len()]);
                (name, (d, v))
            })
            .collect();
        if let Self::Relational(c) = self {
            // defined by the original and never applied: its initial value
            out.insert("final_norm.weight".into(), (vec![c.dim], vec![1.0; c.dim]));
        }
        Ok(out)
    }

    /// Our gradients (by our names) under the reference's names and shapes; row blocks are
    /// reassembled. `their_dims` gives each reference tensor's shape.
    pub fn export(
        &self,
        ours: &HashMap<String, Vec<f64>>,
        their_dims: &HashMap<String, Vec<usize>>,
    ) -> Result<HashMap<String, Vec<f64>>> {
        let mut out: HashMap<String, Vec<f64>> = HashMap::new();
        for mp in self.mappings() {
            let dims = their_dims
                .get(&mp.theirs)
                .ok_or_else(|| err(format!("no shape for `{}`", mp.theirs)))?;
            let total: usize = dims.iter().product();
            let g = ours
                .get(&mp.ours)
                .ok_or_else(|| err(format!("no gradient for `{}`", mp.ours)))?;
            let slot = out
                .entry(mp.theirs.clone())
                .or_insert_with(|| vec![0.0; total]);
            // a row block starts `start` rows in (a scalar has no rows and no blocks)
            let start = mp
                .rows
                .map_or(0, |(s, _)| s * dims.iter().skip(1).product::<usize>());
            if start + g.len() > total {
                return Err(err(format!(
                    "`{}` has {total} values, fewer than {} from `{}`",
                    mp.theirs,
                    start + g.len(),
                    mp.ours
                )));
            }
            slot[start..start + g.len()].copy_from_slice(g);
        }
        for name in self.unused() {
            if let Some(dims) = their_dims.get(&name) {
                out.insert(name, vec![0.0; dims.iter().product()]);
            }
        }
        Ok(out)
    }
}

/// The reference tensors that are 1×1 convolution weights (`[out, in, 1, 1]`; ours drop the
/// unit dims): the talking heads and the attention map's projection into the edges.
const CONV_1X1: [&str; 3] = [
    "pre_talking_heads.weight",
    "post_talking_heads.weight",
    "to_edges_out.0.weight",
];

/// Fields of our multi-stream config the original's constructor does not take (it is never
/// causal; a causal model is refused before export).
const OUR_MULTISTREAM_OPTIONS: [&str; 4] = [
    "reference_scale",
    "diversity_loss",
    "reference_diversity",
    "causal",
];

/// The paths where two JSON values differ, with both sides: `dim: 16 against 32`.
fn differences(ours: &serde_json::Value, theirs: &serde_json::Value, path: &str) -> String {
    use serde_json::Value;
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            let parts: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    differences(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &sub,
                    )
                })
                .collect();
            parts.join("; ")
        }
        _ => format!("{path} is {ours}, the original's would be {theirs}"),
    }
}

/// The original's `FeedForward` (`Sequential(norm, linear, gelu, dropout, linear)`).
fn feedforward(m: &mut Vec<Mapping>, ours: &str, theirs: &str, norm_param: &str) {
    for (o, t) in [
        ("norm.scale", format!("0.{norm_param}")),
        ("proj_in.weight", "1.weight".to_string()),
        ("proj_out.weight", "4.weight".to_string()),
    ] {
        m.push(Mapping {
            ours: format!("{ours}.{o}"),
            theirs: format!("{theirs}.{t}"),
            rows: None,
        });
    }
}

/// 1×1 convolution weights `[out, in, 1, 1]` → `[out, in]`.
fn squeeze(mut dims: Vec<usize>) -> Vec<usize> {
    while dims.len() > 2 && dims.last() == Some(&1) {
        dims.pop();
    }
    dims
}
