//! `sentinel`: Sentinel's data plane, a reverse proxy built on tokio and
//! hyper 1.
//!
//! A [`runtime::Runtime`] is built from wire resources (a
//! `sentinel_config::Snapshot`) and swapped in atomically by
//! [`apply::Proxy::apply`]; the request path ([`proxy`]) reads it with one
//! `ArcSwap` load. Standalone mode ([`standalone`]) compiles a KDL file
//! locally and applies it through that same path.
//!
//! Control-plane mode ([`stream`]) applies responses from `sentinel-cp`
//! through the same path and keeps a last-good copy on disk ([`cache`]).
//!
//! Map: `routing` (route matching), `upstream/` (`balance`, `health`,
//! `breaker`, pool and retry budget in `mod.rs`), `ratelimit`, `agents`
//! (external agents: client, breaker, health checks, decisions), `listeners`
//! (accept, TLS, limits, drain), `admin` (admin listener), `telemetry`
//! (logs and metrics, with logging that follows the live config), `workers`
//! (the worker-thread count fixed at start), `error` (the one error type and
//! its statuses), `timed_body` (deadlines on streamed bodies, and the
//! upstream claim held until a response body ends).
//!
//! Invariant: the request path never takes a lock, and building a runtime
//! never runs on a tokio worker (see `apply::off_workers`).

pub mod admin;
pub mod agents;
pub mod apply;
pub mod body;
pub mod cache;
pub use sentinel_telemetry::clock;
pub mod discovered;
pub mod error;
pub mod listeners;
pub mod proxy;
pub mod ratelimit;
pub mod routing;
pub mod runtime;
pub mod standalone;
pub mod stream;
pub mod telemetry;
pub mod timed_body;
pub mod tls;
pub mod tracer;
pub mod upstream;
pub mod workers;
