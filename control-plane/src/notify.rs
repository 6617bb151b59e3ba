//! Keeps this replica's active configuration current when another replica
//! changes it: PostgreSQL LISTEN/NOTIFY for speed, plus a poll that catches
//! anything missed (a dropped listener connection, SQLite).

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
        }
    });
}

async fn listen(fleet: Arc<Fleet>) {
    loop {
        match sqlx::postgres::PgListener::connect(&fleet.store.url).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen("sentinel_activation").await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    loop {
                        match listener.recv().await {
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
