//! The REST API's models: every request and response body of `/v1`, and
//! the stored records they carry.
//!
//! One crate shared by the server (`sentinel-cp`, which serialises these
//! and derives its OpenAPI document from their `ToSchema`) and the
//! reference client (`sentinelctl`, which deserialises them): a field
//! renamed or removed here changes the server, the document and the CLI
//! together, and a CLI that still uses the old name does not build.
//!
//! Only types, their serde and schema attributes, and small pure
//! conversions live here: no I/O, no HTTP, no storage. The compatibility
//! promise of `/v1` is a promise about this crate: fields are added, never
//! renamed or removed.

#![allow(dead_code)] // schema-only request shapes (CreateTokenRequest) are never built

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A small valid configuration, used as the example body of apply.
pub const EXAMPLE_KDL: &str = "listeners {\n    listener \"http\" {\n        address \"127.0.0.1:8080\"\n    }\n}\nupstreams {\n    upstream \"api\" {\n        target \"127.0.0.1:9001\"\n    }\n}\nroutes {\n    route \"all\" {\n        upstream \"api\"\n    }\n}\n";
/// A second valid configuration (two upstreams, a path match).
pub const EXAMPLE_KDL_TWO: &str = "listeners {\n    listener \"http\" {\n        address \"127.0.0.1:8081\"\n    }\n}\nupstreams {\n    upstream \"api\" {\n        target \"127.0.0.1:9001\" weight=2\n        target \"127.0.0.1:9002\" weight=1\n    }\n    upstream \"web\" {\n        target \"127.0.0.1:9003\"\n    }\n}\nroutes {\n    route \"api\" {\n        matches {\n            path-prefix \"/api\"\n        }\n        upstream \"api\"\n    }\n    route \"web\" {\n        upstream \"web\"\n    }\n}\n";

// === records: stored rows as the API shows them ===

/// A stored configuration version (without its resources).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct VersionRecord {
    pub number: i64,
    pub hash: String,
    pub file_name: String,
    pub author: String,
    pub message: String,
    pub created_at_unix_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct Activation {
    pub id: i64,
    /// `apply` or `rollback`.
    pub kind: String,
    pub from_version: Option<i64>,
    pub to_version: i64,
    pub actor: String,
    pub message: String,
    pub at_unix_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct AuditEntry {
    pub at_unix_ms: i64,
    /// The token name that acted.
    pub actor: String,
    /// `apply`, `rollback`, `create-token`, `rotate-token`, `revoke-token`, …
    pub action: String,
    pub detail: String,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The NACK a node currently stands by.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct Nack {
    pub version: i64,
    pub resource: String,
    pub error: String,
    pub at_unix_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub zone: String,
    /// The labels the proxy announced (`--label key=value`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub build_version: String,
    /// The control-plane replica the node is (or was last) connected to.
    pub replica: String,
    /// The row says connected *and* the replica's heartbeat is recent.
    pub connected: bool,
    /// Not connected and not seen within the expiry window: listed, but not
    /// counted by `status` or `--wait`.
    pub expired: bool,
    pub acked_version: Option<i64>,
    pub acked_hash: Option<String>,
    /// Only while current: an ACK of that or a later version clears it.
    pub last_nack: Option<Nack>,
    pub last_seen_unix_ms: i64,
}

/// One NACK in a node's history.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct NodeEvent {
    pub node: String,
    /// The session that sent it.
    pub epoch: i64,
    pub version: i64,
    pub hash: String,
    pub resource: String,
    pub error: String,
    pub at_unix_ms: i64,
}

/// What a token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// The REST API, with a [`Role`].
    Api,
    /// A proxy's delta and health streams (gRPC metadata).
    Join,
}

/// A stored token, without its secret.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub kind: TokenKind,
    /// API tokens only.
    pub role: Option<Role>,
    /// Join tokens only: the node id the token is bound to; `None` is a
    /// fleet-wide join token.
    pub node_id: Option<String>,
    pub created_at_unix_ms: i64,
    pub expires_at_unix_ms: Option<i64>,
    pub revoked_at_unix_ms: Option<i64>,
}

/// Why a token that exists cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Revoked,
    Expired,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Join => "join",
        }
    }

    pub fn parse(s: &str) -> Option<TokenKind> {
        match s {
            "api" => Some(TokenKind::Api),
            "join" => Some(TokenKind::Join),
            _ => None,
        }
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unusable::Revoked => "revoked",
            Unusable::Expired => "expired",
        })
    }
}

impl TokenRecord {
    /// Whether the token may be used at `now_unix_ms`.
    pub fn usable(&self, now_unix_ms: i64) -> std::result::Result<(), Unusable> {
        if self.revoked_at_unix_ms.is_some() {
            return Err(Unusable::Revoked);
        }
        if self.expires_at_unix_ms.is_some_and(|e| e <= now_unix_ms) {
            return Err(Unusable::Expired);
        }
        Ok(())
    }
}

// === errors ===

/// The body of every error the API answers.
#[derive(Debug, Clone, Serialize, ToSchema, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `conflict`,
    /// `precondition_failed`, `payload_too_large`, `unsupported_media_type`,
    /// `invalid_config`, `unavailable`, `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    /// For people: what went wrong and, where possible, what to do.
    pub message: String,
    /// `invalid_config` only: one entry per problem in the KDL source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<DiagnosticBody>>,
    /// `invalid_config` only: the diagnostics rendered as the CLI prints them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendered: Option<String>,
}

/// One problem in a KDL document (mirrors `sentinel_config::Diagnostic`).
#[derive(Debug, Clone, Serialize, ToSchema, Deserialize)]
pub struct DiagnosticBody {
    pub file: String,
    /// 1-based line of the start of the span.
    pub line: u64,
    /// 1-based column (in characters) of the start of the span.
    pub column: u64,
    /// Byte offset and length of the offending text.
    pub offset: u64,
    pub length: u64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The whole source line the span starts on, without its newline.
    pub source_line: String,
}

impl From<&sentinel_config::Diagnostic> for DiagnosticBody {
    fn from(d: &sentinel_config::Diagnostic) -> Self {
        DiagnosticBody {
            file: d.file.clone(),
            line: d.line as u64,
            column: d.column as u64,
            offset: d.offset as u64,
            length: d.length as u64,
            message: d.message.clone(),
            help: d.help.clone(),
            source_line: d.source_line.clone(),
        }
    }
}

// === configs: apply, versions, diff, rollback, history ===

/// The JSON body of `POST /v1/configs`.
#[derive(Deserialize, ToSchema, Serialize)]
#[schema(example = json!({"source": EXAMPLE_KDL, "message": "first version"}))]
pub struct ApplyBody {
    /// The whole KDL document.
    pub source: String,
    /// File name used in diagnostics (default `sentinel.kdl`).
    #[serde(default)]
    pub file: Option<String>,
    /// Why: stored with the version.
    #[serde(default)]
    pub message: Option<String>,
    /// Free text stored with the version (default: the token's name). The
    /// activation's actor is always the token's name.
    #[serde(default)]
    pub author: Option<String>,
    /// Optimistic concurrency: apply only if this version is active
    /// (409 otherwise). Same as `If-Match`.
    #[serde(default, deserialize_with = "crate::integral")]
    pub expect_version: Option<i64>,
    /// Validate and diff against the active version; store nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Roll the new version out stage by stage behind health gates instead
    /// of activating it at once (see `/v1/rollouts`). Absent: apply
    /// activates at once, as always.
    #[serde(default)]
    pub rollout: Option<RolloutPlan>,
}

/// A new version was stored and activated.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct ApplyCreated {
    /// Always `true`.
    pub created: bool,
    pub version: i64,
    /// The version active before, if any.
    pub previous: Option<i64>,
    /// Content hash of the new active configuration (with a rollout: of
    /// the configuration that stays active until the rollout completes).
    pub hash: String,
    /// The rollout that carries the new version to the fleet, when the
    /// apply asked for stages; the version becomes active when it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<i64>,
    /// The trace of this config change (32 hex digits): the caller's, from
    /// its `traceparent` header, or a new one. Absent when the control
    /// plane records no spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The source is identical to the active version: nothing was stored.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct ApplyUnchanged {
    /// Always `false`.
    pub created: bool,
    pub version: i64,
    pub message: String,
}

/// Counts of each resource type of a configuration.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct Summary {
    pub listeners: u64,
    pub routes: u64,
    pub upstreams: u64,
    pub targets: u64,
    pub filters: u64,
    pub agents: u64,
}

/// A dry run: the configuration is valid; this is what applying it would change.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct DryRun {
    /// Always `true` (an invalid one is a 422).
    pub valid: bool,
    pub hash: String,
    pub summary: Summary,
    pub diff: Diff,
}

/// What `200` from apply means: nothing stored, for one of two reasons.
#[derive(Serialize, ToSchema, Deserialize)]
#[serde(untagged)]
pub enum ApplyNothingStored {
    Unchanged(ApplyUnchanged),
    DryRun(DryRun),
}

/// Stored versions, newest first.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct VersionList {
    /// The active version, if any was applied.
    pub active: Option<i64>,
    pub versions: Vec<VersionRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// One compiled resource of a version: its type, name and content hash.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct ResourceRef {
    /// `listener`, `route`, `upstream`, `endpoints`, `filter`, `agent`, `settings`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub version: String,
}

/// One version with its KDL source and compiled resources.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct VersionDetail {
    pub version: VersionRecord,
    /// The KDL source exactly as applied.
    pub source: String,
    pub resources: Vec<ResourceRef>,
}

/// A resource named by type and name.
#[derive(Serialize, ToSchema, Debug, PartialEq, Deserialize)]
pub struct ResourceName {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

/// The difference between two versions.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct Diff {
    pub added: Vec<ResourceName>,
    pub changed: Vec<ResourceName>,
    pub removed: Vec<ResourceName>,
    /// Unified diff of the KDL sources.
    pub text: String,
    /// `GET /v1/diff` only: the versions compared (0 = nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

/// The optional body of `POST /v1/rollback`.
#[derive(Deserialize, ToSchema, Default, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The version to re-activate (default: the one before the active one).
    #[serde(default, deserialize_with = "crate::integral")]
    pub to: Option<i64>,
    /// Why: stored with the activation.
    #[serde(default)]
    pub message: Option<String>,
}

/// A rollback happened.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct RollbackResult {
    pub from: i64,
    pub to: i64,
    /// Content hash of the now active configuration.
    pub hash: String,
    /// The trace of this config change, as in `ApplyCreated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Deployment history.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct ActivationList {
    pub activations: Vec<Activation>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// The caller of `GET /v1/whoami`.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct Identity {
    /// The token's name.
    pub name: String,
    pub role: Role,
}

/// A `fleet` event of `GET /v1/events`: the status and every node, as
/// `GET /v1/status` and `GET /v1/nodes` would answer now.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct FleetEvent {
    pub status: Status,
    pub nodes: Vec<NodeRecord>,
}

/// How one activation reached the fleet: when each node first held its
/// version (`GET /v1/activations/{id}/convergence`).
#[derive(Debug, Serialize, ToSchema, Deserialize)]
pub struct Convergence {
    pub activation: Activation,
    /// Every node the control plane knows (expired ones left out), ordered
    /// by the time it held the version; nodes that never did come last.
    pub nodes: Vec<ConvergenceNode>,
}

/// One node in a [`Convergence`].
#[derive(Debug, Clone, Serialize, ToSchema, Deserialize)]
pub struct ConvergenceNode {
    pub node: String,
    pub region: String,
    pub zone: String,
    pub connected: bool,
    /// When the control plane received the node's first ACK of the version
    /// at or after the activation; absent if it has not held it since.
    pub acked_at_unix_ms: Option<i64>,
    /// The version the node holds now.
    pub acked_version: Option<i64>,
}

/// One step the control plane took for a config change, from its own
/// records (Unix milliseconds).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct TraceStep {
    /// `config.apply`, `config.compile`, `config.store`, `config.activate`,
    /// `config.rollback` (the span names of the trace).
    pub name: String,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
}

/// One node's timeline of one push of the version: the control plane's
/// times (pushed, answered) and the proxy's own clock (received, built,
/// swapped; absent when it did not say).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct TraceNode {
    pub node: String,
    pub region: String,
    pub pushed_at_unix_ms: i64,
    pub received_unix_ms: Option<i64>,
    pub built_unix_ms: Option<i64>,
    pub swapped_unix_ms: Option<i64>,
    /// When the ACK or NACK reached the control plane.
    pub answered_at_unix_ms: i64,
    /// `ack` or `nack`.
    pub outcome: String,
    /// A NACK's resource and reason.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Answered minus pushed (control-plane clock), in milliseconds.
    pub total_ms: i64,
}

/// A config change as one trace (`GET /v1/configs/{number}/trace`): the
/// trace id every span of it carries, the control plane's steps, and each
/// node's timeline from the control plane's own records (no collector
/// needed).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema, Deserialize)]
pub struct ConfigTrace {
    pub version: i64,
    /// 32 hex digits; absent when the change was made without a trace.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace_id: Option<String>,
    /// The W3C traceparent proxies receive with this version.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace_parent: Option<String>,
    /// `apply`, `rollback` or `rollout`: what delivered the version most
    /// recently.
    pub kind: String,
    pub steps: Vec<TraceStep>,
    /// Oldest push first; a node pushed the version twice (a reconnect, a
    /// NACK and a retry) has two rows.
    pub nodes: Vec<TraceNode>,
}

/// The audit trail.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct AuditList {
    pub audit: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

impl From<sentinel_config::Summary> for Summary {
    fn from(s: sentinel_config::Summary) -> Self {
        Summary {
            listeners: s.listeners as u64,
            routes: s.routes as u64,
            upstreams: s.upstreams as u64,
            targets: s.targets as u64,
            filters: s.filters as u64,
            agents: s.agents as u64,
        }
    }
}

// === fleet: nodes, status, health ===

/// Every node the control plane knows.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct NodeList {
    /// Ordered by id.
    pub nodes: Vec<NodeRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The NACK history of one node.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct NodeEvents {
    pub node: String,
    pub events: Vec<NodeEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// Known nodes of one region.
#[derive(Serialize, ToSchema, Default, Deserialize)]
pub struct RegionStatus {
    pub nodes: u64,
    pub connected: u64,
    /// Connected and ACKed the active version.
    pub on_active: u64,
    /// Acked version (`none` for none) → number of nodes.
    pub versions: BTreeMap<String, u64>,
}

/// Node counts of `/v1/status`.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct NodeCounts {
    /// Known (unexpired) nodes.
    pub total: u64,
    pub connected: u64,
    pub expired: u64,
    pub expiry_secs: u64,
}

/// A known node whose current NACK is of the active version.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct NodeNack {
    pub node: String,
    pub region: String,
    pub nack: Option<Nack>,
}

/// A known node that is not connected.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct Disconnected {
    pub node: String,
    pub region: String,
    pub acked_version: Option<i64>,
    pub last_seen_unix_ms: i64,
}

/// The fleet at a glance.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct Status {
    pub active: Option<VersionRecord>,
    pub last_activation: Option<Activation>,
    /// The replica that answered.
    pub replica: String,
    pub nodes: NodeCounts,
    pub regions: BTreeMap<String, RegionStatus>,
    pub nacks: Vec<NodeNack>,
    pub disconnected: Vec<Disconnected>,
}

/// Reports of one region about one target.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct RegionHealth {
    pub healthy: u64,
    pub unhealthy: u64,
}

/// One target's health across the fleet.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct TargetHealth {
    pub target: String,
    /// Healthy fleet-wide: fewer than `quorum_percent` of the reporting proxies say unhealthy.
    pub healthy: bool,
    pub reporting: u64,
    pub healthy_reports: u64,
    pub unhealthy_reports: u64,
    pub regions: BTreeMap<String, RegionHealth>,
    /// Up to 5 recent errors, `node: error`.
    pub errors: Vec<String>,
    /// The proxies that see the target down (at most 50, by node id).
    #[serde(default)]
    pub down_on: Vec<DownReport>,
}

/// One proxy that reports a target down.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct DownReport {
    pub node: String,
    pub region: String,
    /// Since when the proxy sees it down (Unix ms).
    pub since_unix_ms: i64,
    pub last_error: String,
}

/// Upstream health aggregated across proxies.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct Health {
    pub quorum_percent: u64,
    /// Upstream name → its targets.
    pub upstreams: BTreeMap<String, Vec<TargetHealth>>,
}

// === discovery: discovered endpoints ===

/// One discovered target as the control plane pushes it.
#[derive(Debug, Clone, Serialize, ToSchema, Deserialize, PartialEq)]
pub struct DiscoveredTarget {
    pub address: String,
    pub weight: u32,
    /// `healthy`, `unhealthy` or `unknown` (from the source: Consul checks,
    /// EndpointSlice conditions).
    pub health: String,
    #[serde(default)]
    pub zone: String,
}

/// One discovered upstream of the active configuration.
#[derive(Debug, Clone, Serialize, ToSchema, Deserialize, PartialEq)]
pub struct DiscoveredUpstream {
    pub upstream: String,
    /// `dns`, `consul` or `kubernetes`.
    pub source: String,
    /// Empty until the source sent its first set.
    pub targets: Vec<DiscoveredTarget>,
    /// Increases with every set the source sent (0 = none yet).
    pub generation: i64,
    /// The `Endpoints` resource version proxies hold when on this set.
    pub hash: String,
    /// The source failed its last refresh; `targets` are the last known.
    pub stale: bool,
    /// Unix ms of the source's last successful refresh (0 = never).
    pub last_success_unix_ms: i64,
    pub last_error: Option<String>,
    /// When this replica last received (or loaded) a set, Unix ms.
    pub updated_at_unix_ms: i64,
    /// Refresh counts of the running source (on the leader; 0 elsewhere).
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
    /// Proxies connected to this replica that hold this set.
    pub nodes_current: u64,
    /// Proxies connected to this replica that hold some configuration.
    pub nodes_connected: u64,
}

/// `GET /v1/discovery`.
#[derive(Debug, Clone, Serialize, ToSchema, Deserialize, PartialEq)]
pub struct DiscoveryStatus {
    /// The replica that answered.
    pub replica: String,
    /// Whether it runs the discovery sources (one replica does).
    pub leader: bool,
    /// The active version's discovered upstreams, by name.
    pub upstreams: Vec<DiscoveredUpstream>,
}

// === tokens ===

/// Create a token: an API token with a role, or a join token for proxies.
#[derive(Deserialize, ToSchema, Serialize)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CreateTokenRequest {
    Api(ApiTokenRequest),
    Join(JoinTokenRequest),
}

/// `kind` of an API token.
#[derive(Deserialize, ToSchema, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ApiKind {
    Api,
}

/// `kind` of a join token.
#[derive(Deserialize, ToSchema, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum JoinKind {
    Join,
}

/// An API token: opens the REST API with a role.
#[derive(Deserialize, ToSchema, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
#[schema(example = json!({"name": "ci", "role": "write", "expires_in_secs": 7776000}))]
pub struct ApiTokenRequest {
    /// Unique, never reused: 1-64 printable ASCII characters.
    #[schema(pattern = "^[!-~]{1,64}$")]
    pub name: String,
    pub role: Role,
    pub kind: Option<ApiKind>,
    /// Lifetime in seconds (default: no expiry).
    #[schema(minimum = 1)]
    pub expires_in_secs: Option<u64>,
}

/// A join token: opens proxy streams, for one node or (without `node_id`) any.
#[derive(Deserialize, ToSchema, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
#[schema(example = json!({"name": "edge-eu-1", "kind": "join", "node_id": "edge-eu-1"}))]
pub struct JoinTokenRequest {
    /// Unique, never reused: 1-64 printable ASCII characters.
    #[schema(pattern = "^[!-~]{1,64}$")]
    pub name: String,
    pub kind: JoinKind,
    /// Bind the token to this node id (1-128 printable ASCII characters).
    #[schema(pattern = "^[!-~]{1,128}$")]
    pub node_id: Option<String>,
    /// Lifetime in seconds (default: no expiry).
    #[schema(minimum = 1)]
    pub expires_in_secs: Option<u64>,
}

/// A token just created, with its secret (shown only this once).
#[derive(Serialize, ToSchema, Deserialize)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub record: TokenRecord,
    /// The secret: `Authorization: Bearer …` (API) or the proxy's `--join-token`.
    pub token: String,
}

/// Every token, never with secrets.
#[derive(Serialize, ToSchema, Deserialize)]
pub struct TokenList {
    /// Ordered by name.
    pub tokens: Vec<TokenRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

// === rollouts: staged delivery of a version behind gates ===

/// One stage of a rollout: which proxies it adds, and how long it bakes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutStage {
    /// Which proxies: `*` (all), `N%` (a stable share: a node keeps its
    /// place across rollouts), `canary:N` or `N` (the first N nodes in the
    /// same stable order), `region:NAME` or a bare `NAME` (a region),
    /// `zone:NAME`, `node:ID[+ID…]`. Nodes admitted by an earlier stage
    /// stay admitted.
    #[schema(example = "canary:1")]
    pub select: String,
    /// How long the stage's nodes run the new version, with every gate
    /// holding, before the next stage starts (default: the plan's `bake_ms`).
    #[serde(default, deserialize_with = "crate::integral")]
    #[schema(minimum = 0, maximum = 86400000)]
    pub bake_ms: Option<u64>,
}

/// Thresholds of a rollout's gates. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutGates {
    /// Fails a stage whose 5xx share exceeds the reference (the rest of the
    /// fleet and the stage's own baseline, whichever is higher) by more
    /// than this (0.05 = five percentage points).
    #[serde(default, deserialize_with = "crate::number")]
    #[schema(minimum = 0, maximum = 1)]
    pub max_5xx_increase: Option<f64>,
    /// Fails a stage whose p99 is above this many times the reference p99
    /// (and above `p99_floor_ms`).
    #[serde(default, deserialize_with = "crate::number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_p99_ratio: Option<f64>,
    /// A p99 below this never fails a stage (milliseconds).
    #[serde(default, deserialize_with = "crate::integral")]
    #[schema(minimum = 0, maximum = 3600000)]
    pub p99_floor_ms: Option<u64>,
    /// Requests a stage must have served since it ACKed before the
    /// error-rate and latency gates judge it.
    #[serde(default, deserialize_with = "crate::integral")]
    #[schema(minimum = 1, maximum = 1000000000)]
    pub min_requests: Option<u64>,
    /// Fails a stage whose share of unhealthy upstream targets (from the
    /// health reports) exceeds the reference share by more than this.
    #[serde(default, deserialize_with = "crate::number")]
    #[schema(minimum = 0, maximum = 1)]
    pub max_unhealthy_increase: Option<f64>,
    /// Fails a stage whose nodes have not all ACKed this long after it
    /// started (milliseconds).
    #[serde(default, deserialize_with = "crate::integral")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub progress_deadline_ms: Option<u64>,
}

/// How a new version reaches the fleet: ordered stages and their gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"stages": [{"select": "canary:1"}, {"select": "eu-west"}, {"select": "*"}], "bake_ms": 1000}))]
pub struct RolloutPlan {
    /// 1 to 20 stages, in order; the last one usually selects `*`. The
    /// version becomes active for the whole fleet when the last stage passed.
    #[schema(min_items = 1, max_items = 20)]
    pub stages: Vec<RolloutStage>,
    /// Default bake time of a stage (milliseconds; default 10000).
    #[serde(default, deserialize_with = "crate::integral")]
    #[schema(minimum = 0, maximum = 86400000)]
    pub bake_ms: Option<u64>,
    #[serde(default)]
    pub gates: Option<RolloutGates>,
}

/// A rollout as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutSummary {
    pub id: i64,
    /// `running`, `paused`, `completed`, `failed` or `aborted`.
    pub state: String,
    /// The version the fleet ran before (and returns to on failure).
    pub from_version: Option<i64>,
    pub to_version: i64,
    /// Index (0-based) of the current stage; the last one once completed.
    pub stage: i64,
    /// How many stages the plan has.
    pub stages: i64,
    pub actor: String,
    pub message: String,
    /// Why it ended, for people (failed: which node, which gate, the numbers).
    pub reason: Option<String>,
    /// Failed only: the gate that failed (`ack`, `error-rate`, `latency`,
    /// `upstream-health`, `progress-deadline`).
    pub failed_gate: Option<String>,
    /// Failed only: the node the gate named, when one did.
    pub failed_node: Option<String>,
    pub created_at_unix_ms: i64,
    pub updated_at_unix_ms: i64,
}

/// One stage of a rollout and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutStageStatus {
    pub index: i64,
    pub select: String,
    pub bake_ms: u64,
    /// `pending`, `rolling` (waiting for ACKs), `baking`, `paused`, `passed`,
    /// `failed` or `aborted`.
    pub state: String,
    /// Nodes this stage admitted.
    pub nodes: i64,
    /// Of those, how many ACKed the new version.
    pub acked: i64,
}

/// One node a rollout admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutNode {
    pub node: String,
    /// The stage that admitted it.
    pub stage: i64,
    pub region: String,
    pub zone: String,
    /// `acked`, `nacked`, `waiting` (admitted, not answered yet) or
    /// `returned` (the rollout ended without completing: served the
    /// previous version again).
    pub state: String,
    pub acked_version: Option<i64>,
}

/// One thing that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutEvent {
    pub at_unix_ms: i64,
    pub stage: Option<i64>,
    /// `created`, `stage-started`, `stage-acked`, `stage-passed`, `gate`,
    /// `paused`, `resumed`, `promoted`, `completed`, `failed`, `aborted`.
    pub kind: String,
    pub detail: String,
}

/// A rollout with its plan, stages, nodes and events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDetail {
    pub rollout: RolloutSummary,
    pub plan: RolloutPlan,
    pub stages: Vec<RolloutStageStatus>,
    pub nodes: Vec<RolloutNode>,
    /// Oldest first.
    pub events: Vec<RolloutEvent>,
    /// While the rollout is open: what its gates see now for the current
    /// stage, from the health reports the answering replica receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<RolloutLive>,
}

/// The gates' inputs for the current stage (see docs/operations.md, "Safe
/// rollouts"): the stage's nodes on the new version since the stage
/// started, the rest of the fleet on the previous version over the same
/// window, and the stage's nodes on the previous version before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutLive {
    pub stage: GateTotals,
    pub rest: GateTotals,
    pub baseline: GateTotals,
    /// The thresholds in force (every default filled in).
    pub gates: RolloutGates,
}

/// Request counts and upstream health of one group of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateTotals {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Request-weighted p99 over the group's routes (ms).
    pub p99_ms: u64,
    /// Health-checked targets the group's nodes report (latest report each).
    pub targets: u64,
    pub unhealthy: u64,
}

/// Rollouts, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

// === serde helpers ===

/// `#[serde(deserialize_with = "number")]` for optional finite numbers.
pub fn number<'de, D>(d: D) -> Result<Option<f64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_f64()
        .filter(|f| f.is_finite())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a number, got {n}")))
}

/// `#[serde(deserialize_with = "integral")]` for optional integer fields:
/// JSON Schema counts `5.0` as an integer, serde does not. A number with no
/// fractional part within `T`'s range is accepted; anything else is an error.
pub fn integral<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let wide: i128 = if let Some(i) = n.as_i64() {
        i128::from(i)
    } else if let Some(u) = n.as_u64() {
        i128::from(u)
    } else {
        match n.as_f64() {
            // Beyond 2^63 a float no longer tells integers apart; refuse.
            Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => f as i128,
            _ => return Err(D::Error::custom(format!("expected an integer, got {n}"))),
        }
    };
    T::try_from(wide)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("integer {n} out of range")))
}

#[cfg(test)]
mod tests {
    /// The examples in the OpenAPI document reach the core logic only if
    /// they are valid configurations.
    #[test]
    fn example_bodies_are_valid_configurations() {
        for source in [super::EXAMPLE_KDL, super::EXAMPLE_KDL_TWO] {
            if let Err(d) = sentinel_config::compile("example.kdl", source) {
                panic!("{}", d.render(false));
            }
        }
    }
}
