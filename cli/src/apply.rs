//! `sentinelctl apply FILE`: validate locally (same diagnostics as the
//! server), show the diff against the active version, apply, and optionally
//! wait for the fleet.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::client::{CliError, Client, message};
use crate::render::{self, Format, green};

#[derive(clap::Args)]
pub struct Args {
    /// The KDL file to apply.
    file: PathBuf,
    /// A message recorded with the version.
    #[arg(short, long)]
    message: Option<String>,
    /// Show what would change, then stop.
    #[arg(long)]
    dry_run: bool,
    /// Apply only if version N is the active one (optimistic concurrency).
    #[arg(long, value_name = "N")]
    expect_version: Option<i64>,
    /// Wait until every connected proxy runs the new version (default 60s).
    #[arg(long, value_name = "DUR", num_args = 0..=1, default_missing_value = "60s", value_parser = crate::wait::parse_duration)]
    wait: Option<Duration>,
}

pub async fn run(client: &Client, format: Format, args: &Args) -> Result<(), CliError> {
    let file_name = args.file.display().to_string();
    let source = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::Failed(format!("cannot read {file_name}: {e}")))?;
    if let Err(d) = sentinel_config::compile(&file_name, &source) {
        return Err(CliError::Invalid(d.render(render::color())));
    }
    let body =
        json!({ "source": source, "file": file_name, "message": args.message, "dry_run": true });
    let (status, plan) = client
        .request(Method::POST, "/v1/configs", Some(&body), &[])
        .await?;
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        return Err(CliError::Invalid(
            plan["rendered"].as_str().unwrap_or_default().to_string(),
        ));
    }
    if !status.is_success() {
        return Err(CliError::Failed(message(&plan)));
    }
    if format == Format::Table {
        render::diff(&plan["diff"]);
    }
    if args.dry_run {
        if format == Format::Json {
            render::json(&plan);
        }
        return Ok(());
    }
    let mut body = json!({ "source": body["source"], "file": file_name, "message": args.message.clone().unwrap_or_default() });
    let mut headers = Vec::new();
    if let Some(n) = args.expect_version {
        body["expect_version"] = json!(n);
        headers.push(("If-Match", n.to_string()));
    }
    let (status, result) = client
        .request(Method::POST, "/v1/configs", Some(&body), &headers)
        .await?;
    match status {
        StatusCode::CREATED | StatusCode::OK => {}
        StatusCode::UNPROCESSABLE_ENTITY => {
            return Err(CliError::Invalid(
                result["rendered"].as_str().unwrap_or_default().to_string(),
            ));
        }
        _ => return Err(CliError::Failed(message(&result))),
    }
    let version = result["version"].as_i64().unwrap_or(0);
    match format {
        Format::Json => render::json(&result),
        Format::Table if status == StatusCode::CREATED => {
            println!("{}", green(&format!("applied as v{version}")))
        }
        Format::Table => println!("{}", message_of(&result)),
    }
    if let Some(timeout) = args.wait {
        crate::wait::wait(client, version, timeout).await?;
    }
    Ok(())
}

fn message_of(v: &serde_json::Value) -> String {
    v["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}
