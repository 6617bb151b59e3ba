//! The console in a real browser (headless Chromium over WebDriver): the
//! real control plane, three real proxies in two regions, a real backend.
//! Screenshots of every page are saved and their paths printed
//! (`cargo test -p sentinel-tests --test console -- --nocapture`).

use std::net::SocketAddr;
use std::time::Duration;

use sentinel_tests::browser::Browser;
use sentinel_tests::{ControlPlane, DemoBackend, Proxy, http, wait_for, workspace_bin};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn call(cp: &ControlPlane, method: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .request(method.parse().unwrap(), format!("{}{path}", cp.url()))
        .bearer_auth(&cp.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn token(cp: &ControlPlane, name: &str, role: &str) -> String {
    let (status, t) = call(
        cp,
        "POST",
        "/v1/tokens",
        json!({ "name": name, "role": role }),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    t["token"].as_str().unwrap().to_string()
}

async fn apply(cp: &ControlPlane, version: u32, backend: SocketAddr, extra: &str) {
    let source = sentinel_tests::versioned_config(version, backend, extra);
    let (status, body) = call(
        cp,
        "POST",
        "/v1/configs",
        json!({ "source": source, "message": format!("v{version} from the test") }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn converge(proxies: &[&Proxy], version: &str) {
    for p in proxies {
        let ok = wait_for(WAIT, || async {
            p.served().await.as_deref() == Some(version)
        })
        .await;
        assert!(ok, "{} never served {version}\n{}", p.name, p.logs());
    }
}

/// `true` when the fleet page shows `n` nodes, all in `state`, and
/// `version` as the active one.
fn fleet_shows(n: usize, state: &str, version: u32) -> String {
    format!(
        "const nodes = [...document.querySelectorAll('[data-node]')];
         const active = document.getElementById('active-version');
         return nodes.length === {n} && nodes.every(e => e.dataset.state === '{state}')
             && !!active && active.textContent.startsWith('Active version v{version}');"
    )
}

async fn log_in(b: &Browser, secret: &str) {
    let input = b.element("#token").await;
    input.clear().await;
    input.send_keys(secret).await;
    b.click("#login button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_the_fleet_and_rolls_it_back() {
    let backend = DemoBackend::start(&workspace_bin("sentinel-bench-backend"), "web");
    let mut cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    let urls = [cp.grpc_url()];
    let proxy_bin = workspace_bin("sentinel");
    // us-1 cannot bind the extra listener of v3 (the port is taken): it NACKs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let eu1 = Proxy::start(&proxy_bin, "eu-1", "eu", &urls, &[]);
    let eu2 = Proxy::start(&proxy_bin, "eu-2", "eu", &urls, &[]);
    let us1 = Proxy::start(
        &proxy_bin,
        "us-1",
        "us",
        &urls,
        &[("EXTRA_ADDR", taken_addr.as_str())],
    );
    let all = [&eu1, &eu2, &us1];
    let writer = token(&cp, "operator", "write").await;
    let reader = token(&cp, "viewer", "read").await;
    apply(&cp, 1, backend.addr, "").await;
    converge(&all, "v1").await;

    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/ui/", cp.url())).await;

    // The login form: a labelled field; Enter in it submits.
    b.element("#token").await;
    assert_eq!(
        b.js("return document.getElementById('token').labels[0].textContent;")
            .await,
        json!("API token")
    );
    // A wrong token is refused and said so.
    log_in(&b, "not-a-token").await;
    assert!(
        b.until(WAIT, "return !!document.getElementById('login-error');")
            .await,
        "no refusal shown for a wrong token"
    );
    b.screenshot("login-refused").await;

    // The write token sees 3 nodes in 2 regions, all on v1.
    log_in(&b, &writer).await;
    assert!(
        b.until(WAIT, &fleet_shows(3, "on", 1)).await,
        "the fleet page never showed 3 nodes on v1: {}",
        b.source().await
    );
    let regions = b
        .js("return [...document.querySelectorAll('[data-region]')].map(e => e.dataset.region);")
        .await;
    assert_eq!(regions, json!(["eu", "us"]));
    assert_eq!(
        b.js("return document.querySelector('[data-counts=eu]').textContent;")
            .await,
        json!("2 nodes · 2 on active · 0 behind · 0 NACKed · 0 disconnected")
    );
    assert!(
        b.until(
            WAIT,
            "return document.getElementById('live').dataset.state === 'on';"
        )
        .await
    );
    b.screenshot("fleet").await;

    // A new version applied through the API reaches the page without a reload.
    b.js("window.sentinelNoReload = 1; return true;").await;
    apply(&cp, 2, backend.addr, "").await;
    converge(&all, "v2").await;
    assert!(
        b.until(WAIT, &fleet_shows(3, "on", 2)).await,
        "the fleet page did not follow v2"
    );
    assert_eq!(
        b.js("return window.sentinelNoReload === 1;").await,
        json!(true),
        "the page was reloaded"
    );

    // The diff between v1 and v2: the changed route, the changed line.
    b.goto(&format!("{}/ui/#/diff/1/2", cp.url())).await;
    assert!(
        b.until(WAIT, "const d = document.getElementById('text-diff'); return !!d && [...d.querySelectorAll('.add')].some(e => e.textContent.includes('\"v2\"')) && [...d.querySelectorAll('.del')].some(e => e.textContent.includes('\"v1\"'));").await,
        "the text diff does not show v1 → v2: {}",
        b.source().await
    );
    assert_eq!(
        b.js("return document.querySelector('#changed li').textContent;")
            .await,
        json!("route all")
    );
    b.screenshot("diff").await;

    // Roll back to v1 from the version page, with the confirmation.
    b.goto(&format!("{}/ui/#/version/1", cp.url())).await;
    assert!(
        b.until(WAIT, "return !!document.querySelector('#source .k-node');")
            .await,
        "no highlighted source"
    );
    b.screenshot("version").await;
    b.click("#rollback").await;
    b.click("#confirm-rollback").await;
    converge(&all, "v1").await;
    assert!(
        b.until(WAIT, &fleet_shows(3, "on", 1)).await,
        "the fleet page did not move back to v1"
    );
    let (_, audit) = call(&cp, "GET", "/v1/audit", json!({})).await;
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "rollback" && e["actor"] == "operator"),
        "{audit}"
    );

    // A staged rollout: eu-1 first with a long bake, then everyone. The
    // rollout page shows the stage baking; Promote (write role) moves it on
    // and the rollout completes.
    let source = sentinel_tests::versioned_config(3, backend.addr, "");
    let plan = json!({ "stages": [{ "select": "node:eu-1", "bake_ms": 600000 }, { "select": "*", "bake_ms": 0 }] });
    let (status, created) = call(
        &cp,
        "POST",
        "/v1/configs",
        json!({ "source": source, "message": "staged", "rollout": plan }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let rollout = created["rollout"].as_i64().expect("a rollout id");
    converge(&[&eu1], "v3").await;
    b.goto(&format!("{}/ui/#/rollout/{rollout}", cp.url()))
        .await;
    assert!(
        b.until(WAIT, "const s = document.querySelector('[data-stage=\"0\"]'); return !!s && s.dataset.state === 'baking';").await,
        "stage 1 is not shown baking: {}",
        b.source().await
    );
    assert_eq!(
        us1.served().await.as_deref(),
        Some("v1"),
        "outside the canary"
    );
    // The gates with what they see now (the stage's traffic, the reference).
    assert!(
        b.until(WAIT, "return document.querySelectorAll('#gates [data-gate]').length === 4 && document.querySelector('[data-gate=\"error-rate\"]').textContent.includes('%');").await,
        "no live gate table: {}",
        b.source().await
    );
    assert_eq!(
        b.js("return document.querySelector('main').textContent.includes('null');")
            .await,
        json!(false),
        "a `null` printed on the page"
    );
    b.screenshot("rollout").await;
    b.click("#promote").await;
    converge(&all, "v3").await;
    assert!(
        b.until(WAIT, "const s = document.getElementById('rollout-state'); return !!s && s.textContent.startsWith('completed');").await,
        "the rollout page did not follow to completion: {}",
        b.source().await
    );
    b.goto(&format!("{}/ui/#/rollouts", cp.url())).await;
    let listed = format!(
        "const r = document.querySelector('[data-rollout=\"{rollout}\"]'); return !!r && r.dataset.state === 'completed';"
    );
    assert!(b.until(WAIT, &listed).await, "the rollouts list");
    b.screenshot("rollouts").await;

    // A NACKing node shows its reason.
    apply(
        &cp,
        4,
        backend.addr,
        "    listener \"extra\" { address \"${EXTRA_ADDR:-127.0.0.1:0}\"; }",
    )
    .await;
    converge(&[&eu1, &eu2], "v4").await;

    b.goto(&format!("{}/ui/#/fleet", cp.url())).await;
    assert!(
        b.until(WAIT, "const n = document.querySelector('[data-node=\"us-1\"]'); return !!n && n.dataset.state === 'nack' && n.title.includes('cannot bind');").await,
        "us-1's NACK is not shown: {}",
        b.source().await
    );
    assert!(
        b.until(
            WAIT,
            "return !!document.querySelector('[data-nack=\"us-1\"]');"
        )
        .await
    );
    b.screenshot("fleet-nack").await;

    // Convergence of the last activation: eu-1 and eu-2 hold v4, us-1 not.
    b.goto(&format!("{}/ui/#/convergence", cp.url())).await;
    assert!(
        b.until(WAIT, "const c = document.getElementById('converged'); return !!c && c.textContent.startsWith('2 of 3 nodes held v4');").await,
        "convergence: {}",
        b.source().await
    );
    b.screenshot("convergence").await;
    b.goto(&format!("{}/ui/#/health", cp.url())).await;
    assert!(b.until(WAIT, "return !!document.querySelector('h1') && document.querySelector('h1').textContent === 'Health';").await);
    b.screenshot("health").await;
    b.goto(&format!("{}/ui/#/versions", cp.url())).await;
    assert!(
        b.until(
            WAIT,
            "return document.querySelectorAll('#versions [data-version]').length === 4;"
        )
        .await
    );
    b.screenshot("versions").await;
    // Accessibility basics: every control is labelled, and the theme switch
    // works (both themes are screenshotted).
    let labelled = "return [...document.querySelectorAll('input, select, button')].every(e => e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim());";
    assert_eq!(
        b.js(labelled).await,
        json!(true),
        "an unlabelled control on the versions page"
    );
    b.click("#theme").await;
    let dark = b
        .js("return getComputedStyle(document.body).backgroundColor;")
        .await;
    b.goto(&format!("{}/ui/#/fleet", cp.url())).await;
    assert!(
        b.until(
            WAIT,
            "return document.querySelectorAll('[data-node]').length === 3;"
        )
        .await
    );
    b.screenshot("fleet-other-theme").await;
    b.click("#theme").await;
    let light = b
        .js("return getComputedStyle(document.body).backgroundColor;")
        .await;
    assert_ne!(dark, light, "the theme switch changes nothing");

    // A lost connection is said so, and comes back by itself.
    b.goto(&format!("{}/ui/#/fleet", cp.url())).await;
    cp.kill();
    assert!(
        b.until(
            WAIT,
            "return document.getElementById('live').dataset.state === 'lost';"
        )
        .await,
        "no lost-connection notice"
    );
    b.screenshot("connection-lost").await;
    cp.restart().await;
    assert!(
        b.until(
            WAIT,
            "return document.getElementById('live').dataset.state === 'on';"
        )
        .await,
        "did not reconnect"
    );

    // The read token looks but cannot act.
    b.click("#logout").await;
    log_in(&b, &reader).await;
    assert!(
        b.until(
            WAIT,
            "return document.getElementById('who').dataset.role === 'read';"
        )
        .await
    );
    b.goto(&format!("{}/ui/#/version/2", cp.url())).await;
    assert!(
        b.until(WAIT, "return !!document.querySelector('#source .k-node');")
            .await
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#rollback, button.danger').length;")
            .await,
        json!(0)
    );
    b.goto(&format!("{}/ui/#/audit", cp.url())).await;
    assert!(
        b.until(
            WAIT,
            "return document.querySelector('main').textContent.includes('admin role');"
        )
        .await
    );

    // On a phone.
    b.set_window_size(390, 844).await;
    b.goto(&format!("{}/ui/#/fleet", cp.url())).await;
    assert!(
        b.until(
            WAIT,
            "return document.querySelectorAll('[data-node]').length === 3;"
        )
        .await
    );
    let overflow = b
        .js("return document.documentElement.scrollWidth <= window.innerWidth;")
        .await;
    assert_eq!(
        overflow,
        json!(true),
        "the fleet page scrolls sideways on a phone"
    );
    b.screenshot("fleet-phone").await;
    println!("screenshots in {}", b.shots.display());
    b.close().await;
    drop(taken);
}

/// The console's files are served with a strict Content-Security-Policy,
/// without a token; the API behind it still needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_assets_are_embedded_and_locked_down() {
    let cp = ControlPlane::start(&workspace_bin("sentinel-cp"), "", &[]).await;
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = http()
            .get(format!("{}{path}", cp.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let r = http()
        .get(format!("{}/ui/nope.js", cp.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http().get(format!("{}/ui", cp.url())).send().await.unwrap();
    assert_eq!(r.status(), 200, "/ui redirects to /ui/");
    let r = http()
        .get(format!("{}/v1/events", cp.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
