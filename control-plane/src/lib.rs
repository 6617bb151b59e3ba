//! `sentinel-cp`: the fleet's source of truth.
//!
//! - `store/` — versions, activations, nodes, tokens, audit (PostgreSQL or
//!   SQLite through one implementation);
//! - `rollout` — apply (validate + compile + store + activate) and rollback;
//! - `fleet` — the active configuration shared by every stream, sessions,
//!   health reports;
//! - `stream/` — the tonic delta stream and health-report stream;
//! - `api/` — the axum REST API with token auth and the OpenAPI document;
//! - `notify` — LISTEN/NOTIFY and polling across replicas;
//! - `server` — wiring: listeners, TLS, shutdown.

pub mod api;
pub mod fleet;
pub mod notify;
pub mod rollout;
pub mod server;
pub mod store;
pub mod stream;
pub mod telemetry;
