//! Shared by the discovery integration tests: run a [`Discovery`] for one
//! upstream and keep every set it sends, for tests to poll.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_discovery::{Discovered, Discovery};
use sentinel_proto as pb;

pub struct Run {
    pub discovery: Discovery,
    sets: Arc<Mutex<Vec<Discovered>>>,
    collector: tokio::task::JoinHandle<()>,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.discovery.stop_all();
        self.collector.abort();
    }
}

pub fn upstream(name: &str, source: pb::discovery::Source) -> pb::Upstream {
    pb::Upstream {
        name: name.into(),
        discovery: Some(pb::Discovery {
            source: Some(source),
        }),
        ..Default::default()
    }
}

pub fn start(upstream: pb::Upstream) -> Run {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let discovery = Discovery::new(tx, "sentinel_test_discovery");
    discovery.reconcile(&[upstream]);
    let sets = Arc::new(Mutex::new(Vec::new()));
    let keep = sets.clone();
    let collector = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            keep.lock().unwrap().push(d);
        }
    });
    Run {
        discovery,
        sets,
        collector,
    }
}

impl Run {
    /// The last set sent, if any.
    pub fn last(&self) -> Option<Discovered> {
        self.sets.lock().unwrap().last().cloned()
    }

    pub fn all(&self) -> Vec<Discovered> {
        self.sets.lock().unwrap().clone()
    }

    /// Waits until the last set satisfies `check`; panics with the sets seen
    /// otherwise.
    pub async fn until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Discovered) -> bool,
    ) -> Discovered {
        let ok = sentinel_tests::wait_for(timeout, || {
            let ok = self.last().is_some_and(|d| check(&d));
            async move { ok }
        })
        .await;
        assert!(
            ok,
            "timed out waiting for {what}; sets sent: {:#?}; status: {:#?}",
            self.all(),
            self.discovery.status()
        );
        self.last().unwrap()
    }

    /// Waits until the last set has exactly these addresses (any order),
    /// not stale.
    pub async fn until_addresses(&self, want: &[&str], timeout: Duration) -> Discovered {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.until(&format!("targets {want:?}"), timeout, |d| {
            !d.stale && addresses(d) == want
        })
        .await
    }
}

pub fn addresses(d: &Discovered) -> Vec<String> {
    d.targets.iter().map(|t| t.address.clone()).collect()
}

/// Generations must increase by one per set.
pub fn assert_generations(run: &Run) {
    let gens: Vec<u64> = run.all().iter().map(|d| d.generation).collect();
    let want: Vec<u64> = (1..=gens.len() as u64).collect();
    assert_eq!(gens, want, "generation increases by one per set sent");
}
