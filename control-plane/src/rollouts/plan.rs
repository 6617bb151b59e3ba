//! A rollout plan as the control plane runs it: stages parsed into
//! [`Selector`]s, every gate threshold filled with its default, and the
//! stable order that `N%` and `canary:N` select from.
//!
//! Pure: parsing, defaults and selection over a list of nodes; no I/O.

use std::collections::BTreeSet;
use std::time::Duration;

use sentinel_api::{RolloutGates, RolloutPlan};

/// Default bake time of a stage.
pub const DEFAULT_BAKE: Duration = Duration::from_secs(10);
/// Most stages a plan may have.
pub const MAX_STAGES: usize = 20;

/// Which proxies a stage adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `*`: every node.
    All,
    /// `N%`: nodes whose stable rank falls in the first N percent.
    Percent(u32),
    /// `canary:N` / `N`: the N nodes first in stable order.
    Count(usize),
    /// `region:NAME` or a bare name.
    Region(String),
    /// `zone:NAME`.
    Zone(String),
    /// `node:A+B`.
    Nodes(BTreeSet<String>),
    /// `label:KEY=VALUE`.
    Label(String, String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic() && c != ',')
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, PlanError> {
        let t = text.trim();
        let bad = |why: &str| PlanError(format!("stage `{text}`: {why}"));
        if t == "*" {
            return Ok(Selector::All);
        }
        if let Some(p) = t.strip_suffix('%') {
            let n: u32 = p.parse().map_err(|_| bad("a percentage is 1% to 100%"))?;
            if !(1..=100).contains(&n) {
                return Err(bad("a percentage is 1% to 100%"));
            }
            return Ok(Selector::Percent(n));
        }
        let count = |n: &str| -> Result<Selector, PlanError> {
            let n: usize = n
                .parse()
                .map_err(|_| bad("a count is a whole number of nodes, 1 or more"))?;
            if n == 0 {
                return Err(bad("a count is a whole number of nodes, 1 or more"));
            }
            Ok(Selector::Count(n))
        };
        if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() {
            return count(t);
        }
        match t.split_once(':') {
            Some(("canary", n)) => count(n),
            Some(("region", r)) if name_ok(r) => Ok(Selector::Region(r.to_string())),
            Some(("zone", z)) if name_ok(z) => Ok(Selector::Zone(z.to_string())),
            Some(("label", kv)) => match kv.split_once('=') {
                Some((k, v)) if name_ok(k) && !v.is_empty() && v.len() <= 256 => {
                    Ok(Selector::Label(k.to_string(), v.to_string()))
                }
                _ => Err(bad("a label selector is label:KEY=VALUE")),
            },
            Some(("node", ids)) => {
                let set: BTreeSet<String> = ids.split('+').map(str::to_string).collect();
                if set.iter().all(|id| name_ok(id)) {
                    Ok(Selector::Nodes(set))
                } else {
                    Err(bad("node ids are printable ASCII, joined by `+`"))
                }
            }
            Some((kind, _)) => Err(bad(&format!(
                "unknown selector `{kind}:` (use *, N%, canary:N, region:NAME, zone:NAME, node:ID+ID, label:KEY=VALUE or a region name)"
            ))),
            None if name_ok(t) => Ok(Selector::Region(t.to_string())),
            None => Err(bad("empty or not printable ASCII")),
        }
    }
}

/// Where a node stands in every rollout: the first 64 bits of the SHA-256
/// of its id. The same node always gets the same rank, so `10%` selects
/// the same nodes every time (and a bigger share includes a smaller one).
pub fn stable_rank(node: &str) -> u64 {
    let hex = sentinel_config::sha256_hex(node.as_bytes());
    u64::from_str_radix(&hex[..16], 16).unwrap_or(0)
}

/// A node as selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub region: String,
    pub zone: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The nodes `selector` picks out of `nodes` (connected nodes, any order),
/// sorted by id.
pub fn select(selector: &Selector, nodes: &[Candidate]) -> Vec<String> {
    let mut picked: Vec<String> = match selector {
        Selector::All => nodes.iter().map(|n| n.id.clone()).collect(),
        Selector::Percent(p) => nodes
            .iter()
            .filter(|n| (stable_rank(&n.id) % 10_000) < u64::from(*p) * 100)
            .map(|n| n.id.clone())
            .collect(),
        Selector::Count(k) => {
            let mut ranked: Vec<&Candidate> = nodes.iter().collect();
            ranked.sort_by_key(|n| (stable_rank(&n.id), n.id.clone()));
            ranked.into_iter().take(*k).map(|n| n.id.clone()).collect()
        }
        Selector::Region(r) => nodes
            .iter()
            .filter(|n| &n.region == r)
            .map(|n| n.id.clone())
            .collect(),
        Selector::Zone(z) => nodes
            .iter()
            .filter(|n| &n.zone == z)
            .map(|n| n.id.clone())
            .collect(),
        Selector::Nodes(ids) => nodes
            .iter()
            .filter(|n| ids.contains(&n.id))
            .map(|n| n.id.clone())
            .collect(),
        Selector::Label(k, v) => nodes
            .iter()
            .filter(|n| n.labels.get(k) == Some(v))
            .map(|n| n.id.clone())
            .collect(),
    };
    picked.sort();
    picked.dedup();
    picked
}

/// Gate thresholds with every default filled.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub max_5xx_increase: f64,
    pub max_p99_ratio: f64,
    pub p99_floor_ms: u64,
    pub min_requests: u64,
    pub max_unhealthy_increase: f64,
    pub progress_deadline: Duration,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_5xx_increase: 0.05,
            max_p99_ratio: 2.0,
            p99_floor_ms: 50,
            min_requests: 20,
            max_unhealthy_increase: 0.25,
            progress_deadline: Duration::from_secs(60),
        }
    }
}

impl Gates {
    /// The thresholds as the API shows them.
    pub fn to_api(&self) -> RolloutGates {
        RolloutGates {
            max_5xx_increase: Some(self.max_5xx_increase),
            max_p99_ratio: Some(self.max_p99_ratio),
            p99_floor_ms: Some(self.p99_floor_ms),
            min_requests: Some(self.min_requests),
            max_unhealthy_increase: Some(self.max_unhealthy_increase),
            progress_deadline_ms: Some(self.progress_deadline.as_millis() as u64),
        }
    }
}

/// One stage, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub select: String,
    pub selector: Selector,
    pub bake: Duration,
}

/// A checked plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<Stage>,
    pub gates: Gates,
}

impl Plan {
    /// Checks `plan` and fills its defaults.
    pub fn from_api(plan: &RolloutPlan) -> Result<Plan, PlanError> {
        if plan.stages.is_empty() || plan.stages.len() > MAX_STAGES {
            return Err(PlanError(format!(
                "a rollout has 1 to {MAX_STAGES} stages, not {}",
                plan.stages.len()
            )));
        }
        let day_ms = 86_400_000;
        if plan.bake_ms.is_some_and(|b| b > day_ms)
            || plan
                .stages
                .iter()
                .any(|s| s.bake_ms.is_some_and(|b| b > day_ms))
        {
            return Err(PlanError(format!(
                "a bake is at most one day ({day_ms} ms)"
            )));
        }
        let bake_default = plan.bake_ms.map_or(DEFAULT_BAKE, Duration::from_millis);
        let stages = plan
            .stages
            .iter()
            .map(|s| {
                Ok(Stage {
                    select: s.select.trim().to_string(),
                    selector: Selector::parse(&s.select)?,
                    bake: s.bake_ms.map_or(bake_default, Duration::from_millis),
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        Ok(Plan {
            stages,
            gates: gates(plan.gates.as_ref())?,
        })
    }
}

fn gates(g: Option<&RolloutGates>) -> Result<Gates, PlanError> {
    let d = Gates::default();
    let Some(g) = g else { return Ok(d) };
    let unit = |name: &str, v: Option<f64>, default: f64, lo: f64, hi: f64| match v {
        None => Ok(default),
        Some(x) if (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(PlanError(format!(
            "gates.{name} must be between {lo} and {hi}, not {x}"
        ))),
    };
    let int = |name: &str, v: Option<u64>, default: u64, lo: u64, hi: u64| match v {
        None => Ok(default),
        Some(x) if (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(PlanError(format!(
            "gates.{name} must be between {lo} and {hi}, not {x}"
        ))),
    };
    Ok(Gates {
        max_5xx_increase: unit(
            "max_5xx_increase",
            g.max_5xx_increase,
            d.max_5xx_increase,
            0.0,
            1.0,
        )?,
        max_p99_ratio: unit(
            "max_p99_ratio",
            g.max_p99_ratio,
            d.max_p99_ratio,
            1.0,
            1000.0,
        )?,
        p99_floor_ms: int("p99_floor_ms", g.p99_floor_ms, d.p99_floor_ms, 0, 3_600_000)?,
        min_requests: int(
            "min_requests",
            g.min_requests,
            d.min_requests,
            1,
            1_000_000_000,
        )?,
        max_unhealthy_increase: unit(
            "max_unhealthy_increase",
            g.max_unhealthy_increase,
            d.max_unhealthy_increase,
            0.0,
            1.0,
        )?,
        progress_deadline: Duration::from_millis(int(
            "progress_deadline_ms",
            g.progress_deadline_ms,
            d.progress_deadline.as_millis() as u64,
            1,
            86_400_000,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("node-{i}"),
                region: if i % 2 == 0 { "eu" } else { "us" }.into(),
                zone: format!("z{}", i % 3),
                labels: [(
                    "tier".to_string(),
                    if i < 2 { "canary" } else { "main" }.to_string(),
                )]
                .into(),
            })
            .collect()
    }

    #[test]
    fn selectors_parse_and_refuse_with_the_stage_named() {
        assert_eq!(Selector::parse("*"), Ok(Selector::All));
        assert_eq!(Selector::parse("10%"), Ok(Selector::Percent(10)));
        assert_eq!(Selector::parse("canary:1"), Ok(Selector::Count(1)));
        assert_eq!(Selector::parse("3"), Ok(Selector::Count(3)));
        assert_eq!(
            Selector::parse("eu-west"),
            Ok(Selector::Region("eu-west".into()))
        );
        assert_eq!(
            Selector::parse("zone:eu-west-a"),
            Ok(Selector::Zone("eu-west-a".into()))
        );
        assert_eq!(
            Selector::parse("node:a+b"),
            Ok(Selector::Nodes(["a".to_string(), "b".to_string()].into()))
        );
        for bad in ["0%", "101%", "canary:0", "colour:red", "", "x y"] {
            let e = Selector::parse(bad).unwrap_err();
            assert!(e.0.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn a_percentage_is_stable_and_grows_monotonically() {
        let all = nodes(400);
        let ten = select(&Selector::Percent(10), &all);
        let fifty = select(&Selector::Percent(50), &all);
        assert!(ten.len() > 20 && ten.len() < 70, "{}", ten.len());
        assert!(ten.iter().all(|n| fifty.contains(n)));
        // The same node keeps its place whatever else is connected.
        let half: Vec<Candidate> = all.iter().step_by(2).cloned().collect();
        let ten_of_half = select(&Selector::Percent(10), &half);
        assert!(ten_of_half.iter().all(|n| ten.contains(n)));
        assert_eq!(select(&Selector::Percent(100), &all).len(), 400);
        let one = select(&Selector::Count(1), &all);
        assert_eq!(one, select(&Selector::Count(1), &all));
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn regions_zones_and_ids_select_exactly() {
        let all = nodes(6);
        assert_eq!(
            select(&Selector::Region("eu".into()), &all),
            vec!["node-0", "node-2", "node-4"]
        );
        assert_eq!(
            select(&Selector::Zone("z1".into()), &all),
            vec!["node-1", "node-4"]
        );
        assert_eq!(
            select(&Selector::parse("node:node-5+ghost").unwrap(), &all),
            vec!["node-5"]
        );
        assert_eq!(
            select(&Selector::parse("label:tier=canary").unwrap(), &all),
            vec!["node-0", "node-1"]
        );
        assert!(Selector::parse("label:tier").is_err());
    }

    #[test]
    fn plans_fill_defaults_and_check_bounds() {
        let p: RolloutPlan = serde_json::from_value(serde_json::json!({
            "stages": [{"select": "canary:1", "bake_ms": 500}, {"select": "*"}],
            "bake_ms": 1000,
            "gates": {"min_requests": 5}
        }))
        .unwrap();
        let plan = Plan::from_api(&p).unwrap();
        assert_eq!(plan.stages[0].bake, Duration::from_millis(500));
        assert_eq!(plan.stages[1].bake, Duration::from_secs(1));
        assert_eq!(plan.gates.min_requests, 5);
        assert_eq!(plan.gates.max_5xx_increase, 0.05);
        let empty: RolloutPlan = serde_json::from_value(serde_json::json!({"stages": []})).unwrap();
        assert!(Plan::from_api(&empty).is_err());
        let bad: RolloutPlan = serde_json::from_value(
            serde_json::json!({"stages": [{"select": "*"}], "gates": {"max_5xx_increase": 2.0}}),
        )
        .unwrap();
        assert!(
            Plan::from_api(&bad)
                .unwrap_err()
                .0
                .contains("max_5xx_increase")
        );
    }
}
