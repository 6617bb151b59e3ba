//! `sentinelctl apply FILE`: validate locally (same diagnostics as the
//! server), show the diff against the active version, apply, and optionally
//! wait for the fleet. With `--stages`/`--canary` the version is rolled
//! out stage by stage behind gates (`rollout.rs`), and `--wait` follows
//! the rollout's stages.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sentinel_api::{ApplyBody, ApplyCreated, ApplyNothingStored};

use crate::client::{CliError, Client, body, message, typed};
use crate::render::{self, Format, green};
use crate::trace::Started;

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
    #[command(flatten)]
    plan: crate::rollout::PlanArgs,
    /// Also export this command's root span to an OTLP/gRPC collector
    /// (`http://host:4317`); without it the trace context still travels.
    #[arg(long, env = "SENTINEL_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
}

pub async fn run(client: &Client, format: Format, args: &Args) -> Result<(), CliError> {
    if args.dry_run {
        return apply(client, format, args, None).await;
    }
    let trace = Started::start("sentinelctl apply", args.otlp_endpoint.as_deref())?;
    let result = apply(client, format, args, Some(&trace)).await;
    trace.finish(&result).await;
    result
}

async fn apply(
    client: &Client,
    format: Format,
    args: &Args,
    trace: Option<&Started>,
) -> Result<(), CliError> {
    let rollout_plan = args.plan.plan()?;
    let file_name = args.file.display().to_string();
    let source = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::Failed(format!("cannot read {file_name}: {e}")))?;
    if let Err(d) = sentinel_config::compile(&file_name, &source) {
        return Err(CliError::Invalid(d.render(render::color())));
    }
    let dry_run = body(&ApplyBody {
        source: source.clone(),
        file: Some(file_name.clone()),
        message: args.message.clone(),
        author: None,
        expect_version: None,
        dry_run: true,
        rollout: None,
    });
    let (status, plan) = client
        .request(Method::POST, "/v1/configs", Some(&dry_run), &[])
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
        let plan: ApplyNothingStored = typed(&plan)?;
        if let ApplyNothingStored::DryRun(plan) = plan {
            render::diff(&body(&plan.diff));
        }
    }
    if args.dry_run {
        if format == Format::Json {
            render::json(&plan);
        }
        return Ok(());
    }
    let apply = body(&ApplyBody {
        source,
        file: Some(file_name),
        message: Some(args.message.clone().unwrap_or_default()),
        author: None,
        expect_version: args.expect_version,
        dry_run: false,
        rollout: rollout_plan,
    });
    let headers: Vec<(&str, String)> = args
        .expect_version
        .map(|n| ("If-Match", n.to_string()))
        .into_iter()
        .chain(trace.map(Started::header))
        .collect();
    let (status, result) = client
        .request(Method::POST, "/v1/configs", Some(&apply), &headers)
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
    let mut rollout = None;
    let (version, unchanged) = if status == StatusCode::CREATED {
        let created = typed::<ApplyCreated>(&result)?;
        rollout = created.rollout;
        (created.version, None)
    } else {
        match typed::<ApplyNothingStored>(&result)? {
            ApplyNothingStored::Unchanged(u) => (u.version, Some(u.message)),
            ApplyNothingStored::DryRun(_) => {
                return Err(CliError::Failed(
                    "the control plane answered a dry run to an apply".into(),
                ));
            }
        }
    };
    match (format, unchanged) {
        (Format::Json, _) => render::json(&result),
        (Format::Table, None) => match rollout {
            Some(id) => println!(
                "{}",
                green(&format!(
                    "stored as v{version}; rollout {id} started (sentinelctl rollout status {id})"
                ))
            ),
            None => println!("{}", green(&format!("applied as v{version}"))),
        },
        (Format::Table, Some(message)) => println!("{message}"),
    }
    if let Some(t) = trace {
        t.version(version);
        if args.wait.is_some() && format == Format::Table {
            println!("trace {}", t.trace_id);
        }
    }
    if let Some(timeout) = args.wait {
        match rollout {
            Some(id) => crate::rollout::follow(client, id, timeout).await?,
            None => crate::wait::wait(client, version, timeout).await?,
        }
    }
    Ok(())
}
