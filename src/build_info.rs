//! Which build this is: the crate's version and the git commit it was built from (`-dirty`
//! when tracked files differed from it; `unknown` outside a git checkout).

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit of the sources this was built from.
pub const GIT_COMMIT: &str = env!("QUARTIC_GIT_COMMIT");

/// `quartic-transformer 0.1.0 (commit 1234abcd…)`.
pub fn describe() -> String {
    format!("quartic-transformer {VERSION} (commit {GIT_COMMIT})")
}
