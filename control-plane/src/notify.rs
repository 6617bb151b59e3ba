//! Keeps this replica's active configuration current when another replica
//! changes it: PostgreSQL LISTEN/NOTIFY for speed, plus a poll that catches
//! anything missed (a dropped listener connection, SQLite). The same two
//! paths carry discovered endpoint sets from the discovery leader
//! (`sentinel_endpoints`) to the replicas that do not lead, and changes of
//! the open rollout (`sentinel_rollout`) to every replica.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::Fleet;
use crate::store::Dialect;

pub fn spawn(fleet: Arc<Fleet>, poll: Duration) {
    if fleet.store.dialect == Dialect::Postgres {
        tokio::spawn(listen(Arc::clone(&fleet)));
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        loop {
            tick.tick().await;
            if let Err(e) = fleet.refresh().await {
                tracing::debug!(error = %e, "poll of the active configuration failed");
            }
            if let Err(e) = crate::discovery::load(&fleet).await {
                tracing::debug!(error = %e, "poll of the discovered endpoints failed");
            }
            if let Err(e) = fleet.load_rollout().await {
                tracing::debug!(error = %e, "poll of the open rollout failed");
            }
            match fleet.store.connected_nodes().await {
                Ok(n) => fleet.set_fleet_size(n),
                Err(e) => tracing::debug!(error = %e, "poll of the fleet's size failed"),
            }
        }
    });
}

async fn listen(fleet: Arc<Fleet>) {
    loop {
        match sqlx::postgres::PgListener::connect(&fleet.store.url).await {
            Ok(mut listener) => {
                if let Err(e) = listener
                    .listen_all([
                        "sentinel_activation",
                        "sentinel_endpoints",
                        "sentinel_rollout",
                    ])
                    .await
                {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    loop {
                        match listener.recv().await {
                            Ok(n) if n.channel() == "sentinel_endpoints" => {
                                if let Err(e) = crate::discovery::load(&fleet).await {
                                    tracing::warn!(error = %e, "cannot load discovered endpoints after a notification");
                                }
                            }
                            Ok(n) if n.channel() == "sentinel_rollout" => {
                                if let Err(e) = fleet.load_rollout().await {
                                    tracing::warn!(error = %e, "cannot load the open rollout after a notification");
                                }
                            }
                            Ok(n) => {
                                tracing::debug!(version = n.payload(), "activation notified");
                                if let Err(e) = fleet.refresh().await {
                                    tracing::warn!(error = %e, "cannot reload after a notification");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "notification listener lost its connection");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot connect the notification listener"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
