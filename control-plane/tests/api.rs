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
    assert!(b["message"].as_str().unwrap().contains("needs `write`"));
    assert_eq!(b["code"], "forbidden");
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
    assert_eq!(b["code"], "unavailable");
    assert!(
        b["message"]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_is_the_token_and_the_author_is_free_text() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let admin = Some(cp.token.as_str());
    let (s, b) = call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": minimal(1), "author": "mallory", "message": "m"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // The harness's bootstrap token is named `bootstrap`.
    let (_, audit) = call(&cp, "GET", "/v1/audit", admin, None).await;
    let apply = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "apply")
        .cloned()
        .unwrap_or_default();
    assert_eq!(apply["actor"], "bootstrap", "{audit}");
    let (_, history) = call(&cp, "GET", "/v1/activations", admin, None).await;
    assert_eq!(history["activations"][0]["actor"], "bootstrap", "{history}");
    let (_, v) = call(&cp, "GET", "/v1/configs/1", admin, None).await;
    assert_eq!(v["version"]["author"], "mallory", "{v}");
}

/// `docs/openapi.json` is the document the server serves, byte for byte.
/// `SENTINEL_UPDATE_OPENAPI=1 cargo test -p sentinel-cp --test api
/// committed_openapi_document_is_the_served_one` rewrites it (as does
/// `sentinel-cp openapi > docs/openapi.json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_openapi_document_is_the_served_one() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let resp = client()
        .get(format!("{}/v1/openapi.json", cp.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = resp.text().await.unwrap();
    let printed = std::process::Command::new(BIN)
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), served);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("SENTINEL_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json differs from the served document; regenerate it with \
         `SENTINEL_UPDATE_OPENAPI=1 cargo test -p sentinel-cp --test api committed_openapi`"
    );
    // Complete: every operation has its role, parameters are declared, and
    // every error answer refers to the one error schema.
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let number = &doc["paths"]["/v1/configs/{number}"]["get"]["parameters"][0];
    assert_eq!(number["name"], "number");
    assert_eq!(number["in"], "path");
    let apply = &doc["paths"]["/v1/configs"]["post"];
    assert_eq!(apply["x-sentinel-role"], "write");
    for ct in ["application/json", "text/plain", "application/kdl"] {
        assert!(apply["requestBody"]["content"][ct].is_object(), "{ct}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["x-sentinel-role"].is_string(), "{method} {path}");
            for (status, r) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || (path.starts_with("/v1/") && status.starts_with('5'))
                {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

/// What axum would answer in plain text is JSON in the error schema too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_in_the_error_schema() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let c = client();
    let base = cp.url();
    let check = |status: StatusCode, code: &'static str| {
        move |resp: reqwest::Response| async move {
            assert_eq!(resp.status(), status);
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            let b: Value = resp.json().await.unwrap();
            assert_eq!(b["code"], code, "{b}");
            assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
        }
    };
    // No JSON content type on a JSON-only body.
    check(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")(
        c.post(format!("{base}/v1/tokens"))
            .bearer_auth(&cp.token)
            .body(r#"{"name":"x","role":"read"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Malformed JSON and a field of the wrong type.
    for body in [
        "{",
        r#"{"source": 5}"#,
        r#"{"source": "", "dry_run": "yes"}"#,
    ] {
        check(StatusCode::BAD_REQUEST, "bad_request")(
            c.post(format!("{base}/v1/configs"))
                .bearer_auth(&cp.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
    }
    // A path parameter and a query parameter of the wrong type.
    for path in [
        "/v1/configs/abc",
        "/v1/configs?limit=x",
        "/v1/configs?limit=0",
        "/v1/diff?from=1.5",
    ] {
        check(StatusCode::BAD_REQUEST, "bad_request")(
            c.get(format!("{base}{path}"))
                .bearer_auth(&cp.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
    }
    // Unknown path, unknown method.
    check(StatusCode::NOT_FOUND, "not_found")(
        c.get(format!("{base}/v1/nope")).send().await.unwrap(),
    )
    .await;
    check(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")(
        c.put(format!("{base}/v1/configs"))
            .bearer_auth(&cp.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Invalid KDL: diagnostics and the rendered text beside code/message.
    let resp = c
        .post(format!("{base}/v1/configs"))
        .bearer_auth(&cp.token)
        .header("content-type", "text/plain")
        .body("routes { route \"r\" { upstream \"missing\"; }; }\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["code"], "invalid_config");
    assert!(b["diagnostics"][0]["line"].as_u64().is_some(), "{b}");
    assert!(b["rendered"].as_str().is_some(), "{b}");
}

/// Apply takes raw KDL (`text/plain`, `application/kdl`) as well as JSON;
/// the metadata of a raw body travels in the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_accepts_raw_kdl_bodies() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let c = client();
    let resp = c
        .post(format!(
            "{}/v1/configs?message=raw%20one&author=ops",
            cp.url()
        ))
        .bearer_auth(&cp.token)
        .header("content-type", "text/plain; charset=utf-8")
        .body(minimal(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = c
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .header("content-type", "application/kdl")
        .header("if-match", "1")
        .body(minimal(2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (s, v) = call(&cp, "GET", "/v1/configs/1", Some(&cp.token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"]["message"], "raw one");
    assert_eq!(v["version"]["author"], "ops");
    assert_eq!(v["source"], minimal(1));
    // If-Match on a raw body: 409 when stale.
    let resp = c
        .post(format!("{}/v1/configs", cp.url()))
        .bearer_auth(&cp.token)
        .header("content-type", "application/kdl")
        .header("if-match", "\"1\"")
        .body(minimal(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

/// Lists page with `limit` and `cursor` (`next_cursor` until the last
/// page); reads carry an `ETag` and answer 304 to a matching `If-None-Match`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_and_reads_are_conditional() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let admin = Some(cp.token.as_str());
    for port in 1..=5 {
        let (s, b) = call(
            &cp,
            "POST",
            "/v1/configs",
            admin,
            Some(json!({"source": minimal(port)})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let mut seen = Vec::new();
    let mut path = "/v1/configs?limit=2".to_string();
    loop {
        let (s, b) = call(&cp, "GET", &path, admin, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        for v in b["versions"].as_array().unwrap() {
            seen.push(v["number"].as_i64().unwrap());
        }
        match b["next_cursor"].as_i64() {
            Some(c) => path = format!("/v1/configs?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![5, 4, 3, 2, 1]);
    let (_, b) = call(&cp, "GET", "/v1/activations?limit=3", admin, None).await;
    assert_eq!(b["activations"].as_array().unwrap().len(), 3);
    let c = b["next_cursor"].as_i64().unwrap();
    let (_, b) = call(
        &cp,
        "GET",
        &format!("/v1/activations?limit=3&cursor={c}"),
        admin,
        None,
    )
    .await;
    assert_eq!(b["activations"].as_array().unwrap().len(), 2);
    assert!(b.get("next_cursor").is_none(), "{b}");
    for name in ["a", "b", "c"] {
        call(
            &cp,
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"name": name, "role": "read"})),
        )
        .await;
    }
    let (_, b) = call(&cp, "GET", "/v1/tokens?limit=2", admin, None).await;
    let names: Vec<&str> = b["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    let (_, b) = call(
        &cp,
        "GET",
        &format!("/v1/tokens?cursor={}", b["next_cursor"].as_str().unwrap()),
        admin,
        None,
    )
    .await;
    let names: Vec<&str> = b["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bootstrap", "bootstrap-join", "c"]);

    // ETag / If-None-Match.
    let c = client();
    let url = format!("{}/v1/configs/active", cp.url());
    let first = c.get(&url).bearer_auth(&cp.token).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let tag = first.headers()["etag"].to_str().unwrap().to_string();
    let again = c
        .get(&url)
        .bearer_auth(&cp.token)
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), tag);
    assert!(again.text().await.unwrap().is_empty());
    // A change makes the old tag stale.
    call(
        &cp,
        "POST",
        "/v1/configs",
        admin,
        Some(json!({"source": minimal(6)})),
    )
    .await;
    let changed = c
        .get(&url)
        .bearer_auth(&cp.token)
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), tag);
}

/// `If-Match` on rollback: nothing changes unless it names the active version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_honours_if_match() {
    let cp = ControlPlane::start(std::path::Path::new(BIN), "", &[]).await;
    let admin = Some(cp.token.as_str());
    for port in 1..=2 {
        call(
            &cp,
            "POST",
            "/v1/configs",
            admin,
            Some(json!({"source": minimal(port)})),
        )
        .await;
    }
    let rollback = |tag: &'static str| {
        client()
            .post(format!("{}/v1/rollback", cp.url()))
            .bearer_auth(&cp.token)
            .header("if-match", tag)
            .send()
    };
    let stale = rollback("1").await.unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let b: Value = stale.json().await.unwrap();
    assert_eq!(b["code"], "conflict");
    let (_, active) = call(&cp, "GET", "/v1/configs/active", admin, None).await;
    assert_eq!(
        active["version"]["number"], 2,
        "a refused rollback changes nothing"
    );
    let ok = rollback("\"2\"").await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let b: Value = ok.json().await.unwrap();
    assert_eq!((b["from"].as_i64(), b["to"].as_i64()), (Some(2), Some(1)));
}
