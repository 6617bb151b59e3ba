//! `sentinelctl endpoints [UPSTREAM]`: the discovered upstreams of the
//! active configuration (`GET /v1/discovery`) — source, generation,
//! staleness, how many proxies are on the current set, and every target
//! with its health. `-o json` prints the API's answer (filtered to
//! UPSTREAM when given).

use sentinel_api::DiscoveryStatus;
use serde_json::json;

use crate::client::{CliError, Client, body, typed};
use crate::render::{self, Format, bold, green, red, table, time, yellow};

pub async fn run(client: &Client, format: Format, upstream: Option<&str>) -> Result<(), CliError> {
    let raw = client.get("/v1/discovery").await?;
    let mut st: DiscoveryStatus = typed(&raw)?;
    if let Some(name) = upstream {
        st.upstreams.retain(|u| u.upstream == name);
        if st.upstreams.is_empty() {
            return Err(CliError::Failed(format!(
                "`{name}` is not a discovered upstream of the active configuration"
            )));
        }
    }
    if format == Format::Json {
        render::json(&body(&st));
        return Ok(());
    }
    println!(
        "{} {} ({})",
        bold("replica:"),
        st.replica,
        if st.leader {
            "leads discovery"
        } else {
            "follows the discovery leader"
        }
    );
    if st.upstreams.is_empty() {
        println!("no discovered upstreams in the active configuration");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = st
        .upstreams
        .iter()
        .map(|u| {
            vec![
                u.upstream.clone(),
                u.source.clone(),
                u.targets.len().to_string(),
                u.generation.to_string(),
                if u.generation == 0 {
                    yellow("waiting")
                } else if u.stale {
                    red("stale")
                } else {
                    green("fresh")
                },
                time(&json!(u.last_success_unix_ms)),
                format!("{}/{}", u.nodes_current, u.nodes_connected),
                u.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "UPSTREAM",
            "SOURCE",
            "TARGETS",
            "GEN",
            "STATE",
            "LAST SUCCESS",
            "NODES ON IT",
            "LAST ERROR",
        ],
        &rows,
    );
    let targets: Vec<Vec<String>> = st
        .upstreams
        .iter()
        .flat_map(|u| {
            u.targets.iter().map(|t| {
                vec![
                    u.upstream.clone(),
                    t.address.clone(),
                    t.weight.to_string(),
                    match t.health.as_str() {
                        "healthy" => green("healthy"),
                        "unhealthy" => red("unhealthy"),
                        other => other.to_string(),
                    },
                    if t.zone.is_empty() {
                        "-".into()
                    } else {
                        t.zone.clone()
                    },
                ]
            })
        })
        .collect();
    if !targets.is_empty() {
        println!();
        table(
            &["UPSTREAM", "TARGET", "WEIGHT", "HEALTH", "ZONE"],
            &targets,
        );
    }
    Ok(())
}
