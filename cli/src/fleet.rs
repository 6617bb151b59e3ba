//! Read-only views: `status`, `nodes`, `history`, `get`, `diff`, `health`.

use crate::client::{CliError, Client};
use crate::render::{self, Format, bold, green, red, s, table, time};

pub async fn status(client: &Client, format: Format) -> Result<(), CliError> {
    let st = client.get("/v1/status").await?;
    if format == Format::Json {
        render::json(&st);
        return Ok(());
    }
    let a = &st["active"];
    if a.is_null() {
        println!("no configuration was applied yet");
    } else {
        println!(
            "{} v{} ({}) by {} at {}{}",
            bold("active:"),
            s(&a["number"]),
            &s(&a["hash"])[..12.min(s(&a["hash"]).len())],
            s(&a["author"]),
            time(&a["created_at_unix_ms"]),
            a["message"]
                .as_str()
                .filter(|m| !m.is_empty())
                .map(|m| format!(" — {m}"))
                .unwrap_or_default()
        );
        let last = &st["last_activation"];
        println!(
            "{} {} v{} → v{} by {} at {}",
            bold("last activation:"),
            s(&last["kind"]),
            s(&last["from_version"]),
            s(&last["to_version"]),
            s(&last["actor"]),
            time(&last["at_unix_ms"])
        );
    }
    println!(
        "{} {} total, {} connected",
        bold("nodes:"),
        s(&st["nodes"]["total"]),
        s(&st["nodes"]["connected"])
    );
    let rows: Vec<Vec<String>> = st["regions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(region, r)| {
                    let versions = r["versions"]
                        .as_object()
                        .map(|v| {
                            v.iter()
                                .map(|(k, n)| format!("v{k}:{n}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        region.clone(),
                        s(&r["nodes"]),
                        s(&r["connected"]),
                        format!("{}/{}", s(&r["on_active"]), s(&r["connected"])),
                        versions,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["REGION", "NODES", "CONNECTED", "ON ACTIVE", "VERSIONS"],
        &rows,
    );
    for n in st["nacks"].as_array().into_iter().flatten() {
        println!(
            "{} {} ({}): {}: {}",
            red("NACK"),
            s(&n["node"]),
            s(&n["region"]),
            s(&n["nack"]["resource"]),
            s(&n["nack"]["error"])
        );
    }
    for n in st["disconnected"].as_array().into_iter().flatten() {
        println!(
            "{} {} ({}), last seen {}",
            red("disconnected"),
            s(&n["node"]),
            s(&n["region"]),
            time(&n["last_seen_unix_ms"])
        );
    }
    Ok(())
}

pub async fn nodes(client: &Client, format: Format) -> Result<(), CliError> {
    let v = client.get("/v1/nodes").await?;
    if format == Format::Json {
        render::json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let nack = if n["last_nack"].is_null() {
                "-".into()
            } else {
                format!(
                    "v{}: {}",
                    s(&n["last_nack"]["version"]),
                    s(&n["last_nack"]["error"])
                )
            };
            vec![
                s(&n["id"]),
                s(&n["region"]),
                s(&n["zone"]),
                if n["connected"] == true {
                    green("yes")
                } else {
                    red("no")
                },
                format!("v{}", s(&n["acked_version"])),
                s(&n["replica"]),
                time(&n["last_seen_unix_ms"]),
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
    println!("{}", bold("versions"));
    let active = versions["active"].as_i64();
    let rows: Vec<Vec<String>> = versions["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let mark = if v["number"].as_i64() == active {
                "*"
            } else {
                ""
            };
            vec![
                format!("v{}{mark}", s(&v["number"])),
                s(&v["hash"]).chars().take(12).collect(),
                s(&v["author"]),
                time(&v["created_at_unix_ms"]),
                s(&v["message"]),
            ]
        })
        .collect();
    table(&["VERSION", "HASH", "AUTHOR", "CREATED", "MESSAGE"], &rows);
    println!("\n{}", bold("activations"));
    let rows: Vec<Vec<String>> = activations["activations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                s(&a["id"]),
                s(&a["kind"]),
                format!("v{}", s(&a["from_version"])),
                format!("v{}", s(&a["to_version"])),
                s(&a["actor"]),
                time(&a["at_unix_ms"]),
                s(&a["message"]),
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
        Format::Table => print!("{}", v["source"].as_str().unwrap_or_default()),
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
            println!(
                "{}",
                bold(&format!("v{} → v{}", s(&v["from"]), s(&v["to"])))
            );
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
    let mut rows = Vec::new();
    for (upstream, targets) in v["upstreams"].as_object().into_iter().flatten() {
        for t in targets.as_array().into_iter().flatten() {
            let regions = t["regions"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(r, c)| {
                            format!(
                                "{r}:{}/{}",
                                s(&c["healthy"]),
                                c["healthy"].as_i64().unwrap_or(0)
                                    + c["unhealthy"].as_i64().unwrap_or(0)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let errors: Vec<String> = t["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            rows.push(vec![
                upstream.clone(),
                s(&t["target"]),
                if t["healthy"] == true {
                    green("healthy")
                } else {
                    red("unhealthy")
                },
                format!("{}/{}", s(&t["healthy_reports"]), s(&t["reporting"])),
                regions,
                errors.first().cloned().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    if rows.is_empty() {
        println!("no health reports (no proxy runs active health checks)");
        return Ok(());
    }
    println!(
        "fleet-wide unhealthy at ≥{}% of reporting proxies",
        s(&v["quorum_percent"])
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
