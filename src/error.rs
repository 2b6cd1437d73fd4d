//! Library errors. Every fallible entry point checks its inputs up front and returns one of these,
//! naming what did not fit, instead of letting a tensor op panic deep inside dfdx.

use thiserror::Error;

/// Everything that can go wrong, each with what and where.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// Two tensors (or a tensor and a configuration) disagree about a size.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    Shape {
        /// What was being done.
        context: String,
        /// The size wanted.
        expected: String,
        /// The size found.
        got: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration for {context}: {message}")]
    Config {
        /// What it configures.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// A value that should be a number is not (a NaN or infinite loss, gradient or output):
    /// reported with where it appeared, never replaced by a number.
    #[error("not finite: {0}")]
    NotFinite(String),
    /// A device error surfaced by dfdx (allocation failure, CUDA error).
    #[error("device error: {0}")]
    Device(String),
    /// A rule program that does not check: located, with the source line and a hint.
    #[error("{0}")]
    Rule(Box<crate::diagnostic::Diagnostic>),
    /// Reading or writing a file (fixtures, checkpoints).
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A run whose memory estimate exceeds the limit, refused before anything was allocated.
    #[error(
        "{what} needs about {needed} of memory ({breakdown}), more than the {limit}; \
         make it smaller, or raise the limit with --max-memory SIZE (or --max-memory unlimited)"
    )]
    TooLarge {
        /// What was refused.
        what: String,
        /// Its estimate.
        needed: String,
        /// The estimate's parts.
        breakdown: String,
        /// The limit.
        limit: String,
    },
}

/// A result whose error is an [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Shape`].
    pub fn shape(context: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape {
            context: context.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// A [`Error::Config`].
    pub fn config(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            context: context.into(),
            message: message.into(),
        }
    }

    /// The same error, located: `place` (say, a rule's file and line) leads its context.
    /// Errors that already name their place (a rule diagnostic, a file) are returned as they are.
    pub fn within(self, place: &str) -> Self {
        match self {
            Error::Shape {
                context,
                expected,
                got,
            } => Error::Shape {
                context: format!("{place}: {context}"),
                expected,
                got,
            },
            Error::Config { context, message } => Error::Config {
                context: format!("{place}: {context}"),
                message,
            },
            Error::NotFinite(m) => Error::NotFinite(format!("{place}: {m}")),
            Error::Device(m) => Error::Device(format!("{place}: {m}")),
            Error::TooLarge {
                what,
                needed,
                breakdown,
                limit,
            } => Error::TooLarge {
                what: format!("{place}: {what}"),
                needed,
                breakdown,
                limit,
            },
            located @ (Error::Rule(_) | Error::Io { .. }) => located,
        }
    }
}
