//! Rule parameters: declared defaults, the configuration's overrides, in order.

use super::*;

impl<'a> Checker<'a> {
    pub(super) fn resolve_params(&mut self, program: &Program, header_span: Span) -> Checked<()> {
        let decls: &[(Ident, Expr)] = program.header.as_ref().map_or(&[], |h| h.params.as_slice());
        let declared: std::collections::HashSet<&str> =
            decls.iter().map(|(d, _)| d.name.as_str()).collect();
        let overrides: HashMap<&str, &Const> = self
            .cfg
            .overrides
            .iter()
            .map(|(n, v)| (n.as_str(), v))
            .collect();
        for (name, value) in &self.cfg.overrides {
            if let Const::Num(x) = value {
                if !x.is_finite() {
                    return Err(RuleError::new(
                        header_span,
                        format!("the configuration sets `{name}` to {x}, not a finite number"),
                    ));
                }
            }
            if !declared.contains(name.as_str()) {
                let known: Vec<&str> = decls.iter().map(|(d, _)| d.name.as_str()).collect();
                let err = RuleError::new(
                    header_span,
                    format!("the configuration sets `{name}`, which this rule does not declare"),
                );
                return Err(match closest(name, known.iter().copied()) {
                    Some(c) => err.hint(format!("did you mean `{c}`?")),
                    None => err.hint(format!("its parameters: {}", known.join(", "))),
                });
            }
        }
        for (name, default) in decls {
            if RESERVED.contains(&name.name.as_str()) || builtins::function(&name.name).is_some() {
                return Err(RuleError::new(
                    name.span,
                    format!(
                        "`{}` is a built-in name and cannot be a parameter",
                        name.name
                    ),
                ));
            }
            if self.param_index.contains_key(&name.name) {
                return Err(RuleError::new(
                    name.span,
                    format!("parameter `{}` is declared twice", name.name),
                ));
            }
            let default_value = match self.expr(default)? {
                Value::Num(x) => Const::Num(x),
                Value::Word(w) => Const::Word(w),
                Value::Tensor(_) => {
                    return Err(RuleError::new(
                        default.span,
                        "a parameter's default must be a number or a word",
                    ))
                }
            };
            let value = match overrides.get(name.name.as_str()) {
                // a word where the rule expects a number is the setting's mistake, not the rule's
                Some(Const::Word(w)) if matches!(default_value, Const::Num(_)) => {
                    return Err(RuleError::new(
                        name.span,
                        format!(
                            "`{}` is a number (default {default_value}), but the configuration \
                             sets it to the word `{w}`",
                            name.name
                        ),
                    )
                    .hint(format!(
                        "set a number: `--set {}={default_value}` (or in the config file)",
                        name.name
                    )))
                }
                Some(&v) => v.clone(),
                None => default_value,
            };
            self.param_index
                .insert(name.name.clone(), self.params.len());
            self.params.push((name.name.clone(), value));
        }
        Ok(())
    }
}
