//! What `sentinel`, `sentinel-cp` and `sentinelctl` share about telling
//! operators what they do: the Prometheus recorder and its upkeep
//! ([`metrics`]), logging that follows the live config ([`logging`]),
//! OpenTelemetry trace export and context propagation ([`trace`]), and the
//! process clock ([`clock`]).
//!
//! Each binary keeps its own list of metric names and its own histogram
//! buckets; the mechanics live here once.

pub mod clock;
pub mod logging;
pub mod metrics;
pub mod trace;
