//! The background writer of node state: streams record what happens to a
//! node (`NodeUpdate`s) without ever waiting for the database, and this
//! task writes it — coalesced, bounded, and never stalled by one bad row.
//!
//! - **Coalescing.** The queue is a map from node id to one pending
//!   [`NodeChange`]: the merged state of the node's newest session (hello,
//!   latest ACK, current NACK, end) plus a short list of NACK events. A
//!   thousand ACKs of one node while PostgreSQL is down are one entry, so
//!   memory is bounded by the number of nodes, not of updates
//!   (`sentinel_cp_node_updates_queued`).
//! - **Availability.** While the database is unavailable
//!   (`StoreError::Unavailable`) the batch goes back into the map — merged
//!   with whatever arrived meanwhile — and is retried with exponential
//!   backoff (250 ms doubling to 10 s).
//! - **Poison rows.** A batch the database refuses for any other reason is
//!   retried one change at a time; a change that is refused alone is
//!   dropped with a log line and `sentinel_cp_node_updates_dropped_total
//!   {reason="rejected"}`, and the writer goes on. (Text is sanitised when
//!   the change is built, so NUL bytes never get that far.)
//! - **Liveness.** Before its first write the task declares its replica
//!   started (rows a previous process of the same name left connected are
//!   closed), then writes the replica heartbeat every [`HEARTBEAT`], which
//!   also refreshes `last_seen` of the nodes it holds.
//!
//! The database side is a [`NodeSink`], the store in production, so the
//! retry logic can be tested with paused time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{NodeChange, Result, Store, StoreError, now_ms};
use crate::changes::NodeUpdate;

/// How often the replica heartbeat (and `last_seen` of held nodes) is written.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Changes written per transaction.
const BATCH: usize = 500;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where node changes go.
pub trait NodeSink: Send + Sync + 'static {
    /// This replica starts: close what a previous process of its name left.
    fn start(&self) -> impl Future<Output = Result<()>> + Send;
    /// Writes the changes in one transaction.
    fn write(&self, changes: &[NodeChange]) -> impl Future<Output = Result<()>> + Send;
    /// This replica is alive.
    fn heartbeat(&self) -> impl Future<Output = Result<()>> + Send;
}

/// The store, on behalf of one replica.
pub struct StoreSink {
    pub store: Store,
    pub replica: String,
}

impl NodeSink for StoreSink {
    async fn start(&self) -> Result<()> {
        self.store.replica_started(&self.replica).await
    }

    async fn write(&self, changes: &[NodeChange]) -> Result<()> {
        self.store.write_node_changes(changes, &self.replica).await
    }

    async fn heartbeat(&self) -> Result<()> {
        self.store.heartbeat(&self.replica).await
    }
}

#[derive(Default)]
struct Queue {
    pending: HashMap<String, NodeChange>,
    /// Ids of the batch being written.
    in_flight: HashSet<String>,
}

impl Queue {
    fn len(&self) -> usize {
        self.pending.len()
            + self
                .in_flight
                .iter()
                .filter(|id| !self.pending.contains_key(*id))
                .count()
    }

    /// Puts a batch that was not written back, before what came after it.
    fn requeue(&mut self, batch: Vec<NodeChange>) -> usize {
        let mut dropped = 0;
        for mut change in batch {
            if let Some(later) = self.pending.remove(&change.id) {
                dropped += change.absorb(later);
            }
            self.pending.insert(change.id.clone(), change);
        }
        self.in_flight.clear();
        dropped
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Set when the last handle is gone: flush what is queued, then stop.
    closed: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self) {
        let n = self.queue().len();
        metrics::gauge!("sentinel_cp_node_updates_queued").set(n as f64);
    }
}

fn count_dropped(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("sentinel_cp_node_updates_dropped_total", "reason" => reason)
            .increment(n as u64);
    }
}

/// The handle streams record node updates through. Cheap to clone; the
/// task stops (after a last flush) when every clone is dropped.
#[derive(Clone)]
pub struct NodeWriter {
    shared: Arc<Shared>,
    _handles: Arc<Handles>,
}

struct Handles(Arc<Shared>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.0.wake.notify_one();
    }
}

impl NodeWriter {
    /// Starts the writer task for `replica` on `store`.
    pub fn spawn(store: Store, replica: String) -> NodeWriter {
        Self::spawn_with(StoreSink { store, replica })
    }

    /// Starts the writer task on any sink.
    pub fn spawn_with<S: NodeSink>(sink: S) -> NodeWriter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closed: Default::default(),
        });
        tokio::spawn(run(sink, Arc::clone(&shared)));
        NodeWriter {
            _handles: Arc::new(Handles(Arc::clone(&shared))),
            shared,
        }
    }

    /// Queues an update; never waits for the database.
    pub fn record(&self, update: NodeUpdate) {
        let change = NodeChange::from_update(update, now_ms());
        let dropped = {
            let mut q = self.shared.queue();
            match q.pending.get_mut(&change.id) {
                Some(pending) => pending.absorb(change),
                None => {
                    q.pending.insert(change.id.clone(), change);
                    0
                }
            }
        };
        count_dropped("overflow", dropped);
        self.shared.wake.notify_one();
    }

    /// Nodes with state not written yet (pending or being written).
    pub fn queued(&self) -> usize {
        self.shared.queue().len()
    }
}

struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

enum Flushed {
    All,
    Unavailable(String),
}

async fn run<S: NodeSink>(sink: S, shared: Arc<Shared>) {
    let mut backoff = Backoff(BACKOFF_MIN);
    while let Err(e) = sink.start().await {
        tracing::warn!(error = %e, "cannot register this replica yet; node state is queued");
        tokio::time::sleep(backoff.next()).await;
    }
    backoff.reset();
    let sink = Arc::new(sink);
    // The heartbeat has its own task: a long flush must never make this
    // replica look dead.
    let beating = Arc::clone(&sink);
    let heartbeat = tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.tick().await;
            if let Err(e) = beating.heartbeat().await {
                tracing::debug!(error = %e, "cannot write the replica heartbeat");
            }
        }
    });
    let mut down = false;
    loop {
        match flush(sink.as_ref(), &shared).await {
            Flushed::All => {
                if down {
                    tracing::info!("node state written again");
                    down = false;
                }
                backoff.reset();
            }
            Flushed::Unavailable(e) => {
                if !down {
                    tracing::warn!(error = %e, queued = shared.queue().len(), "cannot record node state; queued per node and retried");
                    down = true;
                }
                shared.publish();
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        }
        shared.publish();
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            heartbeat.abort();
            return;
        }
        shared.wake.notified().await;
    }
}

/// Writes everything queued, batch by batch.
async fn flush<S: NodeSink>(sink: &S, shared: &Shared) -> Flushed {
    loop {
        let batch: Vec<NodeChange> = {
            let mut q = shared.queue();
            let ids: Vec<String> = q.pending.keys().take(BATCH).cloned().collect();
            let batch: Vec<NodeChange> = ids
                .iter()
                .filter_map(|id| q.pending.remove(id))
                .filter(|c| !c.is_empty())
                .collect();
            q.in_flight = ids.into_iter().collect();
            batch
        };
        if batch.is_empty() {
            shared.queue().in_flight.clear();
            return Flushed::All;
        }
        // The backlog as it stands, batch by batch: after a fleet-wide
        // connect it takes seconds to write.
        shared.publish();
        match sink.write(&batch).await {
            Ok(()) => shared.queue().in_flight.clear(),
            Err(StoreError::Unavailable(e)) => {
                let dropped = shared.queue().requeue(batch);
                count_dropped("overflow", dropped);
                return Flushed::Unavailable(e);
            }
            Err(refused) => {
                tracing::debug!(error = %refused, "a batch of node state was refused; writing it change by change");
                let mut rest = batch.into_iter();
                while let Some(change) = rest.next() {
                    match sink.write(std::slice::from_ref(&change)).await {
                        Ok(()) => {}
                        Err(StoreError::Unavailable(e)) => {
                            let mut back = vec![change];
                            back.extend(rest);
                            let dropped = shared.queue().requeue(back);
                            count_dropped("overflow", dropped);
                            return Flushed::Unavailable(e);
                        }
                        Err(e) => {
                            tracing::warn!(node = %change.id, error = %e, "dropping node state the database refuses");
                            count_dropped("rejected", 1);
                        }
                    }
                }
                shared.queue().in_flight.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Epoch;

    /// A database that can be down, and refuses changes of node `poison`.
    #[derive(Clone, Default)]
    struct FakeSink(Arc<Mutex<FakeDb>>);

    #[derive(Default)]
    struct FakeDb {
        down: bool,
        attempts: usize,
        written: Vec<NodeChange>,
    }

    impl FakeSink {
        fn db(&self) -> MutexGuard<'_, FakeDb> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl NodeSink for FakeSink {
        async fn start(&self) -> Result<()> {
            Ok(())
        }

        async fn write(&self, changes: &[NodeChange]) -> Result<()> {
            let mut db = self.db();
            db.attempts += 1;
            if db.down {
                return Err(StoreError::Unavailable("stopped".into()));
            }
            if changes.iter().any(|c| c.id == "poison") {
                return Err(StoreError::Other("refused".into()));
            }
            db.written.extend(changes.iter().cloned());
            Ok(())
        }

        async fn heartbeat(&self) -> Result<()> {
            Ok(())
        }
    }

    fn ack(id: &str, version: i64) -> NodeUpdate {
        NodeUpdate::Ack {
            id: id.into(),
            epoch: Epoch(1),
            version,
            hash: String::new(),
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_change_is_dropped_and_the_rest_written() {
        let sink = FakeSink::default();
        let writer = NodeWriter::spawn_with(sink.clone());
        writer.record(ack("poison", 1));
        writer.record(ack("a", 1));
        writer.record(ack("b", 1));
        settle().await;
        let mut ids: Vec<String> = sink.db().written.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(writer.queued(), 0);
        writer.record(ack("c", 2));
        settle().await;
        assert_eq!(sink.db().written.last().map(|c| c.id.as_str()), Some("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_database_is_down_retries_back_off_and_state_coalesces() {
        let sink = FakeSink::default();
        sink.db().down = true;
        let writer = NodeWriter::spawn_with(sink.clone());
        for v in 0..1000 {
            writer.record(ack("a", v));
            writer.record(ack("b", v));
        }
        settle().await;
        assert_eq!(writer.queued(), 2);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let attempts = sink.db().attempts;
        assert!(
            (5..=15).contains(&attempts),
            "{attempts} attempts in a minute: no backoff"
        );
        sink.db().down = false;
        tokio::time::sleep(BACKOFF_MAX).await;
        settle().await;
        let db = sink.db();
        assert_eq!(db.written.len(), 2, "one change per node");
        assert!(
            db.written
                .iter()
                .all(|c| c.ack.as_ref().map(|a| a.0) == Some(999))
        );
        drop(db);
        assert_eq!(writer.queued(), 0);
    }
}
