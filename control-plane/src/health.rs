//! Fleet health: the per-target reports proxies send, combined by quorum
//! ([`aggregate`], the one function behind `GET /v1/health` and behind the
//! pushes), and turned into marks that act ([`Marks`]): for upstreams with
//! `fleet-health #true`, a target the fleet-wide quorum marks down is
//! pushed to every proxy as `TARGET_HEALTH_UNHEALTHY` in the upstream's
//! `Endpoints` (see `Fleet::rebuild`).
//!
//! The verdict is per target: fleet-wide (unhealthy when at least
//! `quorum_percent` of the proxies reporting it say so) with per-region
//! counts. The push uses the fleet-wide verdict (one `Endpoints` for every
//! proxy). Hysteresis: a target is marked down only after the verdict said
//! down for [`MARK_DOWN_AFTER`], and up again only after it said up for
//! [`MARK_UP_AFTER`]; a verdict that flips back within the window resets
//! the clock, so flapping reports cause no pushes. Time is tokio's (tests
//! pause it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{Fleet, Reported};

/// How long the quorum must say "down" before a target is pushed unhealthy.
pub const MARK_DOWN_AFTER: Duration = Duration::from_secs(3);
/// How long the quorum must say "up" before a marked target is pushed healthy.
pub const MARK_UP_AFTER: Duration = Duration::from_secs(10);
/// How often the reports are evaluated.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// One target's reports combined.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub healthy_reports: u64,
    pub unhealthy_reports: u64,
    /// Region → (healthy, unhealthy) reports.
    pub regions: BTreeMap<String, (u64, u64)>,
    /// Up to 5 recent errors, `node: error`.
    pub errors: Vec<String>,
    /// The proxies that report the target down (the first [`DOWN_LISTED`],
    /// by node id): node, region, since (Unix ms), last error.
    pub down_on: Vec<(String, String, i64, String)>,
    /// Fleet-wide: fewer than the quorum of reporting proxies say unhealthy.
    pub healthy: bool,
}

impl Verdict {
    pub fn reporting(&self) -> u64 {
        self.healthy_reports + self.unhealthy_reports
    }
}

/// Combines every proxy's latest report: (upstream, target) → verdict.
/// Proxies listed per target in [`Verdict::down_on`].
pub const DOWN_LISTED: usize = 50;

pub fn aggregate(
    reports: &HashMap<String, Reported>,
    quorum_percent: u32,
) -> BTreeMap<(String, String), Verdict> {
    let quorum = u64::from(quorum_percent.max(1));
    let mut nodes: Vec<&String> = reports.keys().collect();
    nodes.sort();
    let mut out: BTreeMap<(String, String), Verdict> = BTreeMap::new();
    for node in nodes {
        let report = &reports[node];
        for t in &report.targets {
            let v = out
                .entry((t.upstream.clone(), t.target.clone()))
                .or_default();
            let region = v.regions.entry(report.region.clone()).or_default();
            if t.healthy {
                v.healthy_reports += 1;
                region.0 += 1;
            } else {
                v.unhealthy_reports += 1;
                region.1 += 1;
                if !t.last_error.is_empty() && v.errors.len() < 5 {
                    v.errors.push(format!("{node}: {}", t.last_error));
                }
                if v.down_on.len() < DOWN_LISTED {
                    v.down_on.push((
                        node.clone(),
                        report.region.clone(),
                        i64::try_from(t.since_unix_ms).unwrap_or(i64::MAX),
                        t.last_error.clone(),
                    ));
                }
            }
        }
    }
    for v in out.values_mut() {
        v.healthy = v.unhealthy_reports * 100 < quorum * v.reporting();
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// What is pushed.
    down: bool,
    /// Since when the verdict disagrees with `down`.
    disagrees_since: Option<Instant>,
}

/// The targets pushed as unhealthy, with hysteresis.
#[derive(Debug, Default)]
pub struct Marks {
    marks: HashMap<(String, String), Mark>,
}

impl Marks {
    /// Feeds the current verdicts (`true` = down); targets not listed count
    /// as up. Returns whether the set of marked targets changed.
    pub fn observe(
        &mut self,
        down: impl IntoIterator<Item = ((String, String), bool)>,
        now: Instant,
    ) -> bool {
        let verdicts: HashMap<(String, String), bool> = down.into_iter().collect();
        for (key, is_down) in &verdicts {
            if *is_down {
                self.marks.entry(key.clone()).or_insert(Mark {
                    down: false,
                    disagrees_since: None,
                });
            }
        }
        let mut changed = false;
        self.marks.retain(|key, m| {
            let is_down = verdicts.get(key).copied().unwrap_or(false);
            if is_down == m.down {
                m.disagrees_since = None;
            } else {
                let since = *m.disagrees_since.get_or_insert(now);
                let hold = if is_down {
                    MARK_DOWN_AFTER
                } else {
                    MARK_UP_AFTER
                };
                if now.duration_since(since) >= hold {
                    m.down = is_down;
                    m.disagrees_since = None;
                    changed = true;
                }
            }
            // Forget targets that are up and agree.
            m.down || m.disagrees_since.is_some()
        });
        changed
    }

    /// Upstream → its targets pushed as unhealthy.
    pub fn down(&self) -> HashMap<String, BTreeSet<String>> {
        let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
        for ((u, t), m) in &self.marks {
            if m.down {
                out.entry(u.clone()).or_default().insert(t.clone());
            }
        }
        out
    }
}

/// Evaluates the fleet's reports every [`EVALUATE_EVERY`] and rebuilds the
/// effective configuration when the marked set changes.
pub fn spawn(fleet: Arc<Fleet>, quorum_percent: u32) {
    tokio::spawn(async move {
        let mut marks = Marks::default();
        let mut tick = tokio::time::interval(EVALUATE_EVERY);
        loop {
            tick.tick().await;
            let verdicts = aggregate(&fleet.health_reports(), quorum_percent);
            let changed = marks.observe(
                verdicts.into_iter().map(|(k, v)| (k, !v.healthy)),
                Instant::now(),
            );
            if changed {
                let down = marks.down();
                let n: usize = down.values().map(BTreeSet::len).sum();
                tracing::info!(targets = n, "fleet health marks changed");
                metrics::gauge!("sentinel_cp_fleet_health_marked_down").set(n as f64);
                fleet.set_marks(down);
                fleet.rebuild();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> (String, String) {
        ("api".to_string(), t.to_string())
    }

    fn down_now(m: &Marks) -> Vec<String> {
        m.down()
            .get("api")
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_is_marked_down_only_after_the_quorum_held_and_up_after_it_recovered() {
        let mut m = Marks::default();
        let start = Instant::now();
        assert!(!m.observe([(key("a"), true)], start));
        tokio::time::advance(MARK_DOWN_AFTER - Duration::from_millis(1)).await;
        assert!(!m.observe([(key("a"), true)], Instant::now()));
        assert!(down_now(&m).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(m.observe([(key("a"), true)], Instant::now()));
        assert_eq!(down_now(&m), vec!["a"]);
        // Recovery must hold MARK_UP_AFTER (reports gone count as up).
        assert!(!m.observe([], Instant::now()));
        tokio::time::advance(MARK_UP_AFTER - Duration::from_millis(1)).await;
        assert!(!m.observe([(key("a"), false)], Instant::now()));
        assert_eq!(down_now(&m), vec!["a"]);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(m.observe([(key("a"), false)], Instant::now()));
        assert!(down_now(&m).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_reports_cause_no_change() {
        let mut m = Marks::default();
        let mut changes = 0;
        // Down for 2 s, up for 1 s, for a minute: never down long enough.
        for second in 0..60 {
            let down = second % 3 != 2;
            if m.observe([(key("a"), down)], Instant::now()) {
                changes += 1;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(changes, 0);
        assert!(down_now(&m).is_empty());
        // Once marked, brief recoveries do not unmark it.
        for _ in 0..4 {
            m.observe([(key("a"), true)], Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(down_now(&m), vec!["a"]);
        for second in 0..60 {
            let down = second % 5 == 0;
            assert!(!m.observe([(key("a"), down)], Instant::now()));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(down_now(&m), vec!["a"]);
    }
}
