//! The delta stream with an in-test client against the real binary.

use std::time::Duration;

use sentinel_proto as pb;
use sentinel_proto::config_stream_client::ConfigStreamClient;
use sentinel_tests::{ControlPlane, Postgres, wait_for};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn config(target_port: u16, extra_route: bool) -> String {
    let route = if extra_route {
        "    route \"extra\" { matches { path \"/x\"; }; upstream \"u\"; }\n"
    } else {
        ""
    };
    format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:8080\"; }}; }}\n\
         upstreams {{ upstream \"u\" {{ target \"127.0.0.1:{target_port}\"; }}; }}\n\
         routes {{\n    route \"r\" {{ upstream \"u\"; }}\n{route}}}\n"
    )
}

async fn apply(cp: &ControlPlane, source: &str) -> Value {
    let r = http()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&json!({ "source": source }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn nodes(cp: &ControlPlane) -> Value {
    http()
        .get(format!("{}/v1/nodes", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

type Session = sentinel_tests::raw::RawStream;

async fn connect(url: String, id: &str, held: Vec<pb::ResourceVersion>) -> Session {
    Session::connect(url, id, "test", held)
        .await
        .expect("the control plane accepts the stream")
}

fn held(resources: &[pb::Resource]) -> Vec<pb::ResourceVersion> {
    resources
        .iter()
        .map(|r| pb::ResourceVersion {
            r#type: r.r#type,
            name: r.name.clone(),
            version: r.version.clone(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_carry_only_what_differs() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &["--keepalive-secs", "1"]).await;
    apply(&cp, &config(9001, true)).await;
    let expected = sentinel_config::compile("x", &config(9001, true))
        .unwrap()
        .resources();

    // First connect: everything.
    let mut s = Session {
        ..connect(cp.grpc_url(), "p1", vec![]).await
    };
    let first = s
        .next(Duration::from_secs(5))
        .await
        .expect("a first response");
    assert_eq!(first.resources.len(), expected.len());
    assert_eq!(first.version_number, 1);
    let snapshot = sentinel_config::Snapshot::from_resources(&first.resources).unwrap();
    assert_eq!(snapshot.config_hash(), first.config_version);
    s.ack(&first).await;
    assert!(
        wait_for(Duration::from_secs(5), || async {
            nodes(&cp).await["nodes"][0]["acked_version"] == 1
        })
        .await,
        "ACK not recorded: {}",
        nodes(&cp).await
    );

    // A change of one target: only the endpoints of that upstream.
    apply(&cp, &config(9002, true)).await;
    let change = s.next(Duration::from_secs(5)).await.expect("a delta");
    let names: Vec<(i32, &str)> = change
        .resources
        .iter()
        .map(|r| (r.r#type, r.name.as_str()))
        .collect();
    assert_eq!(names, vec![(pb::ResourceType::Endpoints as i32, "u")]);
    assert!(change.removed.is_empty());
    s.ack(&change).await;

    // A removal is named.
    apply(&cp, &config(9002, false)).await;
    let removal = s.next(Duration::from_secs(5)).await.expect("a removal");
    assert!(removal.resources.is_empty());
    assert_eq!(
        removal.removed,
        vec![pb::ResourceRef {
            r#type: pb::ResourceType::Route as i32,
            name: "extra".into()
        }]
    );
    s.ack(&removal).await;
    drop(s);

    // Reconnect holding the current versions: nothing is sent.
    let current = sentinel_config::compile("x", &config(9002, false))
        .unwrap()
        .resources();
    let mut again = connect(cp.grpc_url(), "p1", held(&current)).await;
    assert!(
        again.next(Duration::from_millis(2500)).await.is_none(),
        "nothing differs, nothing is sent"
    );
    let n = nodes(&cp).await;
    assert_eq!(n["nodes"][0]["connected"], true);
    assert_eq!(n["nodes"][0]["acked_version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_recorded_visible_and_not_resent() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    apply(&cp, &config(9001, false)).await;
    let mut s = connect(cp.grpc_url(), "p-nack", vec![]).await;
    let r = s.next(Duration::from_secs(5)).await.unwrap();
    let nack = pb::Nack {
        nonce: r.nonce.clone(),
        config_version: r.config_version.clone(),
        resource: Some(pb::ResourceRef {
            r#type: pb::ResourceType::Listener as i32,
            name: "l".into(),
        }),
        error: "cannot bind 127.0.0.1:8080: address in use".into(),
        ..Default::default()
    };
    s.tx.send(pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Nack(nack)),
    })
    .await
    .unwrap();
    let recorded = wait_for(Duration::from_secs(5), || async {
        nodes(&cp).await["nodes"][0]["last_nack"]["error"]
            == "cannot bind 127.0.0.1:8080: address in use"
    })
    .await;
    assert!(recorded, "{}", nodes(&cp).await);
    let n = nodes(&cp).await;
    assert_eq!(n["nodes"][0]["last_nack"]["resource"], "listener \"l\"");
    assert_eq!(n["nodes"][0]["last_nack"]["version"], 1);
    let status: Value = http()
        .get(format!("{}/v1/status", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["nacks"][0]["node"], "p-nack");
    assert!(
        s.next(Duration::from_millis(1500)).await.is_none(),
        "a refused config is not resent"
    );
    // A new version is offered again.
    apply(&cp, &config(9005, false)).await;
    assert!(s.next(Duration::from_secs(5)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hello_is_rejected() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let mut client = ConfigStreamClient::connect(cp.grpc_url()).await.unwrap();
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Ack(pb::Ack::default())),
    })
    .await
    .unwrap();
    let err = client
        .delta(sentinel_tests::join_request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let (tx, rx) = mpsc::channel(2);
    let hello = pb::Hello {
        node: Some(pb::Node {
            id: "has space".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let err = client
        .delta(sentinel_tests::join_request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_routes_arrive_in_chunks() {
    // A 2.6 MB document takes a debug build 10–30 s to compile on a busy
    // 2-core machine; this test is about chunking, not compile speed.
    let cp = ControlPlane::start(
        std::path::Path::new(BIN),
        "",
        &["--compile-timeout-secs", "300"],
    )
    .await;
    let mut doc =
        String::from("upstreams { upstream \"u\" { target \"127.0.0.1:9\"; }; }\nroutes {\n");
    for i in 0..10_000 {
        doc.push_str(&format!(
            "    route \"route-{i}\" {{ matches {{ path-prefix \"/service-{i}/\"; host \"tenant-{i}.example.com\" \"*.tenant-{i}.example.org\"; method \"GET\" \"POST\"; header \"X-Tenant\" \"tenant-{i}\"; }}; upstream \"u\"; policies {{ request-headers {{ set \"X-Route\" \"route-{i}\"; }}; }}; }}\n"
        ));
    }
    doc.push_str("}\n");
    apply(&cp, &doc).await;
    let mut s = connect(cp.grpc_url(), "big", vec![]).await;
    let mut chunks = 0;
    let mut resources = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), s.rx.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if msg.keepalive {
            continue;
        }
        chunks += 1;
        resources += msg.resources.len();
        assert!(
            prost::Message::encoded_len(&msg) < 4 * 1024 * 1024,
            "a chunk above gRPC's 4 MiB limit"
        );
        if msg.chunk + 1 == msg.chunk_count {
            break;
        }
    }
    assert!(chunks > 1, "a 10k-route config must be split");
    assert_eq!(
        resources,
        10_000 + 3,
        "routes + upstream + endpoints + settings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_share_applies() {
    let pg = Postgres::start();
    let a = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &["--replica", "a"]).await;
    let b = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &["--replica", "b"]).await;
    apply(&a, &config(9001, false)).await;
    let mut on_b = connect(b.grpc_url(), "p-b", vec![]).await;
    let first = on_b
        .next(Duration::from_secs(10))
        .await
        .expect("replica b serves what a applied");
    assert_eq!(first.version_number, 1);
    on_b.ack(&first).await;
    let started = std::time::Instant::now();
    apply(&a, &config(9002, false)).await;
    let second = on_b
        .next(Duration::from_secs(10))
        .await
        .expect("the apply on a reaches b");
    assert_eq!(second.version_number, 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "NOTIFY should beat the poll: {:?}",
        started.elapsed()
    );
    on_b.ack(&second).await;
    // Exactly one activation per apply, whichever replica is asked.
    let history: Value = http()
        .get(format!("{}/v1/activations", b.url()))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["activations"].as_array().unwrap().len(), 2);
    let n = nodes(&a).await;
    assert_eq!(n["nodes"][0]["replica"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_streams_and_exits_zero() {
    let mut cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    apply(&cp, &config(9001, false)).await;
    let mut s = connect(cp.grpc_url(), "p-term", vec![]).await;
    let r = s.next(Duration::from_secs(5)).await.unwrap();
    s.ack(&r).await;
    // The ACK is recorded before the signal: the shutdown meets a settled stream.
    assert!(
        wait_for(Duration::from_secs(5), || async {
            nodes(&cp).await["nodes"][0]["acked_version"] == 1
        })
        .await,
        "the ACK is recorded: {}",
        nodes(&cp).await
    );
    let code = tokio::task::spawn_blocking(move || {
        let code = cp.terminate();
        (code, cp)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1.logs());
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.rx.message().await {
                Ok(Some(m)) if m.keepalive => continue,
                other => return other.map(|m| m.is_none()),
            }
        }
    })
    .await
    .expect("the stream ended");
    assert!(end.unwrap_or(true), "stream closed cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_rejects_proxies_without_a_trusted_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
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
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["proxy-1".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
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
        ],
    )
    .await;
    apply(&cp, &config(9001, false)).await;
    let url = format!("https://localhost:{}", cp.grpc.port());
    let tls = |identity: bool| {
        let mut t = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
            .domain_name("localhost");
        if identity {
            t = t.identity(tonic::transport::Identity::from_pem(
                client.pem(),
                client_key.serialize_pem(),
            ));
        }
        t
    };
    let endpoint = |identity: bool| {
        tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(tls(identity))
            .unwrap()
    };
    // Without a client certificate: the handshake or the call fails.
    let rejected = match endpoint(false).connect().await {
        Err(_) => true,
        Ok(channel) => {
            let (tx, rx) = mpsc::channel(1);
            let hello = pb::Hello {
                node: Some(pb::Node {
                    id: "anon".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            tx.send(pb::DeltaRequest {
                kind: Some(pb::delta_request::Kind::Hello(hello)),
            })
            .await
            .unwrap();
            ConfigStreamClient::new(channel)
                .delta(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .is_err()
        }
    };
    assert!(
        rejected,
        "a proxy without a client certificate was accepted"
    );
    // With one signed by the CA: served.
    let channel = endpoint(true).connect().await.unwrap();
    let (tx, rx) = mpsc::channel(2);
    let hello = pb::Hello {
        node: Some(pb::Node {
            id: "proxy-1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut stream = ConfigStreamClient::new(channel)
        .delta(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.version_number, 1);
}

/// The value of an unlabelled metric on the control plane's `/metrics`.
async fn metric(cp: &ControlPlane, name: &str) -> Option<f64> {
    let text = http()
        .get(format!("{}/metrics", cp.url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_beyond_the_bound_wait_for_an_answer() {
    let cp = ControlPlane::start(
        std::path::Path::new(BIN),
        "",
        &["--max-large-pushes", "2", "--compile-timeout-secs", "300"],
    )
    .await;
    // Well above the 64 KiB from which a push needs a permit.
    let mut doc =
        String::from("upstreams { upstream \"u\" { target \"127.0.0.1:9\"; }; }\nroutes {\n");
    for i in 0..1_000 {
        doc.push_str(&format!(
            "    route \"route-{i}\" {{ matches {{ path-prefix \"/service-{i}/\"; host \"tenant-{i}.example.com\"; }}; upstream \"u\"; }}\n"
        ));
    }
    doc.push_str("}\n");
    apply(&cp, &doc).await;

    // Four proxies that hold nothing; each reader reports the response it
    // received (chunks merged) and nothing else.
    let (got_tx, mut got) = mpsc::unbounded_channel::<(usize, pb::DeltaResponse)>();
    let mut senders = Vec::new();
    for i in 0..4 {
        let Session { tx, mut rx } = connect(cp.grpc_url(), &format!("big-{i}"), vec![]).await;
        senders.push(tx);
        let got_tx = got_tx.clone();
        tokio::spawn(async move {
            let mut merged: Option<pb::DeltaResponse> = None;
            while let Ok(Some(msg)) = rx.message().await {
                if msg.keepalive {
                    continue;
                }
                let last = msg.chunk + 1 == msg.chunk_count;
                match &mut merged {
                    None => merged = Some(msg),
                    Some(m) => m.resources.extend(msg.resources),
                }
                if last && let Some(m) = merged.take() {
                    let _ = got_tx.send((i, m));
                }
            }
        });
    }
    async fn next(
        got: &mut mpsc::UnboundedReceiver<(usize, pb::DeltaResponse)>,
    ) -> (usize, pb::DeltaResponse) {
        tokio::time::timeout(Duration::from_secs(60), got.recv())
            .await
            .expect("a push within 60 s")
            .expect("readers run")
    }
    let first = next(&mut got).await;
    let second = next(&mut got).await;
    assert_eq!(
        first.1.resources.len(),
        1_000 + 3,
        "the whole configuration"
    );
    // The other two are admitted only when an answer frees a permit: they
    // wait (they are not refused), and never more than two are in flight.
    assert!(
        wait_for(Duration::from_secs(30), || async {
            metric(&cp, "sentinel_cp_large_pushes_waiting").await == Some(2.0)
        })
        .await,
        "two sessions wait for a permit"
    );
    assert_eq!(
        metric(&cp, "sentinel_cp_large_pushes_in_flight").await,
        Some(2.0)
    );
    let ack = |r: &pb::DeltaResponse| pb::DeltaRequest {
        kind: Some(pb::delta_request::Kind::Ack(pb::Ack {
            nonce: r.nonce.clone(),
            config_version: r.config_version.clone(),
            ..Default::default()
        })),
    };
    senders[first.0].send(ack(&first.1)).await.unwrap();
    let third = next(&mut got).await;
    assert!(![first.0, second.0].contains(&third.0));
    assert_eq!(third.1.resources.len(), 1_000 + 3);
    assert_eq!(
        metric(&cp, "sentinel_cp_large_pushes_waiting").await,
        Some(1.0),
        "one answer admits one session"
    );
    senders[second.0].send(ack(&second.1)).await.unwrap();
    senders[third.0].send(ack(&third.1)).await.unwrap();
    let fourth = next(&mut got).await;
    assert!(![first.0, second.0, third.0].contains(&fourth.0));
    assert!(
        wait_for(Duration::from_secs(30), || async {
            metric(&cp, "sentinel_cp_large_pushes_waiting").await == Some(0.0)
        })
        .await
    );
}
