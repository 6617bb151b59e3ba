//! `sentinel-cp`: the fleet's source of truth.
//!
//! - `store/` — versions, activations, nodes, tokens, audit (PostgreSQL or
//!   SQLite through one implementation);
//! - `rollout` — apply (validate + compile + store + activate) and rollback;
//! - `rollouts/` — staged rollouts: plans, gates, the state machine and
//!   its driver;
//! - `fleet` — the active configuration shared by every stream, sessions,
//!   health reports;
//! - `health` — fleet health: the quorum over proxies' reports, and the
//!   marks (with hysteresis) that push a down target as unhealthy;
//! - `identity` — who is calling: the token cache shared by the API and
//!   the streams, and node identity on the streams (certificate or join
//!   token);
//! - `stream/` — the tonic delta stream and health-report stream;
//! - `api/` — the axum REST API with token auth and the OpenAPI document;
//! - `discovery/` — discovered endpoints into the fleet: intake, store
//!   writer, leader election (the sources are the `sentinel-discovery`
//!   crate);
//! - `notify` — LISTEN/NOTIFY and polling across replicas;
//! - `sampled` — the gauges sampled once a second (nodes behind, store up);
//! - `server` — wiring: listeners, TLS, shutdown.

pub mod api;
pub mod changes;
pub mod discovery;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod leader;
pub mod notify;
pub mod rollout;
pub mod rollouts;
pub mod sampled;
pub mod server;
pub mod store;
pub mod stream;
pub mod telemetry;
