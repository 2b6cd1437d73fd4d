//! Memory budgets: how much this process may use (what the system says is available, or a
//! limit the user sets), and the check that refuses a run whose estimate does not fit before
//! anything is allocated. The estimates themselves come from the layers that know the shapes
//! (`models::footprint`).

use crate::error::{Error, Result};
use crate::files::bytes;

/// An estimate of what a run needs, part by part (bytes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Each part and its bytes.
    pub parts: Vec<(String, u64)>,
}

impl Estimate {
    /// Adds a part.
    pub fn add(&mut self, what: impl Into<String>, amount: u64) {
        self.parts.push((what.into(), amount));
    }
    /// Bytes of all parts.
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }
    /// `parameters 1.2 GiB + activations 3.4 GiB`.
    pub fn breakdown(&self) -> String {
        self.parts
            .iter()
            .filter(|(_, b)| *b > 0)
            .map(|(w, b)| format!("{w} {}", bytes(*b)))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// How much memory a run may take.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Limit {
    /// What the system reports available when the run starts (the default).
    #[default]
    Available,
    /// A number of bytes the user gave.
    Bytes(u64),
    /// No check (the user's explicit choice).
    Unlimited,
}

impl std::str::FromStr for Limit {
    type Err = String;
    /// `available`, `unlimited`, or a size: `512MiB`, `8G`, `1.5GiB`, `2000000000`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "available" | "auto" => return Ok(Limit::Available),
            "unlimited" | "none" | "off" => return Ok(Limit::Unlimited),
            _ => {}
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let x: f64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size (e.g. 8GiB, 512MiB, unlimited)"))?;
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" | "kib" => 1024.0,
            "m" | "mb" | "mib" => 1024.0 * 1024.0,
            "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
            "t" | "tb" | "tib" => 1024.0f64.powi(4),
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        let n = x * scale;
        if !n.is_finite() || n < 1.0 || n > u64::MAX as f64 {
            return Err(format!("`{s}` is not a usable size"));
        }
        Ok(Limit::Bytes(n as u64))
    }
}

impl Limit {
    /// The number of bytes, `None` when unlimited or when the system does not say.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Available => available(),
            Limit::Bytes(b) => Some(b),
            Limit::Unlimited => None,
        }
    }

    /// Refuses `estimate` for `what` ("training", "this forward pass") when it exceeds the limit.
    pub fn check(self, what: &str, estimate: &Estimate) -> Result<()> {
        let Some(limit) = self.bytes() else {
            return Ok(());
        };
        let needed = estimate.total();
        if needed <= limit {
            return Ok(());
        }
        let source = match self {
            Limit::Available => "available now",
            _ => "allowed by --max-memory",
        };
        Err(Error::TooLarge {
            what: what.to_string(),
            needed: bytes(needed),
            breakdown: estimate.breakdown(),
            limit: format!("{} {source}", bytes(limit)),
        })
    }
}

/// The memory this process could still take: the system's available memory, and the control
/// group's remaining allowance where one is set (a container or a scheduler's job).
pub fn available() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let group = cgroup_remaining();
    match (system, group) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The control group's limit less what its processes hold in anonymous memory (the page
/// cache it also counts is given back under pressure: after a build it can fill the group).
fn cgroup_remaining() -> Option<u64> {
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let stat = |p: &str, key: &str| -> Option<u64> {
        std::fs::read_to_string(p).ok()?.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    };
    // cgroup v2, then v1; "max" (no limit) does not parse, and v1 says "no limit" with a
    // huge number
    let (limit, used) = match read("/sys/fs/cgroup/memory.max") {
        Some(limit) => (
            limit,
            stat("/sys/fs/cgroup/memory.stat", "anon")
                .or_else(|| read("/sys/fs/cgroup/memory.current"))?,
        ),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            stat("/sys/fs/cgroup/memory/memory.stat", "total_rss")
                .or_else(|| read("/sys/fs/cgroup/memory/memory.usage_in_bytes"))?,
        ),
    };
    (limit < 1 << 60).then(|| limit.saturating_sub(used))
}

/// The most bytes of a file whose contents are held in memory several times over (a
/// checkpoint: its bytes, the decoded values, the model): a quarter of what is available, at
/// least 64 MiB, 16 GiB where the system does not say.
pub fn file_cap() -> u64 {
    available().map_or(16 << 30, |a| (a / 4).max(64 << 20))
}
