//! The REST API as a client sees it: the real `sentinel-cp` binary.

use reqwest::StatusCode;
use sentinel_tests::{ControlPlane, Postgres};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn minimal(port: u16) -> String {
    format!(
        "listeners {{ listener \"l\" {{ address \"127.0.0.1:{port}\"; }}; }}\nupstreams {{ upstream \"u\" {{ target \"127.0.0.1:9\"; }}; }}\nroutes {{ route \"r\" {{ upstream \"u\"; }}; }}\n"
    )
}

async fn call(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let c = client();
    let mut req = c.request(method.parse().unwrap(), format!("{}{path}", cp.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_of_the_api() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let admin = Some(cp.token.as_str());
    // 401 without a token, and with an unknown one.
    assert_eq!(
        call(&cp, "GET", "/v1/configs", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&cp, "GET", "/v1/configs", Some("nope"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // 404 before anything was applied.
    assert_eq!(
        call(&cp, "GET", "/v1/configs/active", admin, None).await.0,
        StatusCode::NOT_FOUND
    );
    // 201 created, then 200 unchanged.
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": minimal(1), "message": "one"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["version"], 1);
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": minimal(1)})),
    )
    .await;
    assert_eq!((s, b["created"].clone()), (StatusCode::OK, json!(false)));
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored")
    );
    // 422 with diagnostics.
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": "sever {\n}\n", "file": "x.kdl"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b["diagnostics"][0]["line"], 1);
    assert_eq!(b["diagnostics"][0]["column"], 1);
    assert_eq!(b["diagnostics"][0]["help"], "did you mean `server`?");
    assert!(b["rendered"].as_str().unwrap().contains("x.kdl:1:1"));
    assert_eq!(
        call(&cp, "GET", "/v1/configs", admin, None).await.1["versions"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing stored"
    );
    // 409 on If-Match mismatch; 201 on match.
    let c = client();
    let r = c
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .header("If-Match", "\"7\"")
        .json(&json!({"source": minimal(2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = c
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .header("If-Match", "1")
        .json(&json!({"source": minimal(2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // 400 on a bad body.
    let r = c
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Dry run shows the diff and stores nothing.
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": minimal(3), "dry_run": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b["diff"]["changed"],
        json!([{"type": "listener", "name": "l"}])
    );
    assert!(b["diff"]["text"].as_str().unwrap().contains("+listeners"));
    // Diff between stored versions.
    let (_, d) = call(&cp, "GET", "/v1/diff?from=1&to=2", admin, None).await;
    assert_eq!(d["changed"], json!([{"type": "listener", "name": "l"}]));
    // Rollback and its 404/409.
    let (s, b) = call(&cp, "POST", "/v1/rollback", admin, Some(json!({}))).await;
    assert_eq!(
        (s, b["from"].clone(), b["to"].clone()),
        (StatusCode::OK, json!(2), json!(1))
    );
    assert_eq!(
        call(&cp, "POST", "/v1/rollback", admin, Some(json!({"to": 9})))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&cp, "POST", "/v1/rollback", admin, Some(json!({"to": 1})))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (_, active) = call(&cp, "GET", "/v1/configs/active", admin, None).await;
    assert_eq!(active["version"]["number"], 1);
    assert!(active["source"].as_str().unwrap().contains("127.0.0.1:1"));
    // 403: a read token cannot apply, create tokens or read the audit.
    let (s, t) = call(
        &cp,
        "POST",
        "/v1/tokens",
        admin,
        Some(json!({"name": "viewer", "role": "read"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let viewer = t["token"].as_str().unwrap().to_string();
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        Some(&viewer),
        Some(json!({"source": minimal(4)})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(b["error"].as_str().unwrap().contains("needs `write`"));
    assert_eq!(
        call(&cp, "GET", "/v1/status", Some(&viewer), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&cp, "GET", "/v1/audit", Some(&viewer), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &cp,
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"name": "viewer", "role": "read"}))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    // History, OpenAPI, health endpoints.
    let (_, h) = call(&cp, "GET", "/v1/activations", admin, None).await;
    assert_eq!(h["activations"].as_array().unwrap().len(), 3);
    let (s, o) = call(&cp, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(o["paths"]["/v1/configs"]["post"]["responses"]["422"].is_object());
    assert_eq!(
        call(&cp, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&cp, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    let (_, m) = call(&cp, "GET", "/metrics", None, None).await;
    assert!(m.as_str().unwrap().contains("sentinel_cp_applies_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_answers_503_and_recovers_without_restart() {
    let mut pg = Postgres::start();
    let cp = ControlPlane::start(std::path::Path::new(BIN), &pg.url(), &[]).await;
    let admin = Some(cp.token.as_str());
    assert_eq!(
        call(
            &cp,
            "POST",
            "/v1/configs",
            admin,
            Some(json!({"source": minimal(1)}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    pg.stop();
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": minimal(2)})),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("database is unavailable"),
        "{b}"
    );
    assert_eq!(
        call(&cp, "POST", "/v1/rollback", admin, Some(json!({})))
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(&cp, "GET", "/readyz", None, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    pg.restart();
    let mut ok = false;
    for _ in 0..50 {
        if call(
            &cp,
            "POST",
            "/v1/configs",
            admin,
            Some(json!({"source": minimal(2)})),
        )
        .await
        .0 == StatusCode::CREATED
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ok, "apply never worked again:\n{}", cp.logs());
    let (_, v) = call(&cp, "GET", "/v1/configs", admin, None).await;
    assert_eq!(
        v["versions"].as_array().unwrap().len(),
        2,
        "the failed apply stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_can_be_served_over_tls() {
    let _ = client();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("api.pem");
    let key_path = dir.path().join("api.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let cp = ControlPlane::start(
        std::path::Path::new(BIN),
        "",
        &[
            "--api-tls-cert",
            cert_path.to_str().unwrap(),
            "--api-tls-key",
            key_path.to_str().unwrap(),
        ],
    )
    .await;
    let tls = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .resolve("localhost", cp.api)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}", cp.api.port());
    let r = tls
        .get(format!("{url}/v1/status"))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Plain HTTP on the TLS port gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", cp.api))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true));
}
