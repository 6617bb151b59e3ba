//! [`Snapshot`]: a complete, consistent set of typed wire resources.
//!
//! The compiler produces one; the control plane stores and streams its
//! encoded [`pb::Resource`]s; the proxy rebuilds one from what it received
//! and checks it with [`Snapshot::check_references`] before building a
//! runtime. Encoding is deterministic: resources are sorted by name, set-like
//! lists are sorted, and prost writes fields in tag order, so equal meaning
//! gives equal bytes and equal hashes.

use std::collections::BTreeSet;

use prost::Message;
use sentinel_proto as pb;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Every resource of one configuration, typed.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Snapshot {
    pub settings: pb::Settings,
    pub listeners: Vec<pb::Listener>,
    pub routes: Vec<pb::Route>,
    pub upstreams: Vec<pb::Upstream>,
    pub endpoints: Vec<pb::Endpoints>,
    pub filters: Vec<pb::Filter>,
    pub agents: Vec<pb::Agent>,
}

/// Counts of each resource type, for one-line summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub listeners: usize,
    pub routes: usize,
    pub upstreams: usize,
    pub targets: usize,
    pub filters: usize,
    pub agents: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} listeners, {} routes, {} upstreams ({} static targets), {} filters, {} agents",
            self.listeners, self.routes, self.upstreams, self.targets, self.filters, self.agents
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("{resource}: cannot decode: {error}")]
    Decode {
        resource: pb::ResourceRef,
        error: String,
    },
    #[error("{resource}: version {claimed} does not match its content ({actual})")]
    Version {
        resource: pb::ResourceRef,
        claimed: String,
        actual: String,
    },
    #[error("{resource}: {error}")]
    Inconsistent {
        resource: pb::ResourceRef,
        error: String,
    },
    #[error("snapshot has no settings resource")]
    NoSettings,
}

impl SnapshotError {
    /// The resource at fault, for a NACK.
    pub fn resource(&self) -> Option<&pb::ResourceRef> {
        match self {
            SnapshotError::Decode { resource, .. }
            | SnapshotError::Version { resource, .. }
            | SnapshotError::Inconsistent { resource, .. } => Some(resource),
            SnapshotError::NoSettings => None,
        }
    }
}

fn reference(kind: pb::ResourceType, name: &str) -> pb::ResourceRef {
    pb::ResourceRef {
        r#type: kind as i32,
        name: name.to_string(),
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Wraps an encoded message as a resource whose version is its hash.
pub fn resource(kind: pb::ResourceType, name: &str, message: &impl Message) -> pb::Resource {
    let body = message.encode_to_vec();
    pb::Resource {
        r#type: kind as i32,
        name: name.to_string(),
        version: sha256_hex(&body),
        body: body.into(),
    }
}

/// The hash of a whole configuration: of every (type, name, version), sorted.
pub fn config_hash<'a>(versions: impl IntoIterator<Item = (i32, &'a str, &'a str)>) -> String {
    let mut lines: Vec<String> = versions
        .into_iter()
        .map(|(t, n, v)| format!("{t}\t{n}\t{v}\n"))
        .collect();
    lines.sort();
    sha256_hex(lines.concat().as_bytes())
}

// === impl Snapshot ===

impl Snapshot {
    /// Sorts resources by name and set-like lists, so equal meaning gives
    /// equal bytes.
    pub fn normalized(mut self) -> Self {
        self.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        self.endpoints.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        self.filters.sort_by(|a, b| a.name.cmp(&b.name));
        self.agents.sort_by(|a, b| a.name.cmp(&b.name));
        for route in &mut self.routes {
            if let Some(m) = &mut route.r#match {
                m.hosts.sort();
                m.hosts.dedup();
                m.methods.sort();
                m.methods.dedup();
                m.headers.sort_by(|a, b| {
                    (&a.name, &a.value, a.present_only).cmp(&(&b.name, &b.value, b.present_only))
                });
                m.headers.dedup();
                m.query.sort_by(|a, b| {
                    (&a.name, &a.value, a.present_only).cmp(&(&b.name, &b.value, b.present_only))
                });
                m.query.dedup();
            }
            if let Some(p) = &mut route.policies {
                for rw in [&mut p.request_headers, &mut p.response_headers]
                    .into_iter()
                    .flatten()
                {
                    rw.set.sort_by(|a, b| a.name.cmp(&b.name));
                    rw.remove.sort();
                    rw.remove.dedup();
                }
            }
        }
        for e in &mut self.endpoints {
            e.targets.sort_by(|a, b| a.address.cmp(&b.address));
        }
        for u in &mut self.upstreams {
            if let Some(r) = &mut u.retry {
                r.on_status.sort_unstable();
                r.on_status.dedup();
            }
        }
        self
    }

    /// Every resource encoded, sorted by (type, name).
    pub fn resources(&self) -> Vec<pb::Resource> {
        use pb::ResourceType as T;
        let mut out = vec![resource(T::Settings, pb::SETTINGS_NAME, &self.settings)];
        out.extend(
            self.listeners
                .iter()
                .map(|l| resource(T::Listener, &l.name, l)),
        );
        out.extend(self.routes.iter().map(|r| resource(T::Route, &r.name, r)));
        out.extend(
            self.upstreams
                .iter()
                .map(|u| resource(T::Upstream, &u.name, u)),
        );
        out.extend(
            self.endpoints
                .iter()
                .map(|e| resource(T::Endpoints, &e.upstream, e)),
        );
        out.extend(self.filters.iter().map(|f| resource(T::Filter, &f.name, f)));
        out.extend(self.agents.iter().map(|a| resource(T::Agent, &a.name, a)));
        out.sort_by(|a, b| (a.r#type, &a.name).cmp(&(b.r#type, &b.name)));
        out
    }

    /// The hash identifying this configuration's content.
    pub fn config_hash(&self) -> String {
        let resources = self.resources();
        config_hash(
            resources
                .iter()
                .map(|r| (r.r#type, r.name.as_str(), r.version.as_str())),
        )
    }

    pub fn summary(&self) -> Summary {
        Summary {
            listeners: self.listeners.len(),
            routes: self.routes.len(),
            upstreams: self.upstreams.len(),
            targets: self.endpoints.iter().map(|e| e.targets.len()).sum(),
            filters: self.filters.len(),
            agents: self.agents.len(),
        }
    }

    /// Decodes received resources (checking each version against its bytes)
    /// and checks that the result is consistent.
    pub fn from_resources<'a>(
        resources: impl IntoIterator<Item = &'a pb::Resource>,
    ) -> Result<Snapshot, SnapshotError> {
        use pb::ResourceType as T;
        fn decode<M: Message + Default>(r: &pb::Resource, kind: T) -> Result<M, SnapshotError> {
            M::decode(r.body.as_ref()).map_err(|e| SnapshotError::Decode {
                resource: reference(kind, &r.name),
                error: e.to_string(),
            })
        }
        let mut snapshot = Snapshot::default();
        let mut settings = None;
        for r in resources {
            let kind = T::try_from(r.r#type).unwrap_or(T::Unspecified);
            let actual = sha256_hex(&r.body);
            if actual != r.version {
                return Err(SnapshotError::Version {
                    resource: reference(kind, &r.name),
                    claimed: r.version.clone(),
                    actual,
                });
            }
            match kind {
                T::Settings => settings = Some(decode::<pb::Settings>(r, kind)?),
                T::Listener => snapshot.listeners.push(decode(r, kind)?),
                T::Route => snapshot.routes.push(decode(r, kind)?),
                T::Upstream => snapshot.upstreams.push(decode(r, kind)?),
                T::Endpoints => snapshot.endpoints.push(decode(r, kind)?),
                T::Filter => snapshot.filters.push(decode(r, kind)?),
                T::Agent => snapshot.agents.push(decode(r, kind)?),
                T::Unspecified => {
                    return Err(SnapshotError::Inconsistent {
                        resource: reference(kind, &r.name),
                        error: format!("unknown resource type {}", r.r#type),
                    });
                }
            }
        }
        snapshot.settings = settings.ok_or(SnapshotError::NoSettings)?;
        let snapshot = snapshot.normalized();
        snapshot.check_references()?;
        Ok(snapshot)
    }

    /// Every reference resolves and every name is unique: the check a
    /// snapshot passes before it is offered to, or applied by, a proxy.
    pub fn check_references(&self) -> Result<(), SnapshotError> {
        use pb::ResourceType as T;
        fn names<'a, I: Iterator<Item = &'a str>>(
            kind: T,
            it: I,
        ) -> Result<BTreeSet<&'a str>, SnapshotError> {
            let mut set = BTreeSet::new();
            for n in it {
                if !set.insert(n) {
                    return Err(SnapshotError::Inconsistent {
                        resource: reference(kind, n),
                        error: "duplicate name".into(),
                    });
                }
            }
            Ok(set)
        }
        let routes = names(T::Route, self.routes.iter().map(|r| r.name.as_str()))?;
        let upstreams = names(T::Upstream, self.upstreams.iter().map(|u| u.name.as_str()))?;
        let endpoints = names(
            T::Endpoints,
            self.endpoints.iter().map(|e| e.upstream.as_str()),
        )?;
        let filters = names(T::Filter, self.filters.iter().map(|f| f.name.as_str()))?;
        let agents = names(T::Agent, self.agents.iter().map(|a| a.name.as_str()))?;
        names(T::Listener, self.listeners.iter().map(|l| l.name.as_str()))?;
        let missing = |kind: T, name: &str, what: &str, target: &str| SnapshotError::Inconsistent {
            resource: reference(kind, name),
            error: format!("references unknown {what} `{target}`"),
        };
        for r in &self.routes {
            if !upstreams.contains(r.upstream.as_str()) {
                return Err(missing(T::Route, &r.name, "upstream", &r.upstream));
            }
            if let Some(f) = r.filters.iter().find(|f| !filters.contains(f.as_str())) {
                return Err(missing(T::Route, &r.name, "filter", f));
            }
            if let Some(a) = r.agents.iter().find(|a| !agents.contains(a.as_str())) {
                return Err(missing(T::Route, &r.name, "agent", a));
            }
        }
        for u in &upstreams {
            if !endpoints.contains(u) {
                return Err(missing(T::Upstream, u, "endpoints", u));
            }
        }
        for e in &endpoints {
            if !upstreams.contains(e) {
                return Err(missing(T::Endpoints, e, "upstream", e));
            }
        }
        for l in &self.listeners {
            if !l.default_route.is_empty() && !routes.contains(l.default_route.as_str()) {
                return Err(missing(T::Listener, &l.name, "route", &l.default_route));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_resource_is_rejected_by_version() {
        let snapshot = crate::compile("t.kdl", crate::tests::MINIMAL).unwrap();
        let mut resources = snapshot.resources();
        let mut body = resources[1].body.to_vec();
        body.push(0);
        resources[1].body = body.into();
        assert!(matches!(
            Snapshot::from_resources(&resources),
            Err(SnapshotError::Version { .. })
        ));
    }

    #[test]
    fn resources_round_trip() {
        let snapshot = crate::compile("t.kdl", crate::tests::MINIMAL).unwrap();
        let back = Snapshot::from_resources(&snapshot.resources()).unwrap();
        assert_eq!(back, snapshot);
        assert_eq!(back.config_hash(), snapshot.config_hash());
    }

    #[test]
    fn dangling_reference_is_named() {
        let mut snapshot = crate::compile("t.kdl", crate::tests::MINIMAL).unwrap();
        snapshot.routes[0].upstream = "gone".into();
        let err = snapshot.check_references().unwrap_err();
        assert_eq!(err.resource().map(|r| r.name.as_str()), Some("all"));
        assert!(err.to_string().contains("unknown upstream `gone`"), "{err}");
    }
}
