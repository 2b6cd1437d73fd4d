//! Errors in rule programs: a kind of data (what, where, a hint) rendered in one place, so every
//! message looks the same and points at the source line with a caret.

use std::fmt;

/// A byte range in a rule's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// The first byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The bytes `start..end`.
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// One error in a rule program, already located: file, line and column (1-based), the source
/// line, the caret's width, the message and an optional hint. The texts are stored with their
/// control characters escaped (a rule's bytes must not drive the user's terminal), and the
/// caret is placed under the escaped line.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The rule file.
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub col: usize,
    /// How many characters the caret underlines.
    pub width: usize,
    /// The line's text, escaped for a terminal.
    pub source_line: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is advice.
    pub hint: Option<String>,
    /// Where the caret starts in `source_line`, in characters.
    caret_start: usize,
    /// The file's further errors, in order (at most [`MAX_ERRORS`] in all).
    pub also: Vec<Diagnostic>,
}

/// The most errors reported from one rule file.
pub const MAX_ERRORS: usize = 10;

/// `text` with control characters other than tab written as escapes (`\u{1b}`).
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Diagnostic {
    /// Locates `span` in `source` (named `file`).
    pub fn at(file: &str, source: &str, span: Span, message: String, hint: Option<String>) -> Self {
        let start = span.start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |p| p + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |p| start + p);
        let line = source[..start].matches('\n').count() + 1;
        let col = source[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end.max(start));
        let width = escape_controls(&source[start..end]).chars().count().max(1);
        Self {
            file: escape_controls(file),
            line,
            col,
            width,
            source_line: escape_controls(source[line_start..line_end].trim_end()),
            message: escape_controls(&message),
            hint: hint.as_deref().map(escape_controls),
            caret_start: escape_controls(&source[line_start..start]).chars().count(),
            also: Vec::new(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gutter = self.line.to_string().len();
        let pad = " ".repeat(gutter);
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.col)?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        let lead: String = self
            .source_line
            .chars()
            .take(self.caret_start)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {lead}{}", "^".repeat(self.width))?;
        if let Some(hint) = &self.hint {
            write!(f, "\n{pad} = hint: {hint}")?;
        }
        for more in &self.also {
            write!(f, "\n\n{more}")?;
        }
        if !self.also.is_empty() {
            let n = 1 + self.also.len();
            let stop = if n >= MAX_ERRORS {
                " (checking stopped there)"
            } else {
                ""
            };
            write!(f, "\n\n{n} errors in {}{stop}", self.file)?;
        }
        Ok(())
    }
}

/// An error before it is located: the span and what to say.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleError {
    /// Where in the source.
    pub span: Span,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is advice.
    pub hint: Option<String>,
    /// Further errors of the same file, in order.
    pub also: Vec<RuleError>,
}

impl RuleError {
    /// An error at `span` with no hint.
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            hint: None,
            also: Vec::new(),
        }
    }

    /// The first of `errors` carrying the others (at most [`MAX_ERRORS`] in all); `None`
    /// when there are none.
    pub fn all(mut errors: Vec<RuleError>) -> Option<RuleError> {
        errors.truncate(MAX_ERRORS);
        let mut rest = errors.into_iter();
        let mut first = rest.next()?;
        first.also.extend(rest);
        Some(first)
    }
    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A result of the rule passes.
pub type Checked<T> = std::result::Result<T, RuleError>;
