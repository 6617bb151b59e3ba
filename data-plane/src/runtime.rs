//! The runtime: everything the request path needs, built from one snapshot.
//!
//! [`Runtime::build`] turns a checked [`Snapshot`] into a router, upstreams
//! (with pools, balancers, health), rate limiters and listener specs,
//! resolving `${VAR}` references against this proxy's environment. Any
//! problem is a [`BuildError`] naming the resource, which becomes a NACK or
//! a failed reload; the running runtime is untouched until a build succeeds.
//! Upstreams, limiters and agents whose resources did not change are taken
//! over from the previous runtime as they are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sentinel_config::{Snapshot, env};
use sentinel_proto as pb;

use crate::agents::{Address, Agent};
use crate::ratelimit::RateLimiter;
use crate::routing::Router;
use crate::upstream::Upstream;

/// Where the live configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    File { path: String },
    ControlPlane { url: String },
    Cache { path: String },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigVersion {
    /// Content hash of the whole snapshot.
    pub hash: String,
    /// Version number at the control plane (0 in standalone mode).
    pub number: u64,
    pub origin: Origin,
    pub applied_unix_ms: u64,
}

/// A listener as this proxy will serve it.
#[derive(Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub resource: pb::Listener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ListenerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSpec")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

/// A snapshot this proxy cannot apply, and which resource is at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct BuildError {
    pub resource: pb::ResourceRef,
    pub message: String,
}

impl BuildError {
    pub fn new(kind: pb::ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self {
            resource: pb::ResourceRef {
                r#type: kind as i32,
                name: name.to_string(),
            },
            message: message.into(),
        }
    }
}

pub struct Runtime {
    pub version: ConfigVersion,
    pub snapshot: Snapshot,
    pub router: Router,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub limiters: HashMap<String, Arc<RateLimiter>>,
    /// External agents by name (connections, breakers and health survive
    /// swaps when their resource did not change).
    pub agents: HashMap<String, Arc<Agent>>,
    pub listeners: Vec<ListenerSpec>,
    pub settings: pb::Settings,
    /// Resource versions, keyed by (type, name), as held for the stream.
    pub versions: Vec<pb::ResourceVersion>,
}

pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn resolve(env_lookup: Env<'_>, value: &str) -> Result<String, String> {
    env::expand(value, env_lookup).map_err(|e| e.to_string())
}

impl Runtime {
    pub fn build(
        snapshot: Snapshot,
        version: ConfigVersion,
        previous: Option<&Runtime>,
        env_lookup: Env<'_>,
    ) -> Result<Runtime, BuildError> {
        use pb::ResourceType as T;
        snapshot
            .check_references()
            .map_err(|e| match e.resource() {
                Some(r) => BuildError {
                    resource: r.clone(),
                    message: e.to_string(),
                },
                None => BuildError::new(T::Settings, pb::SETTINGS_NAME, e.to_string()),
            })?;
        let resources = snapshot.resources();
        let versions_by_key: HashMap<(i32, &str), &str> = resources
            .iter()
            .map(|r| ((r.r#type, r.name.as_str()), r.version.as_str()))
            .collect();
        let version_of = |kind: T, name: &str| {
            versions_by_key
                .get(&(kind as i32, name))
                .copied()
                .unwrap_or_default()
        };

        // OTLP export is not part of the runtime: `apply` hands the
        // tracing settings to `tracer` once the runtime is live.
        let settings = snapshot.settings;
        // The collector is connected lazily (an unreachable one costs
        // dropped spans, never a refused config); an endpoint the gRPC
        // client cannot even parse is refused here, so it is NACKed.
        if let Some(t) = settings
            .observability
            .as_ref()
            .and_then(|o| o.tracing.as_ref())
            .filter(|t| t.enabled)
        {
            tonic::transport::Endpoint::from_shared(t.otlp_endpoint.clone()).map_err(|e| {
                BuildError::new(
                    T::Settings,
                    pb::SETTINGS_NAME,
                    format!(
                        "observability.tracing: collector endpoint `{}` is not usable: {e}",
                        t.otlp_endpoint
                    ),
                )
            })?;
        }

        let mut listeners = Vec::new();
        for l in &snapshot.listeners {
            let fail = |m: String| BuildError::new(T::Listener, &l.name, m);
            let address = resolve(env_lookup, &l.address).map_err(fail)?;
            let addr: SocketAddr = address.parse().map_err(|_| {
                fail(format!(
                    "address `{address}` is not an IP:port this proxy can bind"
                ))
            })?;
            let tls = match (&l.tls, l.protocol == pb::ListenerProtocol::Https as i32) {
                (Some(t), true) => Some(Arc::new(
                    crate::tls::server_config(t, &|s| resolve(env_lookup, s)).map_err(fail)?,
                )),
                _ => None,
            };
            listeners.push(ListenerSpec {
                name: l.name.clone(),
                addr,
                resource: l.clone(),
                tls,
            });
        }
        for (i, a) in listeners.iter().enumerate() {
            if let Some(b) = listeners[..i].iter().find(|b| b.addr == a.addr) {
                return Err(BuildError::new(
                    T::Listener,
                    &a.name,
                    format!("address {} is also used by listener `{}`", a.addr, b.name),
                ));
            }
        }

        let router = Router::new(&snapshot.routes)
            .map_err(|e| BuildError::new(T::Route, &e.route, e.reason))?;

        let mut upstreams = HashMap::new();
        for u in &snapshot.upstreams {
            let endpoints = snapshot
                .endpoints
                .iter()
                .find(|e| e.upstream == u.name)
                .cloned()
                .unwrap_or_default();
            let mut resolved = Vec::with_capacity(endpoints.targets.len());
            for t in &endpoints.targets {
                let a = resolve(env_lookup, &t.address).map_err(|m| {
                    BuildError::new(T::Endpoints, &u.name, format!("target {}: {m}", t.address))
                })?;
                resolved.push(a);
            }
            // Certificates are read on every build, so an apply or SIGHUP
            // after a rotation on disk rebuilds the upstream (its key
            // changes with the file contents).
            let tls = match &u.tls {
                Some(t) => Some(
                    crate::upstream::tls::TlsClient::build(&u.name, t, &|s| resolve(env_lookup, s))
                        .map_err(|m| BuildError::new(T::Upstream, &u.name, m))?,
                ),
                None => None,
            };
            let key = format!(
                "{}/{}/{}/{}",
                version_of(T::Upstream, &u.name),
                version_of(T::Endpoints, &u.name),
                resolved.join(","),
                tls.as_ref().map_or(0, |t| t.fingerprint())
            );
            let old = previous.and_then(|p| p.upstreams.get(&u.name));
            let upstream = match old {
                Some(old) if old.key == key => Arc::clone(old),
                _ => Upstream::build(u, &endpoints, resolved, key, old.map(|o| o.as_ref()), tls),
            };
            upstreams.insert(u.name.clone(), upstream);
        }

        let mut limiters = HashMap::new();
        for f in &snapshot.filters {
            let Some(pb::filter::Kind::RateLimit(rl)) = &f.kind else {
                return Err(BuildError::new(T::Filter, &f.name, "unknown filter kind"));
            };
            let old = previous
                .and_then(|p| p.limiters.get(&f.name))
                .filter(|l| l.cfg == *rl);
            let limiter = match old {
                Some(l) => Arc::clone(l),
                None => {
                    let url = match &rl.redis {
                        Some(r) if rl.backend == pb::RateLimitBackend::Redis as i32 => {
                            resolve(env_lookup, &r.url)
                                .map_err(|e| BuildError::new(T::Filter, &f.name, e))?
                        }
                        _ => String::new(),
                    };
                    Arc::new(
                        RateLimiter::build(&f.name, rl, &url)
                            .map_err(|e| BuildError::new(T::Filter, &f.name, e))?,
                    )
                }
            };
            limiters.insert(f.name.clone(), limiter);
        }

        let mut agents = HashMap::new();
        for a in &snapshot.agents {
            let fail = |m: String| BuildError::new(T::Agent, &a.name, m);
            let address = match &a.transport {
                Some(pb::agent::Transport::UnixSocket(p)) => {
                    Address::Unix(resolve(env_lookup, p).map_err(fail)?.into())
                }
                Some(pb::agent::Transport::Grpc(u)) => {
                    Address::Grpc(resolve(env_lookup, u).map_err(fail)?)
                }
                None => return Err(fail("no transport".into())),
            };
            let key = format!("{}/{address}", version_of(T::Agent, &a.name));
            let agent = match previous.and_then(|p| p.agents.get(&a.name)) {
                Some(old) if old.key == key => Arc::clone(old),
                _ => Agent::build(a, address, key).map_err(fail)?,
            };
            agents.insert(a.name.clone(), agent);
        }

        let versions = resources
            .iter()
            .map(|r| pb::ResourceVersion {
                r#type: r.r#type,
                name: r.name.clone(),
                version: r.version.clone(),
            })
            .collect();
        Ok(Runtime {
            version,
            router,
            upstreams,
            limiters,
            agents,
            listeners,
            settings: settings.clone(),
            snapshot: Snapshot {
                settings,
                ..snapshot
            },
            versions,
        })
    }

    pub fn limits(&self) -> pb::Limits {
        self.settings.limits.unwrap_or_default()
    }

    pub fn access_log(&self) -> bool {
        self.settings
            .observability
            .as_ref()
            .and_then(|o| o.logging.as_ref())
            .is_none_or(|l| l.access_log)
    }
}
