//! `sentinelctl token create|list|revoke`: API tokens (with a role) and
//! proxy join tokens (fleet-wide or bound to one node id).
//!
//! The secret of a new token is printed once, on stdout, and never again:
//! `list` shows names, kinds, roles, nodes and dates only. Everything goes
//! through `/v1/tokens`, which needs the admin role.

use std::time::Duration;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;

use crate::client::{CliError, Client, message};
use crate::render::{self, Format, bold, red, s, table, time};

#[derive(Subcommand)]
pub enum Command {
    /// Create a token and print its secret (shown only this once).
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: it stops working on every replica within a second.
    Revoke { name: String },
}

#[derive(ClapArgs)]
pub struct CreateArgs {
    /// A unique name (names of revoked tokens are not reused).
    pub name: String,
    /// Role of an API token.
    #[arg(long, value_parser = ["read", "write", "admin"], required_unless_present = "join")]
    pub role: Option<String>,
    /// Lifetime, e.g. `30m`, `12h`, `90d` (default: no expiry).
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<Duration>,
    /// A join token for proxies (gRPC streams) instead of an API token.
    #[arg(long, conflicts_with = "role")]
    pub join: bool,
    /// Bind the join token to this node id (default: fleet-wide).
    #[arg(long, requires = "join")]
    pub node: Option<String>,
}

/// `90s`, `30m`, `12h`, `7d`, `2w`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30m, 12h or 90d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use s, m, h, d or w"
            ));
        }
    };
    let total = n
        .checked_mul(secs)
        .filter(|&t| t > 0)
        .ok_or_else(|| format!("`{text}` is not a positive duration that fits"))?;
    Ok(Duration::from_secs(total))
}

pub async fn run(client: &Client, format: Format, command: &Command) -> Result<(), CliError> {
    match command {
        Command::Create(args) => create(client, format, args).await,
        Command::List => list(client, format).await,
        Command::Revoke { name } => revoke(client, format, name).await,
    }
}

async fn create(client: &Client, format: Format, args: &CreateArgs) -> Result<(), CliError> {
    let expires_in_secs = args.expires.map(|d| d.as_secs());
    let body = if args.join {
        crate::client::body(&sentinel_api::JoinTokenRequest {
            name: args.name.clone(),
            kind: sentinel_api::JoinKind::Join,
            node_id: args.node.clone(),
            expires_in_secs,
        })
    } else {
        let role = args
            .role
            .as_deref()
            .and_then(sentinel_api::Role::parse)
            .ok_or_else(|| CliError::Failed("an API token needs --role read|write|admin".into()))?;
        crate::client::body(&sentinel_api::ApiTokenRequest {
            name: args.name.clone(),
            role,
            kind: Some(sentinel_api::ApiKind::Api),
            expires_in_secs,
        })
    };
    let (status, v) = client
        .request(reqwest::Method::POST, "/v1/tokens", Some(&body), &[])
        .await?;
    if !status.is_success() {
        return Err(CliError::Failed(message(&v)));
    }
    if format == Format::Json {
        render::json(&v);
        return Ok(());
    }
    let created: sentinel_api::TokenCreated = crate::client::typed(&v)?;
    let t = &created.record;
    eprintln!(
        "{} {} token `{}`{}{}; the secret is shown only this once:",
        bold("created"),
        t.kind.as_str(),
        t.name,
        match (t.role, t.node_id.as_deref()) {
            (Some(role), _) => format!(" with role {}", role.as_str()),
            (None, Some(node)) => format!(" for node {node}"),
            (None, None) => " for the whole fleet".to_string(),
        },
        t.expires_at_unix_ms.map_or(String::new(), |at| format!(
            ", expires {}",
            time(&json!(at))
        ))
    );
    println!("{}", created.token);
    Ok(())
}

async fn list(client: &Client, format: Format) -> Result<(), CliError> {
    let v = client.get("/v1/tokens").await?;
    if format == Format::Json {
        render::json(&v);
        return Ok(());
    }
    let list: sentinel_api::TokenList = crate::client::typed(&v)?;
    let rows: Vec<Vec<String>> = list
        .tokens
        .iter()
        .map(|t| {
            let node = match (t.kind, t.node_id.as_deref()) {
                (sentinel_api::TokenKind::Join, None) => "(fleet)".to_string(),
                (_, Some(n)) => n.to_string(),
                _ => "-".to_string(),
            };
            vec![
                t.name.clone(),
                t.kind.as_str().to_string(),
                t.role.map_or("-", |r| r.as_str()).to_string(),
                node,
                time(&json!(t.created_at_unix_ms)),
                time(&json!(t.expires_at_unix_ms)),
                t.revoked_at_unix_ms
                    .map_or("-".to_string(), |at| red(&time(&json!(at)))),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "KIND", "ROLE", "NODE", "CREATED", "EXPIRES", "REVOKED",
        ],
        &rows,
    );
    Ok(())
}

async fn revoke(client: &Client, format: Format, name: &str) -> Result<(), CliError> {
    let path = format!("/v1/tokens/{}", encode_segment(name));
    let (status, v) = client
        .request(reqwest::Method::DELETE, &path, None, &[])
        .await?;
    if !status.is_success() {
        return Err(CliError::Failed(message(&v)));
    }
    if format == Format::Json {
        render::json(&v);
    } else {
        println!(
            "revoked {} token `{}` at {}",
            s(&v["kind"]),
            s(&v["name"]),
            time(&v["revoked_at_unix_ms"])
        );
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters (RFC 3986), so any
/// token name is one path segment.
fn encode_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(encode_segment("ci-bot_1"), "ci-bot_1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
