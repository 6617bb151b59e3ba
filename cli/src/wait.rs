//! `--wait`: follow the fleet until every connected proxy runs a version,
//! showing `12/15 nodes on v42` per region; fail naming each node that
//! NACKed or did not converge in time.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{CliError, Client};
use crate::render::{green, red, s};

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

pub async fn wait(client: &Client, version: i64, timeout: Duration) -> Result<(), CliError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let nodes = client.get("/v1/nodes").await?;
        let nodes = nodes["nodes"].as_array().cloned().unwrap_or_default();
        let connected: Vec<&Value> = nodes.iter().filter(|n| n["connected"] == true).collect();
        let mut regions: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for n in &connected {
            let e = regions.entry(s(&n["region"])).or_default();
            e.1 += 1;
            if n["acked_version"].as_i64() == Some(version) {
                e.0 += 1;
            }
        }
        let done: usize = regions.values().map(|(d, _)| d).sum();
        let per_region: Vec<String> = regions
            .iter()
            .map(|(r, (d, t))| format!("{r} {d}/{t}"))
            .collect();
        let line = format!(
            "{done}/{} nodes on v{version} ({})",
            connected.len(),
            per_region.join(", ")
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
        let nacked: Vec<&Value> = connected
            .iter()
            .copied()
            .filter(|n| n["last_nack"]["version"].as_i64() == Some(version))
            .collect();
        if !nacked.is_empty() {
            if tty {
                eprintln!();
            }
            let mut msg = format!("{} node(s) refused v{version}:", nacked.len());
            for n in nacked {
                msg.push_str(&format!(
                    "\n  {} ({}): {}: {}",
                    s(&n["id"]),
                    s(&n["region"]),
                    s(&n["last_nack"]["resource"]),
                    s(&n["last_nack"]["error"])
                ));
            }
            return Err(CliError::Failed(red(&msg)));
        }
        if done == connected.len() {
            if tty {
                eprintln!();
            }
            if connected.is_empty() {
                eprintln!("no proxy is connected; nothing to wait for");
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
            for n in connected
                .iter()
                .filter(|n| n["acked_version"].as_i64() != Some(version))
            {
                msg.push_str(&format!(
                    "\n  {} ({}): on v{}",
                    s(&n["id"]),
                    s(&n["region"]),
                    s(&n["acked_version"])
                ));
            }
            return Err(CliError::Failed(red(&msg)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
