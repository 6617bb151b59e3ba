//! A real browser for the console tests: Debian's `chromium`, headless,
//! driven by `chromedriver` (started here on a free loopback port) over the
//! W3C WebDriver protocol.
//!
//! The client is the dozen WebDriver commands the tests use, over the
//! harness's `reqwest`: the WebDriver crates (fantoccini, thirtyfour) pull
//! in Mozilla's `webdriver` crate (MPL-2.0) and second copies of `http`,
//! `cookie` and the ICU crates, which `cargo deny` (deny.toml: one version
//! of each crate, permissive licenses) rightly refuses for this little.
//!
//! Screenshots go to a temp dir that outlives the test (its path is
//! printed), so a failure can be looked at afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{free_port, http, wait_for};

/// How long an element may take to appear.
const FIND_TIMEOUT: Duration = Duration::from_secs(20);
/// The key W3C WebDriver names an element reference with.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    pub shots: PathBuf,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` ×
    /// `height` pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: chromium-driver; scripts/ensure-deps installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let up = wait_for(Duration::from_secs(20), || async {
            http()
                .get(format!("{url}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "chromedriver did not answer on {url}");
        let profile = tempfile::Builder::new()
            .prefix("sentinel-chromium-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ]},
        }}});
        let created = command(reqwest::Method::POST, &format!("{url}/session"), Some(caps))
            .await
            .unwrap_or_else(|e| panic!("a WebDriver session in headless Chromium: {e}"));
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"));
        let shots = tempfile::Builder::new()
            .prefix("sentinel-console-shots-")
            .tempdir()
            .expect("temp dir")
            .keep();
        Browser {
            driver,
            session: format!("{url}/session/{id}"),
            shots,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        command(method, &format!("{}{path}", self.session), body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The page's HTML now (for failure messages).
    pub async fn source(&self) -> String {
        command(
            reqwest::Method::GET,
            &format!("{}/source", self.session),
            None,
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
    }

    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Saves a screenshot of the window as `NAME.png`; prints its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// Runs `script` (a function body; `return` a value) in the page;
    /// `null` when it throws.
    pub async fn js(&self, script: &str) -> Value {
        command(
            reqwest::Method::POST,
            &format!("{}/execute/sync", self.session),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
        .unwrap_or(Value::Null)
    }

    /// Polls `script` until it returns `true`.
    pub async fn until(&self, timeout: Duration, script: &str) -> bool {
        wait_for(timeout, || async {
            self.js(script).await == Value::Bool(true)
        })
        .await
    }

    /// The element `css` selects, waiting up to 20 s for it to appear.
    pub async fn element(&self, css: &str) -> Element<'_> {
        let found = std::sync::Mutex::new(None);
        wait_for(FIND_TIMEOUT, || async {
            let r = command(
                reqwest::Method::POST,
                &format!("{}/element", self.session),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
            let id = r
                .ok()
                .and_then(|v| v[ELEMENT_KEY].as_str().map(str::to_string));
            let seen = id.is_some();
            if let (Some(id), Ok(mut f)) = (id, found.lock()) {
                *f = Some(id);
            }
            seen
        })
        .await;
        let found = found.into_inner().ok().flatten();
        let id = found.unwrap_or_else(|| panic!("no `{css}` within {FIND_TIMEOUT:?}"));
        Element { browser: self, id }
    }

    /// Clicks the element `css` selects (waiting for it as [`Self::element`]).
    pub async fn click(&self, css: &str) {
        self.element(css).await.click().await;
    }

    pub async fn close(mut self) {
        let _ = command(reqwest::Method::DELETE, &self.session, None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    async fn act(&self, what: &str, body: Value) {
        self.browser
            .call(
                reqwest::Method::POST,
                &format!("/element/{}/{what}", self.id),
                Some(body),
            )
            .await;
    }

    pub async fn click(&self) {
        self.act("click", json!({})).await;
    }

    pub async fn clear(&self) {
        self.act("clear", json!({})).await;
    }

    pub async fn send_keys(&self, text: &str) {
        self.act("value", json!({ "text": text })).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// One WebDriver command: its `value`, or the error it answered.
async fn command(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value, String> {
    let mut req = http().request(method, url).timeout(Duration::from_secs(60));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v["value"].clone())
    } else {
        Err(format!("{status}: {}", v["value"]))
    }
}
