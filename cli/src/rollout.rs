//! `sentinelctl rollout status|promote|pause|resume|abort [ID]`, the
//! `--stages`/`--canary` plan of `apply`, and `follow` (what `apply --wait`
//! does for a staged apply: one line per stage change, exit 1 naming the
//! gate that failed).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use reqwest::Method;
use sentinel_api::{
    RolloutDetail, RolloutGates, RolloutList, RolloutPlan, RolloutStage, RolloutSummary,
};

use crate::client::{CliError, Client, message, typed};
use crate::render::{self, Format, green, red};

#[derive(clap::Subcommand)]
pub enum Command {
    /// A rollout's stages, nodes and events (default: the newest rollout).
    Status { id: Option<i64> },
    /// End the current stage now and start the next (after the last: complete).
    Promote { id: Option<i64> },
    /// Stop where it is; admitted nodes keep the new version.
    Pause { id: Option<i64> },
    /// Continue a paused rollout (the stage's deadline and bake start again).
    Resume { id: Option<i64> },
    /// End without activating; admitted nodes return to the active version.
    Abort { id: Option<i64> },
    /// Rollouts, newest first.
    List,
}

/// The flags of `apply` that make it staged.
#[derive(clap::Args, Default)]
pub struct PlanArgs {
    /// Roll out in stages, comma-separated, in order: `*`, `N%`, `canary:N`,
    /// `region:NAME` or `NAME`, `zone:NAME`, `node:ID+ID`, `label:KEY=VALUE`; `@DUR` after a
    /// stage sets its bake (e.g. "canary:1@30s,eu-west,*").
    #[arg(long, value_name = "STAGES", conflicts_with = "canary")]
    stages: Option<String>,
    /// Shorthand for --stages "REGION,*" or "N%,*".
    #[arg(long, value_name = "REGION|N%")]
    canary: Option<String>,
    /// Default bake time of a stage (default 10s).
    #[arg(long, value_name = "DUR", value_parser = crate::wait::parse_duration)]
    bake: Option<Duration>,
    /// Fail a stage whose nodes have not all ACKed this long after it started (default 60s).
    #[arg(long, value_name = "DUR", value_parser = crate::wait::parse_duration)]
    progress_deadline: Option<Duration>,
    /// Requests a stage must serve before its error-rate and latency gates judge (default 20).
    #[arg(long, value_name = "N")]
    min_requests: Option<u64>,
    /// Allowed rise of the stage's 5xx share over the reference (default 0.05).
    #[arg(long, value_name = "SHARE")]
    max_5xx_increase: Option<f64>,
    /// Allowed ratio of the stage's p99 to the reference p99 (default 2).
    #[arg(long, value_name = "RATIO")]
    max_p99_ratio: Option<f64>,
}

impl PlanArgs {
    /// The plan these flags ask for; `None` without --stages/--canary.
    pub fn plan(&self) -> Result<Option<RolloutPlan>, CliError> {
        let text = match (&self.stages, &self.canary) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => format!("{c},*"),
            (None, None) => return Ok(None),
        };
        let mut stages = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (select, bake) = match item.split_once('@') {
                Some((s, d)) => (
                    s.to_string(),
                    Some(crate::wait::parse_duration(d).map_err(CliError::Failed)?),
                ),
                None => (item.to_string(), None),
            };
            stages.push(RolloutStage {
                select,
                bake_ms: bake.map(|d| d.as_millis() as u64),
            });
        }
        if stages.is_empty() {
            return Err(CliError::Failed("--stages names no stage".into()));
        }
        let gates = RolloutGates {
            max_5xx_increase: self.max_5xx_increase,
            max_p99_ratio: self.max_p99_ratio,
            p99_floor_ms: None,
            min_requests: self.min_requests,
            max_unhealthy_increase: None,
            progress_deadline_ms: self.progress_deadline.map(|d| d.as_millis() as u64),
        };
        Ok(Some(RolloutPlan {
            stages,
            bake_ms: self.bake.map(|d| d.as_millis() as u64),
            gates: Some(gates),
        }))
    }
}

async fn newest(client: &Client) -> Result<i64, CliError> {
    let list: RolloutList = typed(&client.get("/v1/rollouts?limit=1").await?)?;
    list.rollouts
        .first()
        .map(|r| r.id)
        .ok_or_else(|| CliError::Failed("no rollout was ever started".into()))
}

pub async fn run(client: &Client, format: Format, command: &Command) -> Result<(), CliError> {
    let (id, verb) = match command {
        Command::List => return list(client, format).await,
        Command::Status { id } => {
            let id = match id {
                Some(id) => *id,
                None => newest(client).await?,
            };
            let v = client.get(&format!("/v1/rollouts/{id}")).await?;
            match format {
                Format::Json => render::json(&v),
                Format::Table => print_detail(&typed(&v)?),
            }
            return Ok(());
        }
        Command::Promote { id } => (id, "promote"),
        Command::Pause { id } => (id, "pause"),
        Command::Resume { id } => (id, "resume"),
        Command::Abort { id } => (id, "abort"),
    };
    let id = match id {
        Some(id) => *id,
        None => newest(client).await?,
    };
    let (status, v) = client
        .request(
            Method::POST,
            &format!("/v1/rollouts/{id}/{verb}"),
            None,
            &[],
        )
        .await?;
    if !status.is_success() {
        return Err(CliError::Failed(message(&v)));
    }
    match format {
        Format::Json => render::json(&v),
        Format::Table => {
            let r: RolloutSummary = typed(&v)?;
            println!(
                "{}",
                green(&format!(
                    "rollout {id}: {} (stage {}/{}, v{})",
                    r.state,
                    r.stage + 1,
                    r.stages,
                    r.to_version
                ))
            );
        }
    }
    Ok(())
}

async fn list(client: &Client, format: Format) -> Result<(), CliError> {
    let v = client.get("/v1/rollouts").await?;
    if format == Format::Json {
        render::json(&v);
        return Ok(());
    }
    let list: RolloutList = typed(&v)?;
    let rows: Vec<Vec<String>> = list
        .rollouts
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.clone(),
                format!(
                    "v{} -> v{}",
                    r.from_version.map_or("-".into(), |v| v.to_string()),
                    r.to_version
                ),
                format!("{}/{}", r.stage + 1, r.stages),
                r.actor.clone(),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render::table(&["ID", "STATE", "VERSIONS", "STAGE", "BY", "REASON"], &rows);
    Ok(())
}

fn print_detail(d: &RolloutDetail) {
    let r = &d.rollout;
    println!(
        "rollout {}: {} — v{} -> v{}, stage {}/{}, by {}",
        r.id,
        r.state,
        r.from_version.map_or("-".into(), |v| v.to_string()),
        r.to_version,
        r.stage + 1,
        r.stages,
        r.actor
    );
    if let Some(reason) = &r.reason {
        println!(
            "  {}",
            if r.state == "failed" {
                red(reason)
            } else {
                reason.clone()
            }
        );
    }
    let stages: Vec<Vec<String>> = d
        .stages
        .iter()
        .map(|s| {
            vec![
                (s.index + 1).to_string(),
                s.select.clone(),
                s.state.clone(),
                format!("{}/{}", s.acked, s.nodes),
                format!("{} ms", s.bake_ms),
            ]
        })
        .collect();
    render::table(&["STAGE", "SELECT", "STATE", "ACKED", "BAKE"], &stages);
    let nodes: Vec<Vec<String>> = d
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                (n.stage + 1).to_string(),
                n.region.clone(),
                n.state.clone(),
                n.acked_version.map_or("-".into(), |v| format!("v{v}")),
            ]
        })
        .collect();
    render::table(&["NODE", "STAGE", "REGION", "STATE", "RUNS"], &nodes);
    for e in &d.events {
        println!(
            "  {}  {:<14} {}",
            render::time(&serde_json::json!(e.at_unix_ms)),
            e.kind,
            e.detail
        );
    }
}

/// One line for the rollout's current position.
fn progress_line(d: &RolloutDetail) -> String {
    let r = &d.rollout;
    let stage = d.stages.get(r.stage as usize);
    match r.state.as_str() {
        "running" | "paused" => stage.map_or_else(
            || format!("rollout {}: {}", r.id, r.state),
            |s| {
                format!(
                    "rollout {} stage {}/{} ({}): {}, {}/{} node(s) on v{}",
                    r.id,
                    s.index + 1,
                    d.stages.len(),
                    s.select,
                    s.state,
                    s.acked,
                    s.nodes,
                    r.to_version
                )
            },
        ),
        other => format!("rollout {}: {other}", r.id),
    }
}

/// Follows rollout `id` until it ends: prints each stage's progress and
/// succeeds when it completed; fails naming the gate (and node) otherwise.
pub async fn follow(client: &Client, id: i64, timeout: Duration) -> Result<(), CliError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let d: RolloutDetail = typed(&client.get(&format!("/v1/rollouts/{id}")).await?)?;
        let line = progress_line(&d);
        if line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        let r = &d.rollout;
        match r.state.as_str() {
            "completed" => {
                if tty {
                    eprintln!();
                }
                eprintln!(
                    "{}",
                    green(&format!(
                        "rollout {id} completed in {:.1} s: v{} is active on the whole fleet",
                        (r.updated_at_unix_ms - r.created_at_unix_ms) as f64 / 1000.0,
                        r.to_version
                    ))
                );
                return Ok(());
            }
            "failed" | "aborted" => {
                if tty {
                    eprintln!();
                }
                let gate = r
                    .failed_gate
                    .as_ref()
                    .map(|g| {
                        format!(
                            " at the `{g}` gate{}",
                            r.failed_node
                                .as_ref()
                                .map(|n| format!(" (node {n})"))
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                return Err(CliError::Failed(red(&format!(
                    "rollout {id} {}{gate}: {}",
                    r.state,
                    r.reason.clone().unwrap_or_default()
                ))));
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            if tty {
                eprintln!();
            }
            return Err(CliError::Failed(red(&format!(
                "timed out after {timeout:?} following rollout {id}; it goes on (sentinelctl rollout status {id})"
            ))));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
