//! Source text → tokens. Newlines end statements except inside brackets, so a long call may
//! span lines; `#` starts a comment that runs to the end of the line.

use crate::diagnostic::{Checked, RuleError, Span};

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Number(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Assign,
    PlusAssign,
    Arrow,
    Plus,
    Minus,
    Star,
    Slash,
    Power,
    /// `<`, `>`, `<=`, `>=`.
    Less,
    Greater,
    LessEq,
    GreaterEq,
    Newline,
    Eof,
}

impl Tok {
    /// How the token reads in a message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Number(x) => format!("number `{x}`"),
            Tok::Newline => "end of line".into(),
            Tok::Eof => "end of file".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Colon => ":",
            Tok::Assign => "=",
            Tok::PlusAssign => "+=",
            Tok::Arrow => "->",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Power => "**",
            Tok::Less => "<",
            Tok::Greater => ">",
            Tok::LessEq => "<=",
            Tok::GreaterEq => ">=",
            _ => "",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

pub fn lex(src: &str) -> Checked<Vec<Token>> {
    let bytes = src.as_bytes();
    let mut out: Vec<Token> = Vec::new();
    let mut depth: Vec<(u8, Span)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let one = |tok| Token {
            tok,
            span: Span::new(start, start + 1),
        };
        match c {
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'\n' => {
                if depth.is_empty() && out.last().is_some_and(|t| t.tok != Tok::Newline) {
                    out.push(one(Tok::Newline));
                }
                i += 1;
            }
            b'(' | b'[' => {
                depth.push((c, Span::new(i, i + 1)));
                out.push(one(if c == b'(' {
                    Tok::LParen
                } else {
                    Tok::LBracket
                }));
                i += 1;
            }
            b')' | b']' => {
                let want = if c == b')' { b'(' } else { b'[' };
                match depth.pop() {
                    Some((open, _)) if open == want => {}
                    Some((open, _)) => {
                        let close = if open == b'(' { ')' } else { ']' };
                        return Err(RuleError::new(
                            Span::new(i, i + 1),
                            format!("`{}` closes a `{}`", c as char, open as char),
                        )
                        .hint(format!("close the `{}` with `{close}` first", open as char)));
                    }
                    None => {
                        return Err(RuleError::new(
                            Span::new(i, i + 1),
                            format!("unmatched `{}`", c as char),
                        ))
                    }
                }
                out.push(one(if c == b')' {
                    Tok::RParen
                } else {
                    Tok::RBracket
                }));
                i += 1;
            }
            b',' => {
                out.push(one(Tok::Comma));
                i += 1;
            }
            b':' => {
                out.push(one(Tok::Colon));
                i += 1;
            }
            b'=' => {
                out.push(one(Tok::Assign));
                i += 1;
            }
            b'+' if bytes.get(i + 1) == Some(&b'=') => {
                out.push(Token {
                    tok: Tok::PlusAssign,
                    span: Span::new(i, i + 2),
                });
                i += 2;
            }
            b'<' | b'>' => {
                let eq = bytes.get(i + 1) == Some(&b'=');
                let tok = match (bytes[i], eq) {
                    (b'<', false) => Tok::Less,
                    (b'<', true) => Tok::LessEq,
                    (_, false) => Tok::Greater,
                    (_, true) => Tok::GreaterEq,
                };
                let len = 1 + usize::from(eq);
                out.push(Token {
                    tok,
                    span: Span::new(i, i + len),
                });
                i += len;
            }
            b'-' if bytes.get(i + 1) == Some(&b'>') => {
                out.push(Token {
                    tok: Tok::Arrow,
                    span: Span::new(i, i + 2),
                });
                i += 2;
            }
            b'*' if bytes.get(i + 1) == Some(&b'*') => {
                out.push(Token {
                    tok: Tok::Power,
                    span: Span::new(i, i + 2),
                });
                i += 2;
            }
            b'+' => {
                out.push(one(Tok::Plus));
                i += 1;
            }
            b'-' => {
                out.push(one(Tok::Minus));
                i += 1;
            }
            b'*' => {
                out.push(one(Tok::Star));
                i += 1;
            }
            b'/' => {
                out.push(one(Tok::Slash));
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                // exponent: 1e-5, 2.5E3
                if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                    let mut j = i + 1;
                    if j < bytes.len() && (bytes[j] == b'-' || bytes[j] == b'+') {
                        j += 1;
                    }
                    if j < bytes.len() && bytes[j].is_ascii_digit() {
                        i = j;
                        while i < bytes.len() && bytes[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                let text = &src[start..i];
                let value: f64 = text.parse().map_err(|_| {
                    RuleError::new(Span::new(start, i), format!("`{text}` is not a number"))
                })?;
                if !value.is_finite() {
                    return Err(RuleError::new(
                        Span::new(start, i),
                        format!("`{text}` is too large for a number"),
                    ));
                }
                out.push(Token {
                    tok: Tok::Number(value),
                    span: Span::new(start, i),
                });
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(src[start..i].to_string()),
                    span: Span::new(start, i),
                });
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let err = RuleError::new(
                    Span::new(i, i + ch.len_utf8()),
                    format!("unexpected character `{ch}`"),
                );
                return Err(match ch {
                    '^' => err.hint("powers are written `**`: `x ** 2`"),
                    _ => err,
                });
            }
        }
    }
    if let Some((open, span)) = depth.pop() {
        return Err(RuleError::new(
            span,
            format!("`{}` is never closed", open as char),
        ));
    }
    if out.last().is_some_and(|t| t.tok != Tok::Newline) {
        out.push(Token {
            tok: Tok::Newline,
            span: Span::new(src.len(), src.len()),
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(src.len(), src.len()),
    });
    Ok(out)
}
