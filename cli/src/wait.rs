//! `--wait`: follow the fleet until every known proxy runs a version,
//! showing `12/15 nodes on v42` per region; fail naming each node that
//! NACKed or did not converge in time (disconnected ones included).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use sentinel_api::{NodeList, NodeRecord};
use serde_json::json;

use crate::client::{CliError, Client, typed};
use crate::render::{green, red, time};

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, "s"), |i| t.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{text}` (use 30s, 2m, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration `{text}` (use 30s, 2m, 500ms)")),
    }
}

/// Follows the fleet until every known node runs `version`. Known nodes are
/// the ones the control plane lists as not `expired` (connected, or seen
/// within its `--node-expiry-secs`); a node counts as converged only while
/// connected with `version` ACKed, so a disconnected one is reported as not
/// converged. A current NACK of `version` fails at once.
pub async fn wait(client: &Client, version: i64, timeout: Duration) -> Result<(), CliError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let list: NodeList = typed(&client.get("/v1/nodes").await?)?;
        let known: Vec<&NodeRecord> = list.nodes.iter().filter(|n| !n.expired).collect();
        let converged = |n: &NodeRecord| n.connected && n.acked_version == Some(version);
        let mut regions: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for n in &known {
            let e = regions.entry(n.region.clone()).or_default();
            e.1 += 1;
            if converged(n) {
                e.0 += 1;
            }
        }
        let done: usize = regions.values().map(|(d, _)| d).sum();
        let per_region: Vec<String> = regions
            .iter()
            .map(|(r, (d, t))| format!("{r} {d}/{t}"))
            .collect();
        let disconnected = known.iter().filter(|n| !n.connected).count();
        let line = format!(
            "{done}/{} nodes on v{version} ({}){}",
            known.len(),
            per_region.join(", "),
            if disconnected > 0 {
                format!(", {disconnected} disconnected")
            } else {
                String::new()
            }
        );
        if line != last_line {
            if tty {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        let nacked: Vec<&NodeRecord> = known
            .iter()
            .copied()
            .filter(|n| n.last_nack.as_ref().is_some_and(|k| k.version == version))
            .collect();
        if !nacked.is_empty() {
            if tty {
                eprintln!();
            }
            let mut msg = format!("{} node(s) refused v{version}:", nacked.len());
            for n in nacked {
                let (resource, error) = n
                    .last_nack
                    .as_ref()
                    .map(|k| (k.resource.as_str(), k.error.as_str()))
                    .unwrap_or_default();
                msg.push_str(&format!("\n  {} ({}): {resource}: {error}", n.id, n.region));
            }
            return Err(CliError::Failed(red(&msg)));
        }
        if done == known.len() {
            if tty {
                eprintln!();
            }
            if known.is_empty() {
                eprintln!("no proxy is known to the control plane; nothing to wait for");
            } else {
                eprintln!(
                    "{}",
                    green(&format!("all {done} connected nodes run v{version}"))
                );
            }
            return Ok(());
        }
        if started.elapsed() >= timeout {
            if tty {
                eprintln!();
            }
            let mut msg = format!("timed out after {timeout:?}; not on v{version}:");
            for n in known.iter().filter(|n| !converged(n)) {
                let state = if n.connected {
                    String::new()
                } else {
                    format!(
                        ", disconnected (last seen {})",
                        time(&json!(n.last_seen_unix_ms))
                    )
                };
                let on = n.acked_version.map_or("-".to_string(), |v| v.to_string());
                msg.push_str(&format!("\n  {} ({}): on v{on}{state}", n.id, n.region));
            }
            return Err(CliError::Failed(red(&msg)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
