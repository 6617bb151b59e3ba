//! The health gates: does the stage look worse than the rest of the fleet,
//! or than itself before the new version?
//!
//! Inputs are what proxies already report on the health stream, kept per
//! node by `Fleet` as [`Sample`]s: per-route requests, 5xx answers and p99
//! over one report interval, the upstream targets they see as unhealthy,
//! and the version they ran while counting. Three groups are compared:
//!
//! - **stage** — admitted nodes' samples taken on the new version since the
//!   stage started;
//! - **rest** — samples of nodes not admitted, on the previous version,
//!   over the same window;
//! - **baseline** — admitted nodes' samples on the previous version before
//!   the stage started (kept in memory: after a control-plane restart only
//!   the rest of the fleet is the reference).
//!
//! The reference is the worse of rest and baseline (a fleet-wide incident
//! that also hits the rest never blames the stage); each gate judges only
//! once the stage has served `min_requests`. Pure: no clock, no I/O.

use std::collections::{BTreeMap, HashSet};

use super::plan::Gates;

/// One health report of one node, as the gates use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at_unix_ms: i64,
    pub version: i64,
    pub requests: u64,
    pub errors_5xx: u64,
    /// Request-weighted p99 over the node's routes (ms).
    pub p99_ms: u64,
    /// Targets of health-checked upstreams this node reported, and how many
    /// of them unhealthy.
    pub targets: u64,
    pub unhealthy: u64,
}

/// Samples added up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Request-weighted mean of the samples' p99.
    pub p99_ms: u64,
    pub targets: u64,
    pub unhealthy: u64,
    pub samples: u64,
}

impl Totals {
    pub fn add<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Totals {
        let mut t = Totals::default();
        let mut weighted: u128 = 0;
        for s in samples {
            t.requests += s.requests;
            t.errors_5xx += s.errors_5xx;
            weighted += u128::from(s.p99_ms) * u128::from(s.requests);
            t.targets += s.targets;
            t.unhealthy += s.unhealthy;
            t.samples += 1;
        }
        if t.requests > 0 {
            t.p99_ms = (weighted / u128::from(t.requests)) as u64;
        }
        t
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }

    pub fn unhealthy_share(&self) -> f64 {
        if self.targets == 0 {
            0.0
        } else {
            self.unhealthy as f64 / self.targets as f64
        }
    }
}

/// A gate that failed, with what a person needs to judge it.
#[derive(Debug, Clone, PartialEq)]
pub struct GateFailure {
    /// `ack`, `error-rate`, `latency`, `upstream-health`, `progress-deadline`.
    pub gate: &'static str,
    pub node: Option<String>,
    pub detail: String,
}

/// What the gates look at for one stage.
pub struct Window<'a> {
    pub samples: &'a BTreeMap<String, Vec<Sample>>,
    pub admitted: &'a HashSet<String>,
    pub from_version: i64,
    pub to_version: i64,
    /// When the stage started (its window begins here).
    pub since_unix_ms: i64,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// A window's samples split into the three groups (see the module docs).
struct Groups<'a> {
    stage_by_node: BTreeMap<&'a str, Totals>,
    stage: Totals,
    rest: Totals,
    baseline: Totals,
    /// Latest sample of each node in the window (upstream health is a state,
    /// not a count: only the newest report says it).
    stage_health: Totals,
    rest_health: Totals,
    baseline_health: Totals,
}

fn groups<'a>(w: &Window<'a>) -> Groups<'a> {
    let mut stage_by_node: BTreeMap<&str, Totals> = BTreeMap::new();
    let mut stage = Vec::new();
    let mut rest = Vec::new();
    let mut baseline = Vec::new();
    let mut stage_latest = Vec::new();
    let mut rest_latest = Vec::new();
    let mut baseline_latest = Vec::new();
    for (node, samples) in w.samples {
        let admitted = w.admitted.contains(node);
        let mut mine = Vec::new();
        for s in samples {
            match (admitted, s.at_unix_ms >= w.since_unix_ms) {
                (true, true) if s.version == w.to_version => mine.push(s),
                (true, false) if s.version == w.from_version => baseline.push(s),
                (false, true) if s.version == w.from_version => rest.push(s),
                _ => {}
            }
        }
        if admitted {
            if let Some(last) = mine.last() {
                stage_latest.push(*last);
            }
            if let Some(last) = samples
                .iter()
                .rfind(|s| s.at_unix_ms < w.since_unix_ms && s.version == w.from_version)
            {
                baseline_latest.push(last);
            }
            stage_by_node.insert(node, Totals::add(mine.iter().copied()));
            stage.extend(mine);
        } else if let Some(last) = samples
            .iter()
            .rfind(|s| s.at_unix_ms >= w.since_unix_ms && s.version == w.from_version)
        {
            rest_latest.push(last);
        }
    }
    Groups {
        stage_by_node,
        stage: Totals::add(stage),
        rest: Totals::add(rest),
        baseline: Totals::add(baseline),
        stage_health: Totals::add(stage_latest),
        rest_health: Totals::add(rest_latest),
        baseline_health: Totals::add(baseline_latest),
    }
}

/// What the gates see now: (stage, rest of fleet, baseline) traffic totals
/// and (stage, rest, baseline) upstream health, for people to read.
pub fn observed(w: &Window<'_>) -> ([Totals; 3], [Totals; 3]) {
    let g = groups(w);
    (
        [g.stage, g.rest, g.baseline],
        [g.stage_health, g.rest_health, g.baseline_health],
    )
}

/// Judges the error-rate, latency and upstream-health gates.
pub fn evaluate(gates: &Gates, w: &Window<'_>) -> Result<(), GateFailure> {
    let Groups {
        stage_by_node,
        stage,
        rest,
        baseline,
        stage_health: stage_h,
        rest_health: rest_h,
        baseline_health: base_h,
    } = groups(w);
    let enough = |t: &Totals| t.requests >= gates.min_requests;
    let worst = |f: &dyn Fn(&Totals) -> f64| {
        stage_by_node
            .iter()
            .filter(|(_, t)| t.requests > 0)
            .max_by(|a, b| f(a.1).total_cmp(&f(b.1)))
            .map(|(n, t)| (n.to_string(), *t))
    };
    let reference = |what: &str, f: &dyn Fn(&Totals) -> f64| {
        let mut parts = Vec::new();
        let mut value: Option<f64> = None;
        for (name, t) in [("rest of fleet", &rest), ("baseline", &baseline)] {
            if enough(t) {
                let v = f(t);
                parts.push(format!("{name} {what}", what = fmt_of(what, v, t)));
                value = Some(value.map_or(v, |x: f64| x.max(v)));
            } else {
                parts.push(format!("{name} n/a ({} requests)", t.requests));
            }
        }
        (value, parts.join(", "))
    };
    if enough(&stage) {
        let rate = stage.error_rate();
        let (reference_rate, text) = reference("5xx", &Totals::error_rate);
        let allowed = reference_rate.unwrap_or(0.0) + gates.max_5xx_increase;
        if rate > allowed {
            let node = worst(&Totals::error_rate);
            return Err(GateFailure {
                gate: "error-rate",
                node: node.as_ref().map(|(n, _)| n.clone()),
                detail: format!(
                    "stage 5xx {} of {} requests{}; reference: {text}; allowed up to {}",
                    pct(rate),
                    stage.requests,
                    node.map(|(n, t)| format!(
                        " (worst node {n}: {}/{})",
                        t.errors_5xx, t.requests
                    ))
                    .unwrap_or_default(),
                    pct(allowed)
                ),
            });
        }
        let (reference_p99, text) = reference("p99", &|t: &Totals| t.p99_ms as f64);
        if let Some(r) = reference_p99 {
            let limit = (r * gates.max_p99_ratio).max(gates.p99_floor_ms as f64);
            if stage.p99_ms as f64 > limit {
                let node = worst(&|t: &Totals| t.p99_ms as f64);
                return Err(GateFailure {
                    gate: "latency",
                    node: node.as_ref().map(|(n, _)| n.clone()),
                    detail: format!(
                        "stage p99 {} ms over {} requests; reference: {text}; allowed up to {:.0} ms",
                        stage.p99_ms, stage.requests, limit
                    ),
                });
            }
        }
    }
    if stage_h.targets > 0 {
        let reference = [rest_h, base_h]
            .iter()
            .filter(|t| t.targets > 0)
            .map(Totals::unhealthy_share)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let allowed = reference.unwrap_or(0.0) + gates.max_unhealthy_increase;
        let share = stage_h.unhealthy_share();
        if share > allowed {
            return Err(GateFailure {
                gate: "upstream-health",
                node: None,
                detail: format!(
                    "stage sees {}/{} targets unhealthy ({}); rest of fleet {}/{}, baseline {}/{}; allowed up to {}",
                    stage_h.unhealthy,
                    stage_h.targets,
                    pct(share),
                    rest_h.unhealthy,
                    rest_h.targets,
                    base_h.unhealthy,
                    base_h.targets,
                    pct(allowed)
                ),
            });
        }
    }
    Ok(())
}

fn fmt_of(what: &str, v: f64, t: &Totals) -> String {
    if what == "p99" {
        format!("p99 {v:.0} ms over {} requests", t.requests)
    } else {
        format!("5xx {} of {}", pct(v), t.requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: i64, version: i64, requests: u64, errors: u64, p99: u64) -> Sample {
        Sample {
            at_unix_ms: at,
            version,
            requests,
            errors_5xx: errors,
            p99_ms: p99,
            targets: 0,
            unhealthy: 0,
        }
    }

    fn window<'a>(
        samples: &'a BTreeMap<String, Vec<Sample>>,
        admitted: &'a HashSet<String>,
    ) -> Window<'a> {
        Window {
            samples,
            admitted,
            from_version: 1,
            to_version: 2,
            since_unix_ms: 1000,
        }
    }

    #[test]
    fn a_5xx_surge_in_the_stage_fails_the_error_rate_gate_naming_the_node() {
        let mut samples = BTreeMap::new();
        samples.insert(
            "canary".to_string(),
            vec![s(500, 1, 50, 0, 5), s(1500, 2, 40, 38, 5)],
        );
        samples.insert("other".to_string(), vec![s(1500, 1, 50, 0, 5)]);
        let admitted: HashSet<String> = ["canary".to_string()].into();
        let e = evaluate(&Gates::default(), &window(&samples, &admitted)).unwrap_err();
        assert_eq!(e.gate, "error-rate");
        assert_eq!(e.node.as_deref(), Some("canary"));
        assert!(e.detail.contains("95.0% of 40"), "{}", e.detail);
    }

    #[test]
    fn too_few_requests_and_fleet_wide_errors_do_not_blame_the_stage() {
        let mut samples = BTreeMap::new();
        samples.insert("canary".to_string(), vec![s(1500, 2, 5, 5, 5)]);
        let admitted: HashSet<String> = ["canary".to_string()].into();
        assert!(evaluate(&Gates::default(), &window(&samples, &admitted)).is_ok());
        samples.insert("canary".to_string(), vec![s(1500, 2, 100, 50, 5)]);
        samples.insert("other".to_string(), vec![s(1500, 1, 100, 48, 5)]);
        assert!(evaluate(&Gates::default(), &window(&samples, &admitted)).is_ok());
    }

    #[test]
    fn latency_is_judged_against_the_reference_with_a_floor() {
        let mut samples = BTreeMap::new();
        samples.insert("canary".to_string(), vec![s(1500, 2, 100, 0, 40)]);
        samples.insert("other".to_string(), vec![s(1500, 1, 100, 0, 5)]);
        let admitted: HashSet<String> = ["canary".to_string()].into();
        // 40 ms is 8x the reference but under the 50 ms floor.
        assert!(evaluate(&Gates::default(), &window(&samples, &admitted)).is_ok());
        samples.insert("canary".to_string(), vec![s(1500, 2, 100, 0, 500)]);
        let e = evaluate(&Gates::default(), &window(&samples, &admitted)).unwrap_err();
        assert_eq!(e.gate, "latency");
    }

    #[test]
    fn unhealthy_targets_only_on_the_stage_fail_the_health_gate() {
        let mut samples = BTreeMap::new();
        let mut bad = s(1500, 2, 0, 0, 0);
        bad.targets = 2;
        bad.unhealthy = 2;
        let mut good = s(1500, 1, 0, 0, 0);
        good.targets = 2;
        samples.insert("canary".to_string(), vec![bad]);
        samples.insert("other".to_string(), vec![good]);
        let admitted: HashSet<String> = ["canary".to_string()].into();
        let e = evaluate(&Gates::default(), &window(&samples, &admitted)).unwrap_err();
        assert_eq!(e.gate, "upstream-health");
    }
}
