//! Endpoint sets on their way to the store: latest-wins per upstream, in
//! the background, so the intake (and the streams behind it) never wait
//! for the database.
//!
//! The queue is a map upstream → newest set: memory is bounded by the
//! number of discovered upstreams however long the database is away. A
//! batch that fails because the database is unavailable goes back into the
//! map (unless a newer set of the same upstream arrived meanwhile) and is
//! retried with backoff (250 ms doubling to 10 s); a batch the database
//! refuses for another reason is dropped with a log line and
//! `sentinel_cp_discovery_store_writes_total{result="rejected"}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::changes::EndpointSet;
use crate::store::{HISTORY_PER_UPSTREAM, Store, StoreError};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct EndpointWriter {
    pending: Arc<Mutex<HashMap<String, EndpointSet>>>,
    wake: Arc<Notify>,
}

impl EndpointWriter {
    pub fn spawn(store: Store) -> EndpointWriter {
        let w = EndpointWriter {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
        };
        tokio::spawn(w.clone().run(store));
        w
    }

    /// Queues sets (a newer set of the same upstream replaces a queued one).
    pub fn record(&self, sets: impl IntoIterator<Item = EndpointSet>) {
        if let Ok(mut p) = self.pending.lock() {
            for s in sets {
                p.insert(s.upstream.clone(), s);
            }
            metrics::gauge!("sentinel_cp_discovery_store_queued").set(p.len() as f64);
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<EndpointSet> {
        self.pending
            .lock()
            .map(|mut p| p.drain().map(|(_, s)| s).collect())
            .unwrap_or_default()
    }

    async fn run(self, store: Store) {
        let mut backoff = BACKOFF_MIN;
        loop {
            self.wake.notified().await;
            loop {
                let mut batch = self.take();
                if batch.is_empty() {
                    break;
                }
                batch.sort_by(|a, b| a.upstream.cmp(&b.upstream));
                match store
                    .write_endpoint_sets(&batch, HISTORY_PER_UPSTREAM)
                    .await
                {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        metrics::counter!("sentinel_cp_discovery_store_writes_total", "result" => "ok")
                            .increment(1);
                    }
                    Err(StoreError::Unavailable(e)) => {
                        metrics::counter!("sentinel_cp_discovery_store_writes_total", "result" => "unavailable")
                            .increment(1);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot store discovered endpoints; retrying");
                        if let Ok(mut p) = self.pending.lock() {
                            for s in batch {
                                p.entry(s.upstream.clone()).or_insert(s);
                            }
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Err(e) => {
                        metrics::counter!("sentinel_cp_discovery_store_writes_total", "result" => "rejected")
                            .increment(1);
                        tracing::error!(error = %e, sets = batch.len(), "the database refused discovered endpoints; dropped");
                    }
                }
            }
        }
    }
}
