//! A process-wide monotonic clock in milliseconds, on tokio's time so that
//! timer-driven logic (breakers, ejection, budgets) can be tested with
//! `tokio::time::pause()` and `advance()` instead of sleeps.

use std::sync::OnceLock;

static START: OnceLock<tokio::time::Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (never 0 after start).
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_millis() as u64
        + 1
}

/// Wall-clock Unix milliseconds, for reports to operators.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
