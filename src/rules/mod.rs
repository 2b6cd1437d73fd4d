//! The rule language: edge- and node-update rules written as short index-notation programs,
//! checked when loaded and lowered onto the graph core's kernels.
//!
//! Passes, each in its own module: `lexer` (text → tokens), `parser` (tokens → `ast`),
//! [`check`] (syntax tree → [`ir::Plan`]: indices, channels, parameter sites, causality), with
//! [`lower`] deciding how each attention runs, [`layer`] (a plan with its parameters), [`interp`] (running it), [`explain`] (its cost).
//! `dsl/README.md` teaches the language.

pub(crate) mod ast;
pub mod builtins;
pub mod check;

pub mod explain;
pub mod interp;
pub mod ir;
pub mod layer;
pub mod layout;
pub(crate) mod lexer;
pub mod lower;
pub(crate) mod parser;
pub mod stack;

pub use crate::diagnostic::Diagnostic;
/// How deep a rule's expressions may nest; deeper ones are refused when parsed, so every
/// pass may recurse over the syntax tree.
pub use ast::MAX_DEPTH as MAX_NESTING;
pub use check::RuleConfig;
pub use ir::{Const, Plan};
pub use layer::RuleLayer;
pub use stack::LayerRules;

use crate::error::{Error, Result};

/// The built-in rules, compiled into the binary from `dsl/`.
pub const BUILTINS: [(&str, &str); 8] = [
    ("quartic", include_str!("../../dsl/quartic.rule")),
    (
        "quartic_endpoints",
        include_str!("../../dsl/quartic_endpoints.rule"),
    ),
    ("taylor", include_str!("../../dsl/taylor.rule")),
    ("routed", include_str!("../../dsl/routed.rule")),
    ("relational", include_str!("../../dsl/relational.rule")),
    ("triangle", include_str!("../../dsl/triangle.rule")),
    (
        "edge_transformer",
        include_str!("../../dsl/edge_transformer.rule"),
    ),
    ("baseline", include_str!("../../dsl/baseline.rule")),
];

/// A parsed rule program (not yet checked against a model's sizes).
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name (the header's, else the file's stem).
    pub name: String,
    /// The file it came from, for messages.
    pub file: String,
    /// Its text.
    pub source: String,
    program: ast::Program,
}

/// `: did you mean `triangle`?` for a near miss of a built-in's name, else the list of them.
fn builtin_suggestion(name: &str) -> String {
    let names = BUILTINS.iter().map(|(n, _)| *n);
    match check::closest(name, names.clone()) {
        Some(near) => format!("; did you mean `{near}`?"),
        None => format!(" (built-ins: {})", names.collect::<Vec<_>>().join(", ")),
    }
}

fn located(file: &str, source: &str, e: crate::diagnostic::RuleError) -> Error {
    Error::Rule(Box::new(locate(file, source, e)))
}

fn locate(file: &str, source: &str, e: crate::diagnostic::RuleError) -> Diagnostic {
    let mut d = Diagnostic::at(file, source, e.span, e.message, e.hint);
    d.also = e
        .also
        .into_iter()
        .map(|more| locate(file, source, more))
        .collect();
    d
}

impl Rule {
    /// Parses `source`, naming it `file` in messages.
    pub fn parse(file: &str, source: &str) -> Result<Self> {
        let tokens = lexer::lex(source).map_err(|e| located(file, source, e))?;
        let program = parser::parse(&tokens).map_err(|e| located(file, source, e))?;
        let name = match &program.header {
            Some(h) => h.name.name.clone(),
            None => std::path::Path::new(file)
                .file_stem()
                .map_or("rule".into(), |s| s.to_string_lossy().into_owned()),
        };
        Ok(Self {
            name,
            file: file.to_string(),
            source: source.to_string(),
            program,
        })
    }

    /// Reads and parses a rule file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = crate::files::read_text_capped(path, crate::files::RULE_CAP, "the rule")?;
        Self::parse(&path.display().to_string(), &source)
    }

    /// A built-in rule by name.
    pub fn builtin(name: &str) -> Result<Self> {
        match BUILTINS.iter().find(|(n, _)| *n == name) {
            Some((n, src)) => Self::parse(&format!("dsl/{n}.rule"), src),
            None => Err(Error::config(
                "rule",
                format!("no built-in rule `{name}`{}", builtin_suggestion(name)),
            )),
        }
    }

    /// A built-in name, or else a path to a rule file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        if BUILTINS.iter().any(|(n, _)| *n == name_or_path) {
            Self::builtin(name_or_path)
        } else if std::path::Path::new(name_or_path).exists() {
            Self::load(name_or_path)
        } else if name_or_path.contains(',') {
            Err(Error::config(
                "rule",
                format!(
                    "`{name_or_path}` is a list of rules; one is expected here (a list gives a \
                     model's layers their rules: `train --rule a,b`)"
                ),
            ))
        } else {
            Err(Error::config(
                "rule",
                format!(
                    "`{name_or_path}` is neither a built-in rule nor a readable file{}",
                    builtin_suggestion(name_or_path)
                ),
            ))
        }
    }

    /// Checks the rule against a model's sizes and lowers it to a plan.
    pub fn plan(&self, cfg: &RuleConfig) -> Result<Plan> {
        check::check(&self.program, &self.source, &self.file, cfg)
            .map_err(|e| located(&self.file, &self.source, e))
    }

    /// Of `values`, those this rule declares as parameters, as overrides: how one set of
    /// widths is given to rules that declare different parameters.
    pub fn declared_values(
        &self,
        values: &[(&str, f64)],
    ) -> std::collections::BTreeMap<String, Const> {
        let declared = self.parameters();
        values
            .iter()
            .filter(|(name, _)| declared.iter().any(|(d, _)| d == name))
            .map(|&(name, v)| (name.to_string(), Const::Num(v)))
            .collect()
    }

    /// The declared parameters with their defaults as written.
    pub fn parameters(&self) -> Vec<(String, String)> {
        self.program.header.as_ref().map_or_else(Vec::new, |h| {
            h.params
                .iter()
                .map(|(n, e)| {
                    (
                        n.name.clone(),
                        self.source[e.span.start..e.span.end].to_string(),
                    )
                })
                .collect()
        })
    }
}
