//! The rollout state machine, pure: given the durable [`Progress`] of a
//! rollout, the fleet's nodes as the store reports them, the gates'
//! verdict and the time, [`step`] says what happens next. The driver
//! (`driver.rs`) turns a [`Step`] into one compare-and-set transaction in
//! the store; the model-based test applies it with [`apply`] instead.
//!
//! Rules:
//! - a NACK of the new version by any admitted node fails at once (`ack`);
//! - a stage is *acked* when every connected admitted node ACKed the new
//!   version; until then the progress deadline runs from the stage's start;
//! - from the ACK the stage bakes (`bake`; no bake when the stage admitted
//!   no node), with the health gates judged continuously; a failed gate
//!   fails the rollout;
//! - after the bake the next stage admits the connected nodes its selector
//!   picks (and that no earlier stage admitted); after the last stage the
//!   rollout completes (the version is activated for everyone);
//! - a paused rollout does nothing; admitted nodes keep the new version.

use std::collections::BTreeMap;

use super::gates::GateFailure;
use super::plan::{Candidate, Plan, select};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Paused,
    Completed,
    Failed,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "running" => Phase::Running,
            "paused" => Phase::Paused,
            "completed" => Phase::Completed,
            "failed" => Phase::Failed,
            "aborted" => Phase::Aborted,
            _ => return None,
        })
    }

    /// Running or paused: its admitted nodes are served the new version.
    pub fn is_open(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused)
    }
}

/// The durable state of a rollout (one row plus its admitted nodes).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    pub stage: usize,
    pub stage_started_ms: i64,
    pub stage_acked_ms: Option<i64>,
    /// Node → the stage that admitted it.
    pub admitted: BTreeMap<String, usize>,
}

/// A node as the store reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub region: String,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub connected: bool,
    pub acked_version: Option<i64>,
    /// The version of the NACK the node currently stands by, and its text.
    pub nack: Option<(i64, String)>,
}

/// What happens next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Wait,
    /// Every connected admitted node ACKed: the bake starts.
    Acked,
    /// The next stage starts, admitting these nodes.
    Advance {
        stage: usize,
        admit: Vec<String>,
    },
    /// The last stage passed: activate the version.
    Complete,
    Fail(GateFailure),
}

/// Decides the next step of a rollout of `to_version`.
pub fn step(
    plan: &Plan,
    to_version: i64,
    p: &Progress,
    nodes: &[NodeView],
    gate: Result<(), GateFailure>,
    now_ms: i64,
) -> Step {
    if p.phase != Phase::Running {
        return Step::Wait;
    }
    let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    for id in p.admitted.keys() {
        if let Some(n) = by_id.get(id.as_str())
            && let Some((v, error)) = &n.nack
            && *v == to_version
        {
            return Step::Fail(GateFailure {
                gate: "ack",
                node: Some(id.clone()),
                detail: format!("node {id} refused version {to_version}: {error}"),
            });
        }
    }
    match p.stage_acked_ms {
        None => {
            let waiting: Vec<&str> = p
                .admitted
                .keys()
                .filter(|id| {
                    by_id
                        .get(id.as_str())
                        .is_some_and(|n| n.connected && n.acked_version != Some(to_version))
                })
                .map(String::as_str)
                .collect();
            if waiting.is_empty() {
                return Step::Acked;
            }
            let deadline = plan.gates.progress_deadline.as_millis() as i64;
            if now_ms - p.stage_started_ms >= deadline {
                return Step::Fail(GateFailure {
                    gate: "progress-deadline",
                    node: waiting.first().map(|s| s.to_string()),
                    detail: format!(
                        "{} of {} admitted nodes had not ACKed version {to_version} {} ms after stage {} started: {}",
                        waiting.len(),
                        p.admitted.len(),
                        deadline,
                        p.stage + 1,
                        waiting
                            .iter()
                            .take(5)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            gate.map_or_else(Step::Fail, |()| Step::Wait)
        }
        Some(acked) => {
            if let Err(f) = gate {
                return Step::Fail(f);
            }
            let admitted_here = p.admitted.values().any(|s| *s == p.stage);
            let bake = if admitted_here {
                plan.stages[p.stage.min(plan.stages.len() - 1)]
                    .bake
                    .as_millis() as i64
            } else {
                0
            };
            if now_ms - acked >= bake {
                next(plan, p, nodes)
            } else {
                Step::Wait
            }
        }
    }
}

/// The step after the current stage (the bake passed, or promote).
pub fn next(plan: &Plan, p: &Progress, nodes: &[NodeView]) -> Step {
    let stage = p.stage + 1;
    if stage >= plan.stages.len() {
        return Step::Complete;
    }
    Step::Advance {
        stage,
        admit: admit(plan, stage, &p.admitted, nodes),
    }
}

/// The connected nodes stage `stage` adds to `admitted`.
pub fn admit(
    plan: &Plan,
    stage: usize,
    admitted: &BTreeMap<String, usize>,
    nodes: &[NodeView],
) -> Vec<String> {
    let candidates: Vec<Candidate> = nodes
        .iter()
        .filter(|n| n.connected)
        .map(|n| Candidate {
            id: n.id.clone(),
            region: n.region.clone(),
            zone: n.zone.clone(),
            labels: n.labels.clone(),
        })
        .collect();
    select(&plan.stages[stage].selector, &candidates)
        .into_iter()
        .filter(|id| !admitted.contains_key(id))
        .collect()
}

/// Applies `step` to `p` as the store does (the model's transition).
pub fn apply(p: &mut Progress, step: &Step, now_ms: i64) {
    match step {
        Step::Wait => {}
        Step::Acked => p.stage_acked_ms = Some(now_ms),
        Step::Advance { stage, admit } => {
            p.stage = *stage;
            p.stage_started_ms = now_ms;
            p.stage_acked_ms = None;
            for id in admit {
                p.admitted.insert(id.clone(), *stage);
            }
        }
        Step::Complete => p.phase = Phase::Completed,
        Step::Fail(_) => p.phase = Phase::Failed,
    }
}

#[cfg(test)]
mod tests {
    //! The model-based test: random fleets, random proxy behaviour
    //! (ACK late, NACK, disconnect) and random operator commands against
    //! [`step`]/[`apply`], with the invariants checked after every event.
    //! The seed is printed; `ROLLOUT_SEED=N` replays one.

    use super::*;
    use crate::rollouts::plan::{Gates, Selector, Stage};
    use std::time::Duration;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn plan(rng: &mut Rng) -> Plan {
        let choices = [
            "canary:1",
            "eu",
            "us",
            "50%",
            "node:n3+n4",
            "zone:ap-a",
            "*",
        ];
        let n = 1 + rng.below(4) as usize;
        let mut stages: Vec<Stage> = (0..n)
            .map(|_| {
                let s = choices[rng.below(choices.len() as u64) as usize];
                Stage {
                    select: s.into(),
                    selector: Selector::parse(s).unwrap(),
                    bake: Duration::from_millis(rng.below(3) * 500),
                }
            })
            .collect();
        if rng.below(2) == 0 {
            stages.push(Stage {
                select: "*".into(),
                selector: Selector::All,
                bake: Duration::from_millis(500),
            });
        }
        Plan {
            stages,
            gates: Gates {
                progress_deadline: Duration::from_secs(5),
                ..Gates::default()
            },
        }
    }

    /// One simulated proxy.
    struct Sim {
        view: NodeView,
        /// Refuses the new version.
        bad: bool,
        /// When it will ACK what it was offered (ms), if offered.
        ack_at: Option<i64>,
        /// Every version it ever ran.
        ran: Vec<i64>,
    }

    const FROM: i64 = 1;
    const TO: i64 = 2;

    #[test]
    fn rollout_state_machine_model() {
        let base_seed: u64 = std::env::var("ROLLOUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(7, |d| d.as_nanos() as u64)
            });
        println!("rollout model: ROLLOUT_SEED={base_seed}");
        for case in 0..300u64 {
            let seed = base_seed.wrapping_add(case) | 1;
            run_case(seed);
        }
    }

    fn run_case(seed: u64) {
        let mut rng = Rng(seed);
        let plan = plan(&mut rng);
        let regions = ["eu", "us", "ap"];
        let mut sims: Vec<Sim> = (0..(2 + rng.below(6)))
            .map(|i| {
                let region = regions[rng.below(3) as usize];
                Sim {
                    view: NodeView {
                        id: format!("n{i}"),
                        region: region.into(),
                        zone: format!("{region}-a"),
                        labels: BTreeMap::new(),
                        connected: true,
                        acked_version: Some(FROM),
                        nack: None,
                    },
                    bad: rng.below(8) == 0,
                    ack_at: None,
                    ran: vec![FROM],
                }
            })
            .collect();
        let mut now = 0i64;
        let views = |s: &[Sim]| s.iter().map(|s| s.view.clone()).collect::<Vec<_>>();
        let mut p = Progress {
            phase: Phase::Running,
            stage: 0,
            stage_started_ms: 0,
            stage_acked_ms: None,
            admitted: admit(&plan, 0, &BTreeMap::new(), &views(&sims))
                .into_iter()
                .map(|id| (id, 0))
                .collect(),
        };
        let mut gate_broken_at: Option<i64> = None;
        let mut any_nack = false;
        for _ in 0..400 {
            now += 100 + rng.below(300) as i64;
            // What the "stream" serves each node: the new version exactly
            // while the rollout is open and the node is admitted.
            for s in sims.iter_mut() {
                let wanted = if (p.phase.is_open() && p.admitted.contains_key(&s.view.id))
                    || p.phase == Phase::Completed
                {
                    TO
                } else {
                    FROM
                };
                if !s.view.connected {
                    continue;
                }
                let runs = *s.ran.last().unwrap();
                if wanted == TO && runs != TO && !s.bad && s.view.nack.is_none() {
                    let at = *s.ack_at.get_or_insert(now + rng.below(1500) as i64);
                    if now >= at {
                        s.ran.push(TO);
                        s.view.acked_version = Some(TO);
                        s.ack_at = None;
                    }
                } else if wanted == TO && s.bad && s.view.nack.is_none() {
                    s.view.nack = Some((TO, "listener \"x\": cannot bind".into()));
                    any_nack = true;
                } else if wanted == FROM && runs != FROM {
                    s.ran.push(FROM);
                    s.view.acked_version = Some(FROM);
                }
            }
            // Random disturbances and operator commands.
            match rng.below(40) {
                0 => {
                    let i = rng.below(sims.len() as u64) as usize;
                    sims[i].view.connected = !sims[i].view.connected;
                }
                1 if p.phase == Phase::Running => p.phase = Phase::Paused,
                2 if p.phase == Phase::Paused => {
                    p.phase = Phase::Running;
                    p.stage_started_ms = now;
                    p.stage_acked_ms = None;
                }
                3 if p.phase.is_open() => {
                    let s = next(&plan, &p, &views(&sims));
                    let keep = p.phase;
                    apply(&mut p, &s, now);
                    if p.phase == Phase::Completed {
                        check(&p, &sims, &plan, seed);
                        break;
                    }
                    p.phase = keep;
                }
                4 if p.phase.is_open() => p.phase = Phase::Aborted,
                5 => gate_broken_at = gate_broken_at.or(Some(now)),
                _ => {}
            }
            let gate = match gate_broken_at {
                Some(_) => Err(GateFailure {
                    gate: "error-rate",
                    node: None,
                    detail: "x".into(),
                }),
                None => Ok(()),
            };
            let before = p.clone();
            let s = step(&plan, TO, &p, &views(&sims), gate, now);
            apply(&mut p, &s, now);
            // Invariants.
            if before.phase.is_open() && p.phase.is_open() {
                for (id, st) in &before.admitted {
                    assert_eq!(
                        p.admitted.get(id),
                        Some(st),
                        "seed {seed}: admitted nodes stay"
                    );
                }
            }
            assert!(
                p.admitted.values().all(|s| *s <= p.stage),
                "seed {seed}: no node is admitted beyond the current stage"
            );
            if let Step::Complete = s {
                assert!(
                    !p.admitted.keys().any(|id| sims
                        .iter()
                        .any(|s| &s.view.id == id && s.view.nack.is_some())),
                    "seed {seed}: a rollout with a NACKing admitted node never completes"
                );
            }
            if matches!(s, Step::Acked) {
                for id in p.admitted.keys() {
                    let sim = sims.iter().find(|s| &s.view.id == id).unwrap();
                    assert!(
                        !sim.view.connected || sim.view.acked_version == Some(TO),
                        "seed {seed}: acked with {id} not on the new version"
                    );
                }
            }
            if gate_broken_at.is_some() && matches!(s, Step::Complete | Step::Advance { .. }) {
                panic!("seed {seed}: advanced past a failed gate");
            }
            if !before.phase.is_open() {
                assert_eq!(
                    before.phase, p.phase,
                    "seed {seed}: an ended rollout stays ended"
                );
            }
            if !p.phase.is_open() {
                check(&p, &sims, &plan, seed);
                break;
            }
        }
        let _ = any_nack;
    }

    /// A node never ran the new version unless it was admitted (or the
    /// rollout completed).
    fn check(p: &Progress, sims: &[Sim], _plan: &Plan, seed: u64) {
        for s in sims {
            if s.ran.contains(&TO) {
                assert!(
                    p.admitted.contains_key(&s.view.id) || p.phase == Phase::Completed,
                    "seed {seed}: {} ran the new version without being admitted",
                    s.view.id
                );
            }
        }
    }

    #[test]
    fn a_nack_fails_at_once_and_the_deadline_names_the_slow_node() {
        let plan = Plan {
            stages: vec![Stage {
                select: "*".into(),
                selector: Selector::All,
                bake: Duration::from_secs(1),
            }],
            gates: Gates::default(),
        };
        let node = |id: &str, acked: i64, nack: Option<i64>| NodeView {
            id: id.into(),
            region: "eu".into(),
            zone: "eu-a".into(),
            labels: BTreeMap::new(),
            connected: true,
            acked_version: Some(acked),
            nack: nack.map(|v| (v, "cannot bind".into())),
        };
        let p = Progress {
            phase: Phase::Running,
            stage: 0,
            stage_started_ms: 0,
            stage_acked_ms: None,
            admitted: [("a".to_string(), 0), ("b".to_string(), 0)].into(),
        };
        let s = step(
            &plan,
            2,
            &p,
            &[node("a", 2, None), node("b", 1, Some(2))],
            Ok(()),
            10,
        );
        assert!(matches!(&s, Step::Fail(f) if f.gate == "ack" && f.node.as_deref() == Some("b")));
        let s = step(
            &plan,
            2,
            &p,
            &[node("a", 2, None), node("b", 1, None)],
            Ok(()),
            59_999,
        );
        assert_eq!(s, Step::Wait);
        let s = step(
            &plan,
            2,
            &p,
            &[node("a", 2, None), node("b", 1, None)],
            Ok(()),
            60_000,
        );
        assert!(
            matches!(&s, Step::Fail(f) if f.gate == "progress-deadline" && f.node.as_deref() == Some("b"))
        );
        let s = step(
            &plan,
            2,
            &p,
            &[node("a", 2, None), node("b", 2, None)],
            Ok(()),
            100,
        );
        assert_eq!(s, Step::Acked);
        let acked = Progress {
            stage_acked_ms: Some(100),
            ..p
        };
        let nodes = [node("a", 2, None), node("b", 2, None)];
        assert_eq!(step(&plan, 2, &acked, &nodes, Ok(()), 1099), Step::Wait);
        assert_eq!(step(&plan, 2, &acked, &nodes, Ok(()), 1100), Step::Complete);
    }
}
