//! The wire contract between Sentinel's control plane and its proxies.
//!
//! This crate owns the `sentinel.v1` protobuf package and nothing else: the
//! generated messages, the tonic client and server for `ConfigStream`, and a
//! few small conversions between [`ResourceType`] and the names operators see.
//! It also carries the agent protocol ([`agent_protocol`], `sentinel.agent.v1`) and
//! the standard gRPC health protocol ([`health`]) agents serve.
//! It holds no logic; the meaning of each field is documented in the .proto
//! files under `proto/sentinel/v1/`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("sentinel.v1");
}

pub use generated::*;

/// The external agent protocol (`sentinel.agent.v1`, docs/protocol.md):
/// the events the proxy sends an agent and the decisions it gets back.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod agent_protocol {
    tonic::include_proto!("sentinel.agent.v1");

    /// The protocol revision this build speaks (`protocol_version`).
    pub const PROTOCOL_VERSION: u32 = 1;
}

/// The standard gRPC health protocol (`grpc.health.v1`), used to probe
/// agents.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// The fixed name of the one `Settings` resource of a snapshot.
pub const SETTINGS_NAME: &str = "settings";

impl ResourceType {
    /// Every concrete resource type, in the order snapshots list them.
    pub const ALL: [ResourceType; 7] = [
        ResourceType::Settings,
        ResourceType::Listener,
        ResourceType::Upstream,
        ResourceType::Endpoints,
        ResourceType::Filter,
        ResourceType::Agent,
        ResourceType::Route,
    ];

    /// The lower-case singular name used in logs, APIs and diagnostics.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Unspecified => "unspecified",
            ResourceType::Listener => "listener",
            ResourceType::Route => "route",
            ResourceType::Upstream => "upstream",
            ResourceType::Endpoints => "endpoints",
            ResourceType::Filter => "filter",
            ResourceType::Agent => "agent",
            ResourceType::Settings => "settings",
        }
    }

    /// Inverse of [`ResourceType::label`].
    pub fn from_label(label: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.label() == label)
    }
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = ResourceType::try_from(self.r#type).unwrap_or(ResourceType::Unspecified);
        write!(f, "{} \"{}\"", kind.label(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_label(t.label()), Some(t));
        }
        assert_eq!(ResourceType::from_label("nope"), None);
    }
}
