//! A real browser for the console tests: Debian's `chromium`, headless,
//! driven over WebDriver by `chromedriver` (started here on a free
//! loopback port) through the `fantoccini` client.
//!
//! Screenshots go to a temp dir that outlives the test (its path is
//! printed), so a failure can be looked at afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, http, wait_for};

pub use fantoccini::{Client, Locator};

pub struct Browser {
    pub client: Client,
    driver: Child,
    pub shots: PathBuf,
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
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a WebDriver session in headless Chromium");
        let shots = tempfile::Builder::new()
            .prefix("sentinel-console-shots-")
            .tempdir()
            .expect("temp dir")
            .keep();
        Browser {
            client,
            driver,
            shots,
        }
    }

    /// Saves a screenshot of the window as `NAME.png`; prints its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// The element `css` selects, waiting up to 20 s for it to appear.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` within 20 s: {e}"))
    }

    /// Clicks the element `css` selects (waiting for it as [`Self::element`]).
    pub async fn click(&self, css: &str) {
        self.element(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or(serde_json::Value::Null)
    }

    /// Polls `script` until it returns `true`.
    pub async fn until(&self, timeout: Duration, script: &str) -> bool {
        wait_for(timeout, || async {
            self.js(script).await == serde_json::Value::Bool(true)
        })
        .await
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
