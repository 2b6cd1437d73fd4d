//! `quartic explain RULE`: the plan of a rule statement by statement, with its costs at a size.

use quartic::rules::explain::explain;
use quartic::rules::{Const, Rule, RuleConfig};

use super::ExplainArgs;

/// Parses `name=value` rule parameter overrides (numbers, or words such as `taylor`).
pub fn parse_overrides(sets: &[String]) -> quartic::Result<Vec<(String, Const)>> {
    sets.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                quartic::Error::config("--set", format!("`{s}` is not `name=value`"))
            })?;
            let v = v.trim();
            let value = match v.parse::<f64>() {
                Ok(x) if x.is_finite() => Const::Num(x),
                Ok(x) => {
                    return Err(quartic::Error::config(
                        "--set",
                        format!("`{s}`: {x} is not a finite number"),
                    ))
                }
                Err(_) => Const::Word(v.to_string()),
            };
            Ok((k.trim().to_string(), value))
        })
        .collect()
}

pub fn run(args: &ExplainArgs) -> quartic::Result<()> {
    let rule = Rule::resolve(&args.rule)?;
    let cfg = RuleConfig {
        dim: args.dim,
        dim_edges: args.dim_edges,
        causal: args.causal,
        overrides: parse_overrides(&args.set)?,
    };
    let plan = rule.plan(&cfg)?;
    super::output::write(format_args!("{}", explain(&plan, args.batch, args.n)))
}
