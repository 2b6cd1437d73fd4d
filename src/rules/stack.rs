//! The rules of a model's layers: one rule every layer runs (`taylor`), or one rule per layer
//! (`taylor,triangle,taylor`), each a built-in's name or a rule file's path.

use super::{Plan, Rule, RuleConfig};
use crate::error::{Error, Result};

/// The rules a model's layers run, parsed once each, with the text checkpoints keep.
#[derive(Clone, Debug)]
pub struct LayerRules {
    /// The distinct rules, in order of first use.
    rules: Vec<Rule>,
    /// Per listed layer, its rule in `rules`; a single entry serves every layer.
    order: Vec<usize>,
    /// What a checkpoint keeps: the rule's text, or for a list, a JSON array of the distinct
    /// rules' texts in order of first use.
    source: String,
}

/// The entries of a rule list (`taylor, triangle` → `["taylor", "triangle"]`); a file whose
/// name has a comma is one entry.
pub fn entries(spec: &str) -> Vec<&str> {
    if std::path::Path::new(spec).is_file() {
        return vec![spec];
    }
    spec.split(',').map(str::trim).collect()
}

impl LayerRules {
    /// Resolves every entry of `spec` (built-in names or rule files).
    pub fn resolve(spec: &str) -> Result<Self> {
        Self::build(spec, |name, _| Rule::resolve(name))
    }

    /// The rules of `spec` from a checkpoint's `source` (see [`LayerRules::source`]).
    pub fn from_source(spec: &str, source: &str) -> Result<Self> {
        let distinct = distinct_entries(spec)?;
        if distinct.len() == 1 {
            return Self::build(spec, |name, _| Rule::parse(name, source));
        }
        let texts: Vec<String> = serde_json::from_str(source).map_err(|e| {
            Error::config(
                "rule_source",
                format!("the rules `{spec}` need a list of their texts: {e}"),
            )
        })?;
        if texts.len() != distinct.len() {
            return Err(Error::config(
                "rule_source",
                format!(
                    "{} rule texts for the {} rules of `{spec}`",
                    texts.len(),
                    distinct.len()
                ),
            ));
        }
        Self::build(spec, |name, k| Rule::parse(name, &texts[k]))
    }

    fn build(spec: &str, mut load: impl FnMut(&str, usize) -> Result<Rule>) -> Result<Self> {
        let distinct = distinct_entries(spec)?;
        let rules = distinct
            .iter()
            .enumerate()
            .map(|(k, name)| load(name, k))
            .collect::<Result<Vec<_>>>()?;
        let order = entries(spec)
            .iter()
            .map(|e| distinct.iter().position(|d| d == e).expect("listed"))
            .collect();
        let source = if rules.len() == 1 {
            rules[0].source.clone()
        } else {
            let texts: Vec<&str> = rules.iter().map(|r| r.source.as_str()).collect();
            serde_json::to_string(&texts).expect("strings serialize")
        };
        Ok(Self {
            rules,
            order,
            source,
        })
    }

    /// Layers the list names (1 for a rule every layer runs).
    pub fn listed(&self) -> usize {
        self.order.len()
    }

    /// Refuses a list whose length is not the model's depth.
    pub fn check_depth(&self, depth: usize) -> Result<()> {
        if self.order.len() > 1 && self.order.len() != depth {
            return Err(Error::config(
                "rule",
                format!(
                    "{} rules are listed for a model of {depth} layers: list one rule per \
                     layer, or give one rule for every layer",
                    self.order.len()
                ),
            ));
        }
        Ok(())
    }

    /// The one rule every layer runs, if there is one.
    pub fn single(&self) -> Option<&Rule> {
        (self.rules.len() == 1).then(|| &self.rules[0])
    }

    /// What a checkpoint keeps to rebuild these rules without their files.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `taylor`, or `taylor, triangle, taylor`: the rules' names as a banner shows them.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self
            .order
            .iter()
            .map(|&k| self.rules[k].name.as_str())
            .collect();
        names.join(", ")
    }

    /// Each distinct rule's plan. With several rules, a parameter override reaches the rules
    /// that declare it, and one that none declares is refused.
    pub fn plans(&self, cfg: &RuleConfig) -> Result<Vec<Plan>> {
        if let Some(rule) = self.single() {
            return Ok(vec![rule.plan(cfg)?]);
        }
        let declared = |rule: &Rule, name: &str| rule.parameters().iter().any(|(p, _)| p == name);
        if let Some((name, _)) = cfg
            .overrides
            .iter()
            .find(|(name, _)| !self.rules.iter().any(|r| declared(r, name)))
        {
            return Err(Error::config(
                "rule",
                format!(
                    "the configuration sets `{name}`, which none of the rules `{}` declares",
                    self.names()
                ),
            ));
        }
        self.rules
            .iter()
            .map(|rule| {
                let overrides = cfg
                    .overrides
                    .iter()
                    .filter(|(name, _)| declared(rule, name))
                    .cloned()
                    .collect();
                rule.plan(&RuleConfig {
                    overrides,
                    ..cfg.clone()
                })
            })
            .collect()
    }

    /// The plan layer `k` runs, of `plans` (as [`LayerRules::plans`] made them: one per
    /// distinct rule); a single listed rule serves every layer.
    pub fn plan_for_layer<'p>(&self, plans: &'p [Plan], k: usize) -> &'p Plan {
        let at = if self.order.len() == 1 { 0 } else { k };
        &plans[self.order[at]]
    }
}

/// The distinct entries of a rule list, in order of first use; an empty entry is refused.
fn distinct_entries(spec: &str) -> Result<Vec<&str>> {
    let mut distinct: Vec<&str> = Vec::new();
    for (k, e) in entries(spec).into_iter().enumerate() {
        if e.is_empty() {
            return Err(Error::config(
                "rule",
                format!("entry {} of the rule list `{spec}` is empty", k + 1),
            ));
        }
        if !distinct.contains(&e) {
            distinct.push(e);
        }
    }
    Ok(distinct)
}
