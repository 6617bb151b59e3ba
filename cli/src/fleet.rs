//! Read-only views: `status`, `nodes`, `history`, `get`, `diff`, `health`.

use sentinel_api::{ActivationList, Diff, Health, NodeList, Status, VersionDetail, VersionList};
use serde_json::json;

use crate::client::{CliError, Client, typed};
use crate::render::{self, Format, bold, green, red, table, time};

pub async fn status(client: &Client, format: Format) -> Result<(), CliError> {
    let raw = client.get("/v1/status").await?;
    if format == Format::Json {
        render::json(&raw);
        return Ok(());
    }
    let st: Status = typed(&raw)?;
    let ver = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    match &st.active {
        None => println!("no configuration was applied yet"),
        Some(a) => {
            println!(
                "{} v{} ({}) by {} at {}{}",
                bold("active:"),
                a.number,
                &a.hash[..12.min(a.hash.len())],
                a.author,
                time(&json!(a.created_at_unix_ms)),
                Some(a.message.as_str())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default()
            );
            if let Some(last) = &st.last_activation {
                println!(
                    "{} {} v{} → v{} by {} at {}",
                    bold("last activation:"),
                    last.kind,
                    ver(last.from_version),
                    last.to_version,
                    last.actor,
                    time(&json!(last.at_unix_ms))
                );
            }
        }
    }
    let n = &st.nodes;
    println!(
        "{} {} known, {} connected{}",
        bold("nodes:"),
        n.total,
        n.connected,
        if n.expired > 0 {
            format!(
                " ({} expired: not seen for {}s, not counted)",
                n.expired, n.expiry_secs
            )
        } else {
            String::new()
        }
    );
    let rows: Vec<Vec<String>> = st
        .regions
        .iter()
        .map(|(region, r)| {
            let versions = r
                .versions
                .iter()
                .map(|(k, n)| format!("v{k}:{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                region.clone(),
                r.nodes.to_string(),
                r.connected.to_string(),
                format!("{}/{}", r.on_active, r.nodes),
                versions,
            ]
        })
        .collect();
    table(
        &["REGION", "NODES", "CONNECTED", "ON ACTIVE", "VERSIONS"],
        &rows,
    );
    for n in &st.nacks {
        let (resource, error) = n
            .nack
            .as_ref()
            .map(|k| (k.resource.as_str(), k.error.as_str()))
            .unwrap_or_default();
        println!(
            "{} {} ({}): {resource}: {error}",
            red("NACK"),
            n.node,
            n.region
        );
    }
    for n in &st.disconnected {
        println!(
            "{} {} ({}), on v{}, last seen {} — not converged",
            red("disconnected"),
            n.node,
            n.region,
            ver(n.acked_version),
            time(&json!(n.last_seen_unix_ms))
        );
    }
    Ok(())
}

pub async fn nodes(client: &Client, format: Format) -> Result<(), CliError> {
    let raw = client.get("/v1/nodes").await?;
    if format == Format::Json {
        render::json(&raw);
        return Ok(());
    }
    let list: NodeList = typed(&raw)?;
    let rows: Vec<Vec<String>> = list
        .nodes
        .iter()
        .map(|n| {
            let nack = n
                .last_nack
                .as_ref()
                .map_or("-".to_string(), |k| format!("v{}: {}", k.version, k.error));
            vec![
                n.id.clone(),
                n.region.clone(),
                n.zone.clone(),
                if n.connected {
                    green("yes")
                } else if n.expired {
                    red("expired")
                } else {
                    red("no")
                },
                format!(
                    "v{}",
                    n.acked_version.map_or("-".to_string(), |v| v.to_string())
                ),
                n.replica.clone(),
                time(&json!(n.last_seen_unix_ms)),
                nack,
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "REGION",
            "ZONE",
            "CONNECTED",
            "VERSION",
            "REPLICA",
            "LAST SEEN",
            "LAST NACK",
        ],
        &rows,
    );
    Ok(())
}

pub async fn history(client: &Client, format: Format) -> Result<(), CliError> {
    let versions = client.get("/v1/configs").await?;
    let activations = client.get("/v1/activations").await?;
    if format == Format::Json {
        render::json(
            &serde_json::json!({ "versions": versions["versions"], "active": versions["active"], "activations": activations["activations"] }),
        );
        return Ok(());
    }
    let versions: VersionList = typed(&versions)?;
    let activations: ActivationList = typed(&activations)?;
    println!("{}", bold("versions"));
    let rows: Vec<Vec<String>> = versions
        .versions
        .iter()
        .map(|v| {
            let mark = if Some(v.number) == versions.active {
                "*"
            } else {
                ""
            };
            vec![
                format!("v{}{mark}", v.number),
                v.hash.chars().take(12).collect(),
                v.author.clone(),
                time(&json!(v.created_at_unix_ms)),
                v.message.clone(),
            ]
        })
        .collect();
    table(&["VERSION", "HASH", "AUTHOR", "CREATED", "MESSAGE"], &rows);
    println!("\n{}", bold("activations"));
    let rows: Vec<Vec<String>> = activations
        .activations
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.kind.clone(),
                format!(
                    "v{}",
                    a.from_version.map_or("-".to_string(), |v| v.to_string())
                ),
                format!("v{}", a.to_version),
                a.actor.clone(),
                time(&json!(a.at_unix_ms)),
                a.message.clone(),
            ]
        })
        .collect();
    table(&["ID", "KIND", "FROM", "TO", "BY", "AT", "MESSAGE"], &rows);
    Ok(())
}

pub async fn get(client: &Client, format: Format, version: Option<i64>) -> Result<(), CliError> {
    let path = version.map_or("/v1/configs/active".to_string(), |n| {
        format!("/v1/configs/{n}")
    });
    let v = client.get(&path).await?;
    match format {
        Format::Json => render::json(&v),
        Format::Table => print!("{}", typed::<VersionDetail>(&v)?.source),
    }
    Ok(())
}

pub async fn diff(
    client: &Client,
    format: Format,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(), CliError> {
    let mut q = Vec::new();
    if let Some(a) = from {
        q.push(format!("from={a}"));
    }
    if let Some(b) = to {
        q.push(format!("to={b}"));
    }
    let v = client.get(&format!("/v1/diff?{}", q.join("&"))).await?;
    match format {
        Format::Json => render::json(&v),
        Format::Table => {
            let d: Diff = typed(&v)?;
            let n = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
            println!("{}", bold(&format!("v{} → v{}", n(d.from), n(d.to))));
            render::diff(&v);
        }
    }
    Ok(())
}

pub async fn health(client: &Client, format: Format) -> Result<(), CliError> {
    let v = client.get("/v1/health").await?;
    if format == Format::Json {
        render::json(&v);
        return Ok(());
    }
    let h: Health = typed(&v)?;
    let mut rows = Vec::new();
    for (upstream, targets) in &h.upstreams {
        for t in targets {
            let regions = t
                .regions
                .iter()
                .map(|(r, c)| format!("{r}:{}/{}", c.healthy, c.healthy + c.unhealthy))
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(vec![
                upstream.clone(),
                t.target.clone(),
                if t.healthy {
                    green("healthy")
                } else {
                    red("unhealthy")
                },
                format!("{}/{}", t.healthy_reports, t.reporting),
                regions,
                t.errors.first().cloned().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    if rows.is_empty() {
        println!("no health reports (no proxy runs active health checks)");
        return Ok(());
    }
    println!(
        "fleet-wide unhealthy at ≥{}% of reporting proxies",
        h.quorum_percent
    );
    table(
        &[
            "UPSTREAM",
            "TARGET",
            "FLEET",
            "HEALTHY/REPORTING",
            "REGIONS",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(())
}
