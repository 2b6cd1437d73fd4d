//! Tokens → syntax tree. Grammar (one statement per line; brackets continue lines):
//!
//! ```text
//! program   := header? statement*
//! header    := 'rule' NAME '(' (NAME '=' expr),* ')'
//! statement := (NAME ':')? ('let' indexed (',' indexed)* '=' expr | indexed ('=' | '+=') expr)
//!            | 'def' NAME '(' NAME,* ')' '=' expr
//! indexed   := NAME '[' NAME (',' NAME)* ']'
//! expr      := sum (('<' | '>' | '<=' | '>=') sum)?
//! sum       := term (('+' | '-') term)*
//! term      := unary (('*' | '/') unary)*
//! unary     := '-' unary | power
//! power     := atom ('**' unary)?
//! atom      := NUMBER | NAME | indexed | NAME ('[' NAME ']')? '(' arg,* ')' | '(' expr ')'
//!            | 'if' expr 'then' expr 'else' expr
//! arg       := (NAME ':')? expr ('->' expr)?
//! ```

use super::ast::*;
use super::lexer::{Tok, Token};
use crate::diagnostic::{Checked, RuleError, Span, MAX_ERRORS};

pub fn parse(tokens: &[Token]) -> Checked<Program> {
    let mut p = Parser {
        tokens,
        pos: 0,
        nesting: 0,
    };
    p.program()
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    /// Expressions being parsed inside one another (brackets, operands, arguments): bounded by
    /// `MAX_DEPTH` so that the parser's own recursion cannot overflow the stack.
    nesting: usize,
}

fn too_deep(span: Span) -> RuleError {
    RuleError::new(
        span,
        format!("this expression nests more than {MAX_DEPTH} levels deep"),
    )
    .hint("split it into several `let` bindings (a long sum: several partial sums)")
}

/// A syntax node with its height; refused when the tree grows taller than `MAX_DEPTH`.
fn node(kind: ExprKind, span: Span) -> Checked<Expr> {
    let height = kind.children_height() + 1;
    if height > MAX_DEPTH {
        return Err(too_deep(span));
    }
    Ok(Expr { kind, span, height })
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }
    fn peek_at(&self, ahead: usize) -> &Tok {
        let i = (self.pos + ahead).min(self.tokens.len() - 1);
        &self.tokens[i].tok
    }
    fn span(&self) -> Span {
        self.tokens[self.pos].span
    }
    fn prev_span(&self) -> Span {
        self.tokens[self.pos.saturating_sub(1)].span
    }
    fn bump(&mut self) -> &Token {
        let t = &self.tokens[self.pos];
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == tok {
            self.bump();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, tok: Tok, what: &str) -> Checked<Span> {
        if self.peek() == &tok {
            Ok(self.bump().span)
        } else {
            Err(self.unexpected(what))
        }
    }
    fn unexpected(&self, what: &str) -> RuleError {
        let err = RuleError::new(
            self.span(),
            format!("expected {what}, found {}", self.peek().describe()),
        );
        if self.peek() == &Tok::Newline && what == "an expression" {
            err.hint(
                "a statement ends with its line; only brackets continue it onto the next: \
                 `nodes[i] += (a +` … `b)`",
            )
        } else {
            err
        }
    }
    fn ident(&mut self, what: &str) -> Checked<Ident> {
        match self.peek().clone() {
            Tok::Ident(name) => {
                let span = self.bump().span;
                Ok(Ident { name, span })
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn keyword(&mut self, word: &str) -> Checked<()> {
        match self.peek() {
            Tok::Ident(w) if w == word => {
                self.bump();
                Ok(())
            }
            _ => Err(self.unexpected(&format!("`{word}`"))),
        }
    }

    fn program(&mut self) -> Checked<Program> {
        while self.eat(&Tok::Newline) {}
        let header = if matches!(self.peek(), Tok::Ident(s) if s == "rule") {
            Some(self.header()?)
        } else {
            None
        };
        let mut statements = Vec::new();
        let mut errors = Vec::new();
        loop {
            while self.eat(&Tok::Newline) {}
            if self.peek() == &Tok::Eof {
                break;
            }
            match self.statement() {
                Ok(s) => statements.push(s),
                Err(e) => {
                    // report it and go on at the next line (brackets never span a line end
                    // the lexer emits), up to the most errors a file reports
                    errors.push(e);
                    if errors.len() >= MAX_ERRORS {
                        break;
                    }
                    let cut_short = self.peek() == &Tok::Newline;
                    while !matches!(self.peek(), Tok::Newline | Tok::Eof) {
                        self.bump();
                    }
                    // a statement that ended early (`a +` at a line's end) was probably meant
                    // to go on: its next line is the rest of it, not a statement of its own
                    if cut_short
                        && errors
                            .last()
                            .is_some_and(|e| e.message.contains("found end of line"))
                    {
                        self.bump();
                        while !matches!(self.peek(), Tok::Newline | Tok::Eof) {
                            self.bump();
                        }
                    }
                }
            }
        }
        match RuleError::all(errors) {
            Some(e) => Err(e),
            None => Ok(Program { header, statements }),
        }
    }

    fn header(&mut self) -> Checked<Header> {
        self.bump();
        let name = self.ident("the rule's name after `rule`")?;
        let mut params = Vec::new();
        if self.eat(&Tok::LParen) {
            while self.peek() != &Tok::RParen {
                let pname = self.ident("a parameter name")?;
                if self.peek() != &Tok::Assign {
                    return Err(self.unexpected("`=` and a default value").hint(format!(
                        "every parameter has a default: `{} = 8`",
                        pname.name
                    )));
                }
                self.bump();
                let value = self.expr()?;
                params.push((pname, value));
                if !self.eat(&Tok::Comma) && self.peek() != &Tok::RParen {
                    return Err(self.unexpected("`,` or `)` in the parameter list"));
                }
            }
            self.bump();
        }
        self.end_of_statement()?;
        Ok(Header { name, params })
    }

    fn end_of_statement(&mut self) -> Checked<()> {
        match self.peek() {
            Tok::Newline | Tok::Eof => {
                self.eat(&Tok::Newline);
                Ok(())
            }
            _ => Err(self
                .unexpected("the end of the statement")
                .hint("one statement per line; long calls may continue inside brackets")),
        }
    }

    fn statement(&mut self) -> Checked<Statement> {
        let start = self.span();
        let label = if matches!(self.peek(), Tok::Ident(_)) && self.peek_at(1) == &Tok::Colon {
            let l = self.ident("a label")?;
            self.bump();
            Some(l)
        } else {
            None
        };
        let kind = if matches!(self.peek(), Tok::Ident(s) if s == "def") {
            if let Some(l) = &label {
                return Err(
                    RuleError::new(l.span, "a function definition takes no label")
                        .hint("label the statements that call it"),
                );
            }
            self.bump();
            self.def()?
        } else if matches!(self.peek(), Tok::Ident(s) if s == "let") {
            self.bump();
            let mut bindings = vec![self.indexed("a name with indices, like `x[i]`")?];
            while self.eat(&Tok::Comma) {
                bindings.push(self.indexed("a second name with indices")?);
            }
            if self.peek() != &Tok::Assign {
                return Err(self.unexpected("`=`"));
            }
            self.bump();
            let value = self.expr()?;
            StatementKind::Let { bindings, value }
        } else {
            let target = self.indexed("a statement: `let x[i] = ...` or `nodes[i] += ...`")?;
            let accumulate = match self.peek() {
                Tok::PlusAssign => true,
                Tok::Assign => false,
                _ => return Err(self.unexpected("`=` or `+=`")),
            };
            self.bump();
            let value = self.expr()?;
            StatementKind::Update {
                target,
                accumulate,
                value,
            }
        };
        let span = start.to(self.prev_span());
        self.end_of_statement()?;
        Ok(Statement { label, kind, span })
    }

    /// `def name(a, b) = expr`, after `def`.
    fn def(&mut self) -> Checked<StatementKind> {
        let name = self.ident("the function's name after `def`")?;
        self.expect(Tok::LParen, "`(` and the function's parameters")?;
        let mut params = Vec::new();
        while self.peek() != &Tok::RParen {
            params.push(self.ident("a parameter name")?);
            if !self.eat(&Tok::Comma) && self.peek() != &Tok::RParen {
                return Err(self.unexpected("`,` or `)` in the parameter list"));
            }
        }
        self.bump();
        if self.peek() != &Tok::Assign {
            return Err(self
                .unexpected("`=` and the function's body")
                .hint(format!("write `def {}(x) = ...`", name.name)));
        }
        self.bump();
        let body = self.expr()?;
        Ok(StatementKind::Def { name, params, body })
    }

    fn indexed(&mut self, what: &str) -> Checked<Indexed> {
        let name = self.ident(what)?;
        if self.peek() != &Tok::LBracket {
            return Err(self.unexpected("`[` and indices").hint(format!(
                "tensors are written with their indices: `{}[i, j]`",
                name.name
            )));
        }
        let indices = self.index_list()?;
        Ok(Indexed {
            span: name.span.to(self.prev_span()),
            name,
            indices,
        })
    }

    fn index_list(&mut self) -> Checked<Vec<Ident>> {
        self.expect(Tok::LBracket, "`[`")?;
        let mut out = vec![self.ident("an index name")?];
        while self.eat(&Tok::Comma) {
            out.push(self.ident("an index name")?);
        }
        self.expect(Tok::RBracket, "`]` after the indices")?;
        Ok(out)
    }

    fn expr(&mut self) -> Checked<Expr> {
        self.nested(self.span(), Self::comparison)
    }

    /// `a < b`: at most one comparison (they do not chain).
    fn comparison(&mut self) -> Checked<Expr> {
        let lhs = self.sum()?;
        let Some(op) = self.comparison_op() else {
            return Ok(lhs);
        };
        self.bump();
        let rhs = self.sum()?;
        if self.comparison_op().is_some() {
            return Err(RuleError::new(self.span(), "comparisons do not chain")
                .hint("multiply them: `(a < b) * (b < c)`"));
        }
        binary(op, lhs, rhs)
    }

    fn comparison_op(&self) -> Option<BinOp> {
        match self.peek() {
            Tok::Less => Some(BinOp::Less),
            Tok::Greater => Some(BinOp::Greater),
            Tok::LessEq => Some(BinOp::LessEq),
            Tok::GreaterEq => Some(BinOp::GreaterEq),
            _ => None,
        }
    }

    /// Parses with `parse` one level deeper, refusing (at `span`) past `MAX_DEPTH`.
    fn nested(&mut self, span: Span, parse: fn(&mut Self) -> Checked<Expr>) -> Checked<Expr> {
        if self.nesting >= MAX_DEPTH {
            return Err(too_deep(span));
        }
        self.nesting += 1;
        let e = parse(self);
        self.nesting -= 1;
        e
    }

    fn sum(&mut self) -> Checked<Expr> {
        let mut lhs = self.term()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.term()?;
            lhs = binary(op, lhs, rhs)?;
        }
    }

    fn term(&mut self) -> Checked<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.unary()?;
            lhs = binary(op, lhs, rhs)?;
        }
    }

    fn unary(&mut self) -> Checked<Expr> {
        if self.peek() == &Tok::Minus {
            let start = self.bump().span;
            // `- - - x` and `a ** b ** c` recurse here: count them as nesting
            let inner = self.nested(start, Self::unary)?;
            let span = start.to(inner.span);
            return node(ExprKind::Neg(Box::new(inner)), span);
        }
        let base = self.atom()?;
        if self.eat(&Tok::Power) {
            let exponent = self.nested(self.prev_span(), Self::unary)?;
            return binary(BinOp::Pow, base, exponent);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Checked<Expr> {
        let start = self.span();
        match self.peek().clone() {
            Tok::Number(x) => {
                self.bump();
                node(ExprKind::Number(x), start)
            }
            Tok::LParen => {
                self.bump();
                let inner = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(Expr {
                    span: start.to(self.prev_span()),
                    ..inner
                })
            }
            Tok::Ident(w) if w == "if" => {
                self.bump();
                let cond = self.expr()?;
                self.keyword("then")?;
                let yes = self.expr()?;
                self.keyword("else")?;
                let no = self.expr()?;
                let span = start.to(no.span);
                node(
                    ExprKind::If(Box::new(cond), Box::new(yes), Box::new(no)),
                    span,
                )
            }
            Tok::Ident(_) => {
                let name = self.ident("a name")?;
                let indices = if self.peek() == &Tok::LBracket {
                    Some(self.index_list()?)
                } else {
                    None
                };
                if self.peek() == &Tok::LParen {
                    let over = match indices {
                        None => None,
                        Some(list) if list.len() == 1 => list.into_iter().next(),
                        Some(list) => {
                            return Err(RuleError::new(
                                list[1].span,
                                format!("`{}` runs over one index", name.name),
                            )
                            .hint(format!("write `{}[{}](...)`", name.name, list[0].name)))
                        }
                    };
                    let args = self.call_args()?;
                    return node(
                        ExprKind::Call {
                            func: name,
                            over,
                            args,
                        },
                        start.to(self.prev_span()),
                    );
                }
                let span = start.to(self.prev_span());
                node(
                    match indices {
                        Some(indices) => ExprKind::Index(Indexed {
                            name,
                            indices,
                            span,
                        }),
                        None => ExprKind::Name(name),
                    },
                    span,
                )
            }
            _ => Err(self.unexpected("an expression")),
        }
    }

    fn call_args(&mut self) -> Checked<Vec<Arg>> {
        self.expect(Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        while self.peek() != &Tok::RParen {
            let start = self.span();
            let name = if matches!(self.peek(), Tok::Ident(_)) && self.peek_at(1) == &Tok::Colon {
                let n = self.ident("an option name")?;
                self.bump();
                Some(n)
            } else {
                None
            };
            let mut value = self.expr()?;
            if self.eat(&Tok::Arrow) {
                let key = self.expr()?;
                let span = value.span.to(key.span);
                value = node(ExprKind::Arrow(Box::new(value), Box::new(key)), span)?;
            }
            args.push(Arg {
                name,
                value,
                span: start.to(self.prev_span()),
            });
            if !self.eat(&Tok::Comma) && self.peek() != &Tok::RParen {
                return Err(self.unexpected("`,` or `)` in the argument list"));
            }
        }
        self.bump();
        Ok(args)
    }
}

fn binary(op: BinOp, lhs: Expr, rhs: Expr) -> Checked<Expr> {
    let span = lhs.span.to(rhs.span);
    node(ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span)
}
