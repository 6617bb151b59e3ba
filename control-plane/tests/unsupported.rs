//! Features no proxy can run yet are refused at apply: the real
//! `sentinel-cp` answers 422 with the compiler's located diagnostic and
//! stores nothing, so the fleet is never offered a config every proxy
//! would NACK. The list lives in `config/src/compile/unsupported.rs`.

use reqwest::StatusCode;
use sentinel_tests::ControlPlane;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

const BASE: &str = "listeners {\n  listener \"l\" { address \"127.0.0.1:1\"; }\n}\nupstreams {\n  upstream \"u\" { target \"127.0.0.1:9\"; }\n}\n";

/// (what, extra document text, line of the refused node, its column,
/// message fragment, what the help names: the issue, or the alternative).
fn cases() -> Vec<(
    &'static str,
    &'static str,
    usize,
    usize,
    &'static str,
    &'static str,
)> {
    vec![(
        "otlp tracing",
        "observability {\n  tracing {\n    backend \"otlp\" { endpoint \"http://127.0.0.1:4317\"; }\n  }\n}\nroutes {\n  route \"r\" { upstream \"u\"; }\n}\n",
        9,
        5,
        "`backend \"otlp\"` is not supported yet",
        "issue 15",
    )]
}

async fn post(cp: &ControlPlane, body: Value) -> (StatusCode, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .json(&body)
        .send()
        .await
        .expect("control plane answers");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn versions(cp: &ControlPlane) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .send()
        .await
        .expect("control plane answers");
    resp.json::<Value>().await.unwrap_or(Value::Null)["versions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_proxies_cannot_run_are_refused_with_422_and_nothing_is_stored() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    // One good version first, so "unchanged" means more than "empty".
    let good = format!("{BASE}routes {{\n  route \"r\" {{ upstream \"u\"; }}\n}}\n");
    let (s, b) = post(&cp, json!({"source": good, "file": "good.kdl"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let before = versions(&cp).await;
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");

    for (what, extra, line, column, message, issue) in cases() {
        let source = format!("{BASE}{extra}");
        let (s, b) = post(&cp, json!({"source": source, "file": "fleet.kdl"})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {b}");
        let diagnostics = b["diagnostics"].as_array().cloned().unwrap_or_default();
        let hit = diagnostics
            .iter()
            .find(|d| d["message"].as_str().is_some_and(|m| m.contains(message)));
        let Some(d) = hit else {
            panic!("{what}: no diagnostic contains {message:?}: {b}");
        };
        assert_eq!(
            (d["line"].clone(), d["column"].clone()),
            (json!(line), json!(column)),
            "{what}: {d}"
        );
        assert!(
            d["help"].as_str().is_some_and(|h| h.contains(issue)),
            "{what}: help names {issue}: {d}"
        );
        let rendered = b["rendered"].as_str().unwrap_or_default();
        assert!(
            rendered.contains(&format!("fleet.kdl:{line}:{column}")),
            "{what}: {rendered}"
        );
        assert_eq!(versions(&cp).await, before, "{what}: nothing stored");
    }
}
