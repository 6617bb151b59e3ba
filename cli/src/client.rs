//! The one API client: server URL and token resolution, requests, and the
//! errors that decide exit codes (3 when the control plane cannot be
//! reached, 1 for a refused or failed operation).

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;

#[derive(Debug)]
pub enum CliError {
    /// The control plane could not be reached (exit 3).
    Unreachable { url: String, reason: String },
    /// The operation was refused or failed (exit 1).
    Failed(String),
    /// Invalid KDL, rendered (exit 1).
    Invalid(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Unreachable { url, reason } => {
                write!(f, "cannot reach the control plane at {url}: {reason}")
            }
            CliError::Failed(m) => f.write_str(m),
            CliError::Invalid(r) => f.write_str(r),
        }
    }
}

pub struct Client {
    pub server: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Where `server` and `token` may also be set: `$SENTINELCTL_CONFIG`, else
/// `$XDG_CONFIG_HOME/sentinel/sentinelctl.conf`, else
/// `~/.config/sentinel/sentinelctl.conf`; lines `server = URL`, `token = T`.
pub fn config_file() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SENTINELCTL_CONFIG") {
        return Some(p.into());
    }
    let base = std::env::var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok()?;
    Some(base.join("sentinel").join("sentinelctl.conf"))
}

fn from_file(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_file()?).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

impl Client {
    /// `server`/`token` come from flags or env (clap); the file fills gaps.
    pub fn new(server: Option<String>, token: Option<String>) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = server
            .or_else(|| from_file("server"))
            .unwrap_or_else(|| "http://127.0.0.1:8700".to_string())
            .trim_end_matches('/')
            .to_string();
        let token = token.or_else(|| from_file("token"));
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Client {
            server,
            token,
            http,
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Value), CliError> {
        let url = format!("{}{path}", self.server);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            url: self.server.clone(),
            reason: if e.is_timeout() {
                "timed out".into()
            } else {
                root_cause(&e)
            },
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match status {
            StatusCode::UNAUTHORIZED => Err(CliError::Failed(format!(
                "not authenticated: {} — give a token with --token, SENTINEL_TOKEN or the config file",
                message(&value)
            ))),
            StatusCode::FORBIDDEN => Err(CliError::Failed(format!(
                "not allowed: {}",
                message(&value)
            ))),
            StatusCode::SERVICE_UNAVAILABLE => Err(CliError::Failed(format!(
                "control plane unavailable: {}",
                message(&value)
            ))),
            _ => Ok((status, value)),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let (status, v) = self.request(reqwest::Method::GET, path, None, &[]).await?;
        if !status.is_success() {
            return Err(CliError::Failed(message(&v)));
        }
        Ok(v)
    }
}

/// The human part of an API error body ([`sentinel_api::ErrorBody`];
/// `error` from servers before the one error schema).
pub fn message(v: &Value) -> String {
    if let Ok(e) = serde_json::from_value::<sentinel_api::ErrorBody>(v.clone()) {
        return e.message;
    }
    v.get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// A response body as the API's model: the CLI reads the server's answers
/// through the same types the server writes them with (`sentinel-api`).
pub fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        CliError::Failed(format!(
            "the control plane answered in a shape this sentinelctl does not know ({e}); \
             are the versions of sentinelctl and sentinel-cp compatible?"
        ))
    })
}

/// A request body from the API's model.
pub fn body<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}
