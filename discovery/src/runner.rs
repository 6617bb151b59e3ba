//! The generic runner: the semantics every source shares, whatever it asks.
//!
//! A source ([`Source`]) only answers "what are the targets now?" (or fails).
//! The runner owns everything else:
//!
//! - **errors keep the last known targets**: a failed or timed-out refresh
//!   marks the set stale (`stale = true`, `error` set, `{prefix}_stale` = 1,
//!   a `warn!`), never empties it; the next success clears stale;
//! - **empty answers are held** for the grace period before they are
//!   believed when the source had targets (a watch that empties once and then
//!   goes quiet is believed when the grace timer fires, not at the next event);
//! - **sends only changes**: a [`Discovered`] goes out when the set, a
//!   target's health or weight, or the stale flag changes, with `generation`
//!   one higher than the last set sent for that upstream;
//! - **retries with capped exponential backoff** after errors;
//! - **status and metrics** for `/v1/discovery` and Prometheus.
//!
//! Nothing is sent before the first successful answer: a source that has
//! never answered has nothing to keep, and sending an empty set could wipe
//! endpoints the receiver restored from elsewhere; [`Discovery::status`]
//! shows the error meanwhile.
//!
//! [`Discovery::status`]: crate::Discovery::status

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_proto as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Discovered, SourceKind, SourceStatus};

/// One successful answer of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Any order; the runner sorts by address.
    pub targets: Vec<pb::Target>,
    /// How long to wait before asking again (DNS: the clamped TTL; Consul:
    /// the minimum delay between blocking queries; Kubernetes: zero, the
    /// watch itself waits).
    pub next_in: Duration,
}

/// A failed refresh, as shown in status and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    pub fn new(e: impl std::fmt::Display) -> SourceError {
        SourceError(e.to_string())
    }
}

/// What the runner asks a source. Each call returns the next answer: a poll
/// source resolves now, a blocking or watching source returns when something
/// changed (or its own wait expired). A source bounds its own calls with a
/// timeout and reports the timeout as an error.
pub trait Source: Send {
    fn next(&mut self) -> impl std::future::Future<Output = Result<Answer, SourceError>> + Send;
}

/// Timing knobs of the runner (defaults documented in docs/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// How long an empty answer from a source that had targets is held.
    pub empty_grace: Duration,
    /// First retry delay after an error; doubles per consecutive error.
    pub backoff_initial: Duration,
    /// Ceiling of the retry delay.
    pub backoff_max: Duration,
}

/// Default grace period for empty answers.
pub const DEFAULT_EMPTY_GRACE: Duration = Duration::from_secs(30);

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            empty_grace: DEFAULT_EMPTY_GRACE,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The delay before retry number `failures` (1 = first failure).
pub fn backoff(timing: &Timing, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    timing
        .backoff_initial
        .saturating_mul(1u32 << shift)
        .min(timing.backoff_max)
}

/// The metrics every runner records, as suffixes of the prefix given to
/// [`crate::Discovery::new`] (`{prefix}_{suffix}`): for the tidy tests of the
/// crates that embed discovery (their metric lists and docs/operations.md).
pub const METRIC_SUFFIXES: &[&str] = &[
    "targets",
    "refresh_total",
    "last_success_timestamp_seconds",
    "stale",
];

/// The full metric names for `prefix` (e.g. `sentinel_cp_discovery`).
pub fn metric_names(prefix: &str) -> Vec<String> {
    METRIC_SUFFIXES
        .iter()
        .map(|s| format!("{prefix}_{s}"))
        .collect()
}

/// Where a run starts: its status (shared with [`crate::Discovery::status`],
/// holding the generation to continue from) and what receivers already
/// hold, if another runner sent it (see [`crate::Known`]).
pub struct Start {
    pub status: SharedStatus,
    pub known: Option<crate::Known>,
}

/// Shared with [`crate::Discovery::status`].
pub(crate) type SharedStatus = Arc<Mutex<SourceStatus>>;

pub(crate) fn new_status(upstream: &str, source: SourceKind) -> SharedStatus {
    Arc::new(Mutex::new(SourceStatus {
        upstream: upstream.to_string(),
        source,
        targets: 0,
        stale: false,
        generation: 0,
        last_success_unix_ms: 0,
        last_error: None,
        refreshes_ok: 0,
        refreshes_failed: 0,
    }))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `source` for `upstream` until the receiver of `updates` is gone or
/// the task is aborted.
pub async fn run<S: Source>(
    upstream: String,
    kind: SourceKind,
    mut source: S,
    timing: Timing,
    updates: mpsc::Sender<Discovered>,
    metric_prefix: &'static str,
    start: Start,
) {
    let Start { status, known } = start;
    // A restarted source (its block changed) continues the upstream's
    // generations: receivers may ignore a generation they have seen.
    let generation = status.lock().map_or(0, |s| s.generation);
    let mut state = State {
        upstream,
        kind,
        prefix: metric_prefix,
        sent: None,
        current: Vec::new(),
        stale: false,
        error: None,
        generation,
        last_success_unix_ms: 0,
        empty_since: None,
        status,
    };
    if let Some(known) = known {
        // What the receivers already hold (another runner's last set): it is
        // the set an empty answer must outlive and an error must keep, and
        // an answer equal to it changes nothing.
        let mut targets = known.targets;
        targets.sort_by(|a, b| a.address.cmp(&b.address));
        state.generation = state.generation.max(known.generation);
        state.stale = known.stale;
        state.error = known.error;
        state.last_success_unix_ms = known.last_success_unix_ms;
        state.sent = Some((targets.clone(), known.stale));
        state.current = targets;
        if let Ok(mut s) = state.status.lock() {
            s.generation = state.generation;
            s.targets = state.current.len();
            s.stale = state.stale;
            s.last_success_unix_ms = state.last_success_unix_ms;
            s.last_error = state.error.clone();
        }
    }
    let mut failures: u32 = 0;
    loop {
        // Ask the source, firing the grace timer meanwhile if it is armed.
        let result = {
            let ask = source.next();
            tokio::pin!(ask);
            loop {
                let grace_at = state.empty_since.map(|t| t + timing.empty_grace);
                tokio::select! {
                    r = &mut ask => break r,
                    _ = sleep_until_opt(grace_at) => {
                        if !state.believe_empty(&updates).await {
                            return;
                        }
                    }
                }
            }
        };
        let wait = match result {
            Ok(answer) => {
                failures = 0;
                let next_in = answer.next_in;
                if !state.success(answer.targets, &timing, &updates).await {
                    return;
                }
                next_in
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(&timing, failures);
                tracing::warn!(
                    upstream = %state.upstream,
                    source = state.kind.as_str(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "discovery refresh failed; keeping the last known targets"
                );
                if !state.failure(e.0, &updates).await {
                    return;
                }
                delay
            }
        };
        let until = Instant::now() + wait;
        loop {
            let grace_at = state.empty_since.map(|t| t + timing.empty_grace);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = sleep_until_opt(grace_at) => {
                    if !state.believe_empty(&updates).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct State {
    upstream: String,
    kind: SourceKind,
    prefix: &'static str,
    /// The last set sent (targets, stale); `None` before the first send.
    sent: Option<(Vec<pb::Target>, bool)>,
    /// The targets currently believed.
    current: Vec<pb::Target>,
    stale: bool,
    error: Option<String>,
    generation: u64,
    last_success_unix_ms: i64,
    /// When the source started answering empty while we had targets.
    empty_since: Option<Instant>,
    status: SharedStatus,
}

// === impl State ===

impl State {
    /// Returns false when the receiver is gone.
    async fn success(
        &mut self,
        mut targets: Vec<pb::Target>,
        timing: &Timing,
        updates: &mpsc::Sender<Discovered>,
    ) -> bool {
        targets.sort_by(|a, b| a.address.cmp(&b.address));
        targets.dedup_by(|a, b| a.address == b.address);
        self.stale = false;
        self.error = None;
        self.last_success_unix_ms = unix_ms();
        metrics::counter!(
            format!("{}_refresh_total", self.prefix),
            "upstream" => self.upstream.clone(),
            "source" => self.kind.as_str(),
            "result" => "ok"
        )
        .increment(1);
        metrics::gauge!(
            format!("{}_last_success_timestamp_seconds", self.prefix),
            "upstream" => self.upstream.clone()
        )
        .set(self.last_success_unix_ms as f64 / 1000.0);
        if let Ok(mut s) = self.status.lock() {
            s.refreshes_ok += 1;
            s.last_success_unix_ms = self.last_success_unix_ms;
            s.last_error = None;
        }
        if targets.is_empty() && !self.current.is_empty() && !timing.empty_grace.is_zero() {
            // Held: keep the targets until the grace timer says otherwise.
            if self.empty_since.is_none() {
                tracing::info!(
                    upstream = %self.upstream,
                    source = self.kind.as_str(),
                    grace_ms = timing.empty_grace.as_millis() as u64,
                    "discovery answered with no targets; holding the last set for the grace period"
                );
                self.empty_since = Some(Instant::now());
            }
        } else {
            self.empty_since = None;
            self.current = targets;
        }
        self.publish(updates).await
    }

    async fn failure(&mut self, error: String, updates: &mpsc::Sender<Discovered>) -> bool {
        // An error is no evidence that the set is empty: a held empty answer
        // must be confirmed by answers again.
        self.empty_since = None;
        self.stale = true;
        self.error = Some(error.clone());
        metrics::counter!(
            format!("{}_refresh_total", self.prefix),
            "upstream" => self.upstream.clone(),
            "source" => self.kind.as_str(),
            "result" => "error"
        )
        .increment(1);
        if let Ok(mut s) = self.status.lock() {
            s.refreshes_failed += 1;
            s.last_error = Some(error);
            s.stale = self.sent.is_some();
        }
        if self.sent.is_none() {
            // Nothing known yet: nothing to keep, nothing to send.
            return true;
        }
        self.publish(updates).await
    }

    async fn believe_empty(&mut self, updates: &mpsc::Sender<Discovered>) -> bool {
        self.empty_since = None;
        tracing::warn!(
            upstream = %self.upstream,
            source = self.kind.as_str(),
            "discovery still answers with no targets after the grace period; the upstream now has none"
        );
        self.current.clear();
        self.publish(updates).await
    }

    /// Sends the current set if it differs from the last one sent.
    async fn publish(&mut self, updates: &mpsc::Sender<Discovered>) -> bool {
        metrics::gauge!(
            format!("{}_stale", self.prefix),
            "upstream" => self.upstream.clone()
        )
        .set(if self.stale { 1.0 } else { 0.0 });
        metrics::gauge!(
            format!("{}_targets", self.prefix),
            "upstream" => self.upstream.clone(),
            "source" => self.kind.as_str()
        )
        .set(self.current.len() as f64);
        let changed = match &self.sent {
            Some((targets, stale)) => *targets != self.current || *stale != self.stale,
            None => true,
        };
        if let Ok(mut s) = self.status.lock() {
            s.targets = self.current.len();
            s.stale = self.stale;
            if changed {
                s.generation = self.generation + 1;
            }
        }
        if !changed {
            return true;
        }
        self.generation += 1;
        self.sent = Some((self.current.clone(), self.stale));
        let d = Discovered {
            upstream: self.upstream.clone(),
            source: self.kind,
            targets: self.current.clone(),
            stale: self.stale,
            generation: self.generation,
            last_success_unix_ms: self.last_success_unix_ms,
            error: self.error.clone(),
        };
        updates.send(d).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted source: each call pops the next step; an empty script
    /// blocks forever (a quiet watch).
    struct Fake {
        script: Arc<Mutex<VecDeque<Step>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    enum Step {
        Answer(Vec<&'static str>, Duration),
        Fail(&'static str),
        /// Blocks for this long, then answers.
        Slow(Duration, Vec<&'static str>),
    }

    impl Source for Fake {
        async fn next(&mut self) -> Result<Answer, SourceError> {
            self.calls.lock().unwrap().push(Instant::now());
            let step = self.script.lock().unwrap().pop_front();
            match step {
                Some(Step::Answer(a, next_in)) => Ok(answer(&a, next_in)),
                Some(Step::Fail(e)) => Err(SourceError(e.into())),
                Some(Step::Slow(d, a)) => {
                    tokio::time::sleep(d).await;
                    Ok(answer(&a, Duration::from_secs(3600)))
                }
                None => std::future::pending().await,
            }
        }
    }

    fn answer(addrs: &[&str], next_in: Duration) -> Answer {
        Answer {
            targets: addrs
                .iter()
                .map(|a| pb::Target {
                    address: a.to_string(),
                    weight: 1,
                    health: pb::TargetHealth::Unknown as i32,
                    zone: String::new(),
                })
                .collect(),
            next_in,
        }
    }

    struct Harness {
        rx: mpsc::Receiver<Discovered>,
        calls: Arc<Mutex<Vec<Instant>>>,
        status: SharedStatus,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn start(steps: Vec<Step>, timing: Timing) -> Harness {
        start_known(steps, timing, None)
    }

    fn start_known(steps: Vec<Step>, timing: Timing, known: Option<crate::Known>) -> Harness {
        let (tx, rx) = mpsc::channel(16);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let status = new_status("api", SourceKind::Dns);
        let fake = Fake {
            script: Arc::new(Mutex::new(steps.into())),
            calls: calls.clone(),
        };
        let task = tokio::spawn(run(
            "api".into(),
            SourceKind::Dns,
            fake,
            timing,
            tx,
            "test_discovery",
            Start {
                status: status.clone(),
                known,
            },
        ));
        Harness {
            rx,
            calls,
            status,
            task,
        }
    }

    fn addrs(d: &Discovered) -> Vec<&str> {
        d.targets.iter().map(|t| t.address.as_str()).collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn sends_sorted_sets_only_on_change_with_increasing_generation() {
        let mut h = start(
            vec![
                Step::Answer(vec!["b:1", "a:1"], S),
                Step::Answer(vec!["a:1", "b:1"], S),
                Step::Answer(vec!["a:1"], S),
            ],
            Timing::default(),
        );
        let d1 = h.rx.recv().await.unwrap();
        assert_eq!(addrs(&d1), ["a:1", "b:1"]);
        assert_eq!(d1.generation, 1);
        assert!(!d1.stale);
        // The identical second answer sends nothing; the third does.
        let d2 = h.rx.recv().await.unwrap();
        assert_eq!(addrs(&d2), ["a:1"]);
        assert_eq!(d2.generation, 2);
        assert_eq!(h.calls.lock().unwrap().len(), 3);
        let s = h.status.lock().unwrap().clone();
        assert_eq!((s.refreshes_ok, s.generation, s.targets), (3, 2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn error_keeps_targets_marks_stale_and_recovery_clears_it() {
        let mut h = start(
            vec![
                Step::Answer(vec!["a:1"], S),
                Step::Fail("connection refused"),
                Step::Fail("connection refused"),
                Step::Answer(vec!["a:1"], S),
            ],
            Timing::default(),
        );
        assert!(!h.rx.recv().await.unwrap().stale);
        let stale = h.rx.recv().await.unwrap();
        assert!(stale.stale);
        assert_eq!(addrs(&stale), ["a:1"]);
        assert_eq!(stale.error.as_deref(), Some("connection refused"));
        // The second failure changes nothing visible: no send.
        let fresh = h.rx.recv().await.unwrap();
        assert!(!fresh.stale);
        assert_eq!(addrs(&fresh), ["a:1"]);
        assert_eq!(fresh.error, None);
        assert_eq!(fresh.generation, 3);
        let s = h.status.lock().unwrap().clone();
        assert_eq!((s.refreshes_ok, s.refreshes_failed), (2, 2));
        assert!(!s.stale);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_up_to_the_cap() {
        let timing = Timing {
            backoff_initial: S,
            backoff_max: Duration::from_secs(4),
            ..Timing::default()
        };
        let mut steps = vec![Step::Answer(vec!["a:1"], S)];
        steps.extend((0..5).map(|_| Step::Fail("down")));
        steps.push(Step::Answer(vec!["a:1"], S));
        let mut h = start(steps, timing);
        let _first = h.rx.recv().await.unwrap();
        let _stale = h.rx.recv().await.unwrap();
        let fresh = h.rx.recv().await.unwrap();
        assert!(!fresh.stale);
        let calls = h.calls.lock().unwrap().clone();
        let gaps: Vec<u64> = calls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        // 1 s after the answer, then 1, 2, 4, 4 (capped), then 4 before success.
        assert_eq!(gaps, [1, 1, 2, 4, 4, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_before_any_answer_send_nothing_but_show_in_status() {
        let mut h = start(
            vec![Step::Fail("nxdomain"), Step::Answer(vec!["a:1"], S)],
            Timing::default(),
        );
        let first = h.rx.recv().await.unwrap();
        assert_eq!(first.generation, 1);
        assert!(!first.stale);
        let s = h.status.lock().unwrap().clone();
        assert_eq!(s.refreshes_failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn empty_answer_is_held_for_the_grace_period_then_believed() {
        let grace = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut h = start(
            vec![
                Step::Answer(vec!["a:1"], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
            ],
            Timing {
                empty_grace: grace,
                ..Timing::default()
            },
        );
        assert_eq!(addrs(&h.rx.recv().await.unwrap()), ["a:1"]);
        let empty = h.rx.recv().await.unwrap();
        assert!(empty.targets.is_empty());
        // First empty answer at t=10 s, believed at t=40 s (the grace timer,
        // which coincides with the refresh at 40 s here).
        assert_eq!((Instant::now() - t0).as_secs(), 40);
        assert_eq!(empty.generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_taking_over_starts_from_the_known_set() {
        // Another runner had sent generation 7 with a:1 (a leader that died).
        let known = crate::Known {
            targets: vec![pb::Target {
                address: "a:1".into(),
                weight: 1,
                ..Default::default()
            }],
            generation: 7,
            ..Default::default()
        };
        let grace = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut h = start_known(
            vec![
                // An error keeps a:1 (stale), never empties it.
                Step::Fail("timeout"),
                // The same set again: fresh, nothing else changes.
                Step::Answer(vec!["a:1"], Duration::from_secs(10)),
                // An empty answer is held for the grace period.
                Step::Answer(vec![], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
                Step::Answer(vec![], Duration::from_secs(10)),
            ],
            Timing {
                empty_grace: grace,
                ..Timing::default()
            },
            Some(known),
        );
        let stale = h.rx.recv().await.unwrap();
        assert_eq!(
            (addrs(&stale), stale.stale, stale.generation),
            (vec!["a:1"], true, 8)
        );
        let fresh = h.rx.recv().await.unwrap();
        assert_eq!(
            (addrs(&fresh), fresh.stale, fresh.generation),
            (vec!["a:1"], false, 9)
        );
        let empty = h.rx.recv().await.unwrap();
        assert!(empty.targets.is_empty());
        assert_eq!(empty.generation, 10);
        assert!(
            Instant::now() - t0 >= grace,
            "the empty answer was believed only after the grace period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_then_targets_again_within_grace_sends_nothing() {
        let mut h = start(
            vec![
                Step::Answer(vec!["a:1"], S),
                Step::Answer(vec![], S),
                Step::Answer(vec!["a:1"], S),
                Step::Answer(vec!["b:1"], S),
            ],
            Timing::default(),
        );
        assert_eq!(addrs(&h.rx.recv().await.unwrap()), ["a:1"]);
        let next = h.rx.recv().await.unwrap();
        assert_eq!(addrs(&next), ["b:1"]);
        assert_eq!(next.generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_watch_that_went_empty_is_believed_when_the_grace_timer_fires() {
        // After the empty answer the source blocks forever (script exhausted).
        let t0 = Instant::now();
        let mut h = start(
            vec![
                Step::Answer(vec!["a:1"], Duration::ZERO),
                Step::Answer(vec![], Duration::ZERO),
            ],
            Timing {
                empty_grace: Duration::from_secs(5),
                ..Timing::default()
            },
        );
        assert_eq!(addrs(&h.rx.recv().await.unwrap()), ["a:1"]);
        let empty = h.rx.recv().await.unwrap();
        assert!(empty.targets.is_empty());
        assert_eq!((Instant::now() - t0).as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_during_the_grace_period_never_empties_the_set() {
        let mut h = start(
            vec![
                Step::Answer(vec!["a:1"], S),
                Step::Answer(vec![], S),
                Step::Fail("timeout"),
                Step::Fail("timeout"),
                Step::Slow(Duration::from_secs(120), vec!["a:1"]),
            ],
            Timing {
                empty_grace: Duration::from_secs(3),
                ..Timing::default()
            },
        );
        assert_eq!(addrs(&h.rx.recv().await.unwrap()), ["a:1"]);
        let stale = h.rx.recv().await.unwrap();
        assert!(stale.stale);
        assert_eq!(addrs(&stale), ["a:1"]);
        // Long past the grace period the set is still the old one, stale
        // until the slow answer arrives.
        let fresh = h.rx.recv().await.unwrap();
        assert!(!fresh.stale);
        assert_eq!(addrs(&fresh), ["a:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_grace_believes_an_empty_answer_at_once() {
        let mut h = start(
            vec![Step::Answer(vec!["a:1"], S), Step::Answer(vec![], S)],
            Timing {
                empty_grace: Duration::ZERO,
                ..Timing::default()
            },
        );
        let _ = h.rx.recv().await.unwrap();
        assert!(h.rx.recv().await.unwrap().targets.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn health_or_weight_change_is_a_change() {
        let (tx, mut rx) = mpsc::channel(4);
        struct Weights(u32);
        impl Source for Weights {
            async fn next(&mut self) -> Result<Answer, SourceError> {
                self.0 += 1;
                let mut a = answer(&["a:1"], S);
                a.targets[0].weight = self.0.min(2);
                Ok(a)
            }
        }
        let task = tokio::spawn(run(
            "api".into(),
            SourceKind::Consul,
            Weights(0),
            Timing::default(),
            tx,
            "test_discovery",
            Start {
                status: new_status("api", SourceKind::Consul),
                known: None,
            },
        ));
        assert_eq!(rx.recv().await.unwrap().targets[0].weight, 1);
        let d = rx.recv().await.unwrap();
        assert_eq!((d.targets[0].weight, d.generation), (2, 2));
        // Weight stays 2 from now on: nothing more within an hour.
        let more = tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await;
        assert!(more.is_err());
        task.abort();
    }

    /// A recorder that keeps the last value of every series, rendered as
    /// `name{k=v,…}` (labels in the order given).
    mod recorder {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};

        use metrics::{
            Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
            SharedString, Unit,
        };

        type Values = Arc<Mutex<HashMap<String, f64>>>;

        struct Cell(String, Values);

        impl CounterFn for Cell {
            fn increment(&self, v: u64) {
                *self.1.lock().unwrap().entry(self.0.clone()).or_default() += v as f64;
            }
            fn absolute(&self, v: u64) {
                self.1.lock().unwrap().insert(self.0.clone(), v as f64);
            }
        }

        impl GaugeFn for Cell {
            fn increment(&self, v: f64) {
                *self.1.lock().unwrap().entry(self.0.clone()).or_default() += v;
            }
            fn decrement(&self, v: f64) {
                *self.1.lock().unwrap().entry(self.0.clone()).or_default() -= v;
            }
            fn set(&self, v: f64) {
                self.1.lock().unwrap().insert(self.0.clone(), v);
            }
        }

        struct Keeper(Values);

        fn render(key: &Key) -> String {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            format!("{}{{{}}}", key.name(), labels.join(","))
        }

        impl Recorder for Keeper {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
                Counter::from_arc(Arc::new(Cell(render(key), self.0.clone())))
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
                Gauge::from_arc(Arc::new(Cell(render(key), self.0.clone())))
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }

        /// The process-wide recorder of this test binary (installed once).
        pub fn values() -> Values {
            static VALUES: OnceLock<Values> = OnceLock::new();
            VALUES
                .get_or_init(|| {
                    let values = Values::default();
                    let _ = metrics::set_global_recorder(Keeper(values.clone()));
                    values
                })
                .clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_follow_targets_refreshes_and_staleness() {
        let values = recorder::values();
        let get = |k: &str| values.lock().unwrap().get(k).copied();
        let (tx, mut rx) = mpsc::channel(8);
        let fake = Fake {
            script: Arc::new(Mutex::new(
                vec![
                    Step::Answer(vec!["a:1", "b:1"], S),
                    Step::Fail("down"),
                    Step::Answer(vec!["a:1"], S),
                ]
                .into(),
            )),
            calls: Arc::new(Mutex::new(Vec::new())),
        };
        let task = tokio::spawn(run(
            "metered".into(),
            SourceKind::Consul,
            fake,
            Timing::default(),
            tx,
            "m_discovery",
            Start {
                status: new_status("metered", SourceKind::Consul),
                known: None,
            },
        ));
        let targets = "m_discovery_targets{upstream=metered,source=consul}";
        let ok = "m_discovery_refresh_total{upstream=metered,source=consul,result=ok}";
        let err = "m_discovery_refresh_total{upstream=metered,source=consul,result=error}";
        let stale = "m_discovery_stale{upstream=metered}";
        let last = "m_discovery_last_success_timestamp_seconds{upstream=metered}";
        rx.recv().await.unwrap();
        assert_eq!(
            (get(targets), get(ok), get(stale)),
            (Some(2.0), Some(1.0), Some(0.0))
        );
        assert!(get(last).is_some_and(|t| t > 1.6e9));
        assert!(rx.recv().await.unwrap().stale);
        assert_eq!(
            (get(targets), get(err), get(stale)),
            (Some(2.0), Some(1.0), Some(1.0))
        );
        rx.recv().await.unwrap();
        assert_eq!(
            (get(targets), get(ok), get(stale)),
            (Some(1.0), Some(2.0), Some(0.0))
        );
        task.abort();
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let t = Timing::default();
        let secs: Vec<u64> = (1..=7).map(|n| backoff(&t, n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(&t, u32::MAX), Duration::from_secs(30));
    }
}
