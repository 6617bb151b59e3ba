//! Node identity and the token lifecycle against the real `sentinel-cp`
//! binary: who may open a stream as which node id (client certificate,
//! join tokens, `--insecure-streams`), health reports only on behalf of the
//! authenticated node, rotation of start-up tokens, revocation across two
//! replicas, expiry — and the same rules at the store on both backends.

use std::time::{Duration, Instant};

use sentinel_cp::store::{Ensured, NewToken, Role, Store, StoreError, TokenKind};
use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use sentinel_tests::{ControlPlane, JOIN_TOKEN, Postgres, wait_for};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

const CONFIG: &str = "listeners { listener \"l\" { address \"127.0.0.1:8080\"; }; }\n\
    upstreams { upstream \"u\" { target \"127.0.0.1:9001\"; }; }\n\
    routes { route \"r\" { upstream \"u\"; }; }\n";

async fn apply(cp: &ControlPlane) {
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": CONFIG }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// `POST /v1/tokens` with the admin token; returns the response body.
async fn create_token(cp: &ControlPlane, body: Value) -> Value {
    let r = http()
        .post(format!("{}/v1/tokens", cp.url()))
        .bearer_auth(&cp.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}

async fn status_with(url: &str, token: &str) -> u16 {
    http()
        .get(format!("{url}/v1/status"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn hello(id: &str) -> pb::DeltaRequest {
    pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Hello(pb::Hello {
            node: Some(pb::Node {
                id: id.into(),
                region: "eu".into(),
                zone: "eu-a".into(),
                build_version: "test".into(),
                labels: vec![],
            }),
            held: vec![],
            config_version: String::new(),
            version_number: 0,
        })),
    }
}

/// Opens a delta stream as `id` (with `secret` as join token, if any) and
/// returns the first non-keepalive response, or the status that refused it.
async fn stream_as(
    channel: Channel,
    id: &str,
    secret: Option<&str>,
) -> Result<pb::DeltaResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(2);
    tx.send(hello(id)).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(s) = secret {
        sentinel_tests::authorize(&mut request, s);
    }
    let mut stream = ConfigStreamClient::new(channel)
        .delta(request)
        .await?
        .into_inner();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no response within 5 s"))??
            .ok_or_else(|| tonic::Status::aborted("stream ended"))?;
        if !msg.keepalive {
            drop(tx);
            return Ok(msg);
        }
    }
}

/// Sends one health report for `id` and returns the CP's answer to it.
async fn report_as(
    channel: Channel,
    id: &str,
    secret: Option<&str>,
) -> Result<pb::HealthReportAck, tonic::Status> {
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::HealthReport {
        node_id: id.into(),
        targets: vec![pb::TargetHealthReport {
            upstream: "u".into(),
            target: "127.0.0.1:9001".into(),
            healthy: false,
            since_unix_ms: 1,
            last_error: format!("reported as {id}"),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(s) = secret {
        sentinel_tests::authorize(&mut request, s);
    }
    let mut acks = ConfigStreamClient::new(channel)
        .report_health(request)
        .await?
        .into_inner();
    let ack = tokio::time::timeout(Duration::from_secs(5), acks.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer within 5 s"))??
        .ok_or_else(|| tonic::Status::aborted("stream ended"));
    drop(tx);
    ack
}

async fn plain_channel(cp: &ControlPlane) -> Channel {
    tonic::transport::Endpoint::from_shared(cp.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn refused_with(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code) -> String {
    match result {
        Err(s) if s.code() == code => s.message().to_string(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_node_id_must_match_the_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    // A certificate for node `edge-a` only, named the SPIFFE way.
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec![]).unwrap();
    client_params.subject_alt_names = vec![SanType::URI(
        "spiffe://sentinel.test/node/edge-a".try_into().unwrap(),
    )];
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let ca_path = write("ca.pem", ca.pem());
    let cert_path = write("server.pem", server.pem());
    let key_path = write("server.key", server_key.serialize_pem());
    let cp = ControlPlane::start(
        std::path::Path::new(BIN),
        "",
        &[
            "--grpc-tls-cert",
            &cert_path,
            "--grpc-tls-key",
            &key_path,
            "--grpc-client-ca",
            &ca_path,
            "--grpc-trust-domain",
            "sentinel.test",
        ],
    )
    .await;
    apply(&cp).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", cp.grpc.port()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
                    .domain_name("localhost")
                    .identity(tonic::transport::Identity::from_pem(
                        client.pem(),
                        client_key.serialize_pem(),
                    )),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();

    // Impersonation: A's certificate, B's node id. A join token does not
    // help either: under mTLS the certificate is the identity.
    let why = refused_with(
        stream_as(channel.clone(), "edge-b", Some(JOIN_TOKEN)).await,
        Code::PermissionDenied,
    );
    assert!(why.contains("edge-b") && why.contains("edge-a"), "{why}");
    // As itself: served.
    let first = stream_as(channel.clone(), "edge-a", None).await.unwrap();
    assert_eq!(first.version_number, 1);
    // Health on behalf of another node: refused; of itself: accepted.
    refused_with(
        report_as(channel.clone(), "edge-b", None).await,
        Code::PermissionDenied,
    );
    assert_eq!(
        report_as(channel.clone(), "edge-a", None)
            .await
            .unwrap()
            .received,
        1
    );
    let nodes: Value = http()
        .get(format!("{}/v1/nodes", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        !ids.contains(&"edge-b"),
        "the impersonator was recorded: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_decide_who_may_stream_as_which_node() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    apply(&cp).await;
    let channel = plain_channel(&cp).await;

    // No token, a wrong one, an API token: not authenticated.
    let why = refused_with(
        stream_as(channel.clone(), "edge-a", None).await,
        Code::Unauthenticated,
    );
    assert!(why.contains("join token"), "{why}");
    refused_with(
        stream_as(channel.clone(), "edge-a", Some("guess")).await,
        Code::Unauthenticated,
    );
    refused_with(
        stream_as(channel.clone(), "edge-a", Some(&cp.token)).await,
        Code::Unauthenticated,
    );
    refused_with(
        report_as(channel.clone(), "edge-a", None).await,
        Code::Unauthenticated,
    );

    // A per-node token speaks for its node only, on both streams.
    let a = create_token(
        &cp,
        json!({ "name": "edge-a", "kind": "join", "node_id": "edge-a" }),
    )
    .await;
    let secret_a = a["token"].as_str().unwrap().to_string();
    assert_eq!(a["kind"], "join");
    assert!(a["role"].is_null(), "{a}");
    let why = refused_with(
        stream_as(channel.clone(), "edge-b", Some(&secret_a)).await,
        Code::PermissionDenied,
    );
    assert!(why.contains("join token `edge-a`"), "{why}");
    assert_eq!(
        stream_as(channel.clone(), "edge-a", Some(&secret_a))
            .await
            .unwrap()
            .version_number,
        1
    );
    refused_with(
        report_as(channel.clone(), "edge-b", Some(&secret_a)).await,
        Code::PermissionDenied,
    );
    assert_eq!(
        report_as(channel.clone(), "edge-a", Some(&secret_a))
            .await
            .unwrap()
            .received,
        1
    );
    // The fleet-wide token's holder is trusted with any node id.
    stream_as(channel.clone(), "edge-b", Some(JOIN_TOKEN))
        .await
        .unwrap();

    // Refusals are counted by reason.
    let metrics = http()
        .get(format!("{}/metrics", cp.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["unauthenticated", "permission_denied"] {
        assert!(
            metrics.contains(&format!(
                "sentinel_cp_stream_refusals_total{{reason=\"{reason}\"}}"
            )),
            "{metrics}"
        );
    }

    // A join token opens no API.
    assert_eq!(status_with(&cp.url(), &secret_a).await, 401);
    assert_eq!(status_with(&cp.url(), JOIN_TOKEN).await, 401);

    // Revoked: new streams with it are refused (within the cache bound).
    let r = http()
        .delete(format!("{}/v1/tokens/edge-a", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = wait_for(Duration::from_secs(2), || {
        let channel = channel.clone();
        let secret = secret_a.clone();
        async move {
            matches!(stream_as(channel, "edge-a", Some(&secret)).await, Err(s) if s.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(revoked, "a revoked join token still opens streams");
    let why = refused_with(
        stream_as(channel.clone(), "edge-a", Some(&secret_a)).await,
        Code::Unauthenticated,
    );
    assert!(why.contains("revoked"), "{why}");

    // Expired: works until its expiry, then never again.
    let short = create_token(
        &cp,
        json!({ "name": "short", "kind": "join", "expires_in_secs": 1 }),
    )
    .await;
    let secret = short["token"].as_str().unwrap().to_string();
    let expired = wait_for(Duration::from_secs(5), || {
        let channel = channel.clone();
        let secret = secret.clone();
        async move {
            matches!(stream_as(channel, "edge-c", Some(&secret)).await, Err(s) if s.code() == Code::Unauthenticated && s.message().contains("expired"))
        }
    })
    .await;
    assert!(expired, "an expired join token still opens streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_streams_is_an_explicit_loud_opt_out() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &["--insecure-streams"]).await;
    apply(&cp).await;
    let channel = plain_channel(&cp).await;
    assert_eq!(
        stream_as(channel.clone(), "anyone", None)
            .await
            .unwrap()
            .version_number,
        1
    );
    report_as(channel, "someone-else", None).await.unwrap();
    assert!(cp.logs().contains("INSECURE STREAMS"), "{}", cp.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_start_up_secret_rotates_the_token() {
    let mut cp = ControlPlane::start(
        std::path::Path::new(BIN),
        "",
        &["--bootstrap-token", "first-admin-secret"],
    )
    .await;
    assert_eq!(cp.token, "first-admin-secret");
    apply(&cp).await;
    let old_admin = cp.token.clone();
    assert_eq!(status_with(&cp.url(), &old_admin).await, 200);

    cp.restart_with("--bootstrap-token", "rotated-admin-secret")
        .await;
    assert_eq!(status_with(&cp.url(), "rotated-admin-secret").await, 200);
    assert_eq!(status_with(&cp.url(), &old_admin).await, 401);
    let audit: Value = http()
        .get(format!("{}/v1/audit", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit.to_string().contains("rotate-token"),
        "no audit entry for the rotation: {audit}"
    );

    // The fleet join token rotates the same way.
    cp.restart_with("--join-token", "rotated-join-secret").await;
    let channel = plain_channel(&cp).await;
    refused_with(
        stream_as(channel.clone(), "edge-a", Some(JOIN_TOKEN)).await,
        Code::Unauthenticated,
    );
    stream_as(channel, "edge-a", Some("rotated-join-secret"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica_within_a_second() {
    let pg = Postgres::start();
    let one = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    let two = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    let created = create_token(&one, json!({ "name": "ci", "role": "read" })).await;
    let secret = created["token"].as_str().unwrap().to_string();
    // Replica two knows (and caches) the token.
    assert_eq!(status_with(&two.url(), &secret).await, 200);

    let r = http()
        .delete(format!("{}/v1/tokens/ci", one.url()))
        .bearer_auth(&one.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked_at = Instant::now();
    assert_eq!(status_with(&one.url(), &secret).await, 401);
    let refused = wait_for(Duration::from_millis(1500), || {
        let url = two.url();
        let secret = secret.clone();
        async move { status_with(&url, &secret).await == 401 }
    })
    .await;
    assert!(refused, "replica two still accepts the revoked token");
    assert!(
        revoked_at.elapsed() <= Duration::from_millis(1200),
        "revocation took {:?} to reach replica two",
        revoked_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_expire() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let created = create_token(
        &cp,
        json!({ "name": "brief", "role": "read", "expires_in_secs": 1 }),
    )
    .await;
    assert!(created["expires_at_unix_ms"].is_i64(), "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    let expired = wait_for(Duration::from_secs(5), || {
        let url = cp.url();
        let secret = secret.clone();
        async move { status_with(&url, &secret).await == 401 }
    })
    .await;
    assert!(expired, "an expired API token still works");
    // Listing shows no secret, and the token as it is.
    let list: Value = http()
        .get(format!("{}/v1/tokens", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!list.to_string().contains(&secret), "{list}");
    assert!(!list.to_string().contains("token_hash"), "{list}");
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, vec!["bootstrap", "bootstrap-join", "brief"]);
}

async fn both(test: impl AsyncFn(Store)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("t.db").display()
    ))
    .await
    .unwrap();
    test(sqlite).await;
    let pg = Postgres::start();
    let store = Store::connect(&pg.url())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    test(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_creates_rotates_and_revokes_tokens() {
    both(async |store: Store| {
        let ensure = |hash: &'static str| {
            let store = store.clone();
            async move {
                store
                    .ensure_token("bootstrap", hash, TokenKind::Api, Some(Role::Admin))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(ensure("h1").await, Ensured::Created);
        assert_eq!(ensure("h1").await, Ensured::Unchanged);
        assert_eq!(ensure("h2").await, Ensured::Rotated);
        assert_eq!(store.token("h1").await.unwrap(), None);
        let t = store.token("h2").await.unwrap().unwrap();
        assert_eq!(
            (t.name.as_str(), t.kind, t.role),
            ("bootstrap", TokenKind::Api, Some(Role::Admin))
        );
        // One secret cannot be two tokens.
        assert!(matches!(
            store
                .ensure_token("bootstrap-join", "h2", TokenKind::Join, None)
                .await,
            Err(StoreError::Conflict(_))
        ));

        let new = NewToken {
            name: "edge-1".into(),
            secret_hash: "j1".into(),
            kind: TokenKind::Join,
            role: None,
            node_id: Some("edge-1".into()),
            expires_at_unix_ms: Some(42),
        };
        store.create_token(&new, "admin").await.unwrap();
        assert!(matches!(
            store.create_token(&new, "admin").await,
            Err(StoreError::Conflict(_))
        ));
        let j = store.token("j1").await.unwrap().unwrap();
        assert_eq!(
            (j.kind, j.role, j.node_id.as_deref(), j.expires_at_unix_ms),
            (TokenKind::Join, None, Some("edge-1"), Some(42))
        );
        assert!(j.usable(41).is_ok());
        assert!(j.usable(42).is_err());

        let revoked = store.revoke_token("bootstrap", "admin").await.unwrap();
        assert!(revoked.revoked_at_unix_ms.is_some());
        assert!(store.token("h2").await.unwrap().unwrap().usable(0).is_err());
        // Started again with the revoked secret: it stays revoked.
        assert_eq!(ensure("h2").await, Ensured::Revoked);
        assert!(matches!(
            store.revoke_token("nope", "admin").await,
            Err(StoreError::NotFound(_))
        ));
        let names: Vec<String> = store
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["bootstrap", "edge-1"]);
        let audit = store.audit_log(10).await.unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            vec![
                "revoke-token",
                "create-token",
                "rotate-token",
                "create-token"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_proxy_joins_only_as_the_node_its_token_names() {
    use sentinel_tests::{Proxy, workspace_bin};
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    apply(&cp).await;
    let token = create_token(
        &cp,
        json!({ "name": "edge-a", "kind": "join", "node_id": "edge-a" }),
    )
    .await;
    let secret = token["token"].as_str().unwrap();
    let grpc = [cp.grpc_url()];
    // Same per-node token: as another node it is refused, as itself it joins.
    let impostor = Proxy::start(
        &workspace_bin("sentinel"),
        "edge-b",
        "eu",
        &grpc,
        &[("SENTINEL_JOIN_TOKEN", secret)],
    );
    let honest = Proxy::start(
        &workspace_bin("sentinel"),
        "edge-a",
        "eu",
        &grpc,
        &[("SENTINEL_JOIN_TOKEN", secret)],
    );
    let node_ids = || async {
        let v: Value = http()
            .get(format!("{}/v1/nodes", cp.url()))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["acked_version"] == 1)
            .filter_map(|n| n["id"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let joined = wait_for(Duration::from_secs(10), || async {
        node_ids().await.contains(&"edge-a".to_string())
    })
    .await;
    assert!(joined, "edge-a did not converge:\n{}", honest.logs());
    let refused = wait_for(Duration::from_secs(10), || async {
        impostor.logs().contains("does not identify node `edge-b`")
    })
    .await;
    assert!(refused, "{}", impostor.logs());
    assert_eq!(node_ids().await, vec!["edge-a".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_tokens_keep_working_while_the_database_is_down() {
    let mut pg = Postgres::start();
    let cp = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    apply(&cp).await;
    let unseen = create_token(&cp, json!({ "name": "unseen", "kind": "join" })).await;
    let unseen = unseen["token"].as_str().unwrap().to_string();
    let channel = plain_channel(&cp).await;
    // This replica has seen the fleet token and the admin token.
    stream_as(channel.clone(), "edge-a", Some(JOIN_TOKEN))
        .await
        .unwrap();
    assert_eq!(
        http()
            .get(format!("{}/v1/health", cp.url()))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    pg.stop();
    // Past the cache lifetime, every attempt still works from the last
    // known state; a token this replica never saw cannot be checked.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        stream_as(channel.clone(), "edge-a", Some(JOIN_TOKEN))
            .await
            .unwrap();
        let health = http()
            .get(format!("{}/v1/health", cp.url()))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(health, 200);
    }
    refused_with(
        stream_as(channel.clone(), "edge-b", Some(&unseen)).await,
        Code::Unavailable,
    );
}
