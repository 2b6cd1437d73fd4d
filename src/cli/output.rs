//! What the command prints, and how it ends: standard output that a closed pipe
//! (`quartic forward … | head -c 10`) ends quietly instead of panicking, error text with its
//! control characters escaped, and the signals a scheduler sends (INT, TERM, HUP) turned into
//! a stop request that training answers by saving a checkpoint.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Set once a write to standard output found the reading end closed.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// The name standard output goes by in errors.
pub const STDOUT: &str = "standard output";

/// Writes one line to standard output. A closed pipe is remembered (see [`stdout_closed`]) and
/// returned as an error, so a subcommand stops writing and ends; the command then exits
/// quietly with the status a shell gives a program ended by SIGPIPE.
pub fn line(args: fmt::Arguments) -> quartic::Result<()> {
    write(format_args!("{args}\n"))
}

/// Writes to standard output without a newline (and flushes, for text as it is sampled).
pub fn write(args: fmt::Arguments) -> quartic::Result<()> {
    raw(args.to_string().as_bytes())
}

/// Writes bytes as they are (sampled text need not be UTF-8) and flushes.
pub fn raw(data: &[u8]) -> quartic::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(data).and_then(|()| out.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_CLOSED.store(true, Ordering::SeqCst);
        }
        quartic::Error::Io {
            path: STDOUT.into(),
            message: e.to_string(),
        }
    })
}

/// Whether standard output's reader went away.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// `println!` that ends the subcommand (with `?`) when standard output is closed.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Error text for the terminal: every line with its control characters escaped, so a file
/// name, a token or a rule's bytes cannot drive the user's terminal.
pub fn escaped(text: &str) -> String {
    text.split('\n')
        .map(quartic::diagnostic::escape_controls)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A stop request from Ctrl-C (SIGINT), SIGTERM or SIGHUP: `requested` turns true and `signal`
/// holds the signal's number. A second signal of the same kind ends the process at once.
pub struct StopSignals {
    pub requested: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl StopSignals {
    pub fn install() -> quartic::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let requested = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let fail = |e: std::io::Error| quartic::Error::Io {
                path: "signal handlers".into(),
                message: e.to_string(),
            };
            // registered first, so it sees the flag from a previous signal before it is set
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, requested.clone())
                .map_err(fail)?;
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize).map_err(fail)?;
            signal_hook::flag::register(sig, requested.clone()).map_err(fail)?;
        }
        Ok(Self { requested, signal })
    }

    /// The signal that asked to stop, if one did.
    pub fn received(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

/// The signal name for messages.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT (Ctrl-C)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
