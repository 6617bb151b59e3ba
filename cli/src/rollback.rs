//! `sentinelctl rollback [--to N] [--wait]`.

use std::time::Duration;

use reqwest::Method;
use sentinel_api::{RollbackBody, RollbackResult};

use crate::client::{CliError, Client, body, message, typed};
use crate::render::{self, Format, green};
use crate::trace::Started;

#[derive(clap::Args)]
pub struct Args {
    /// The version to activate (default: the one before the last activation).
    #[arg(long, value_name = "N")]
    to: Option<i64>,
    /// A message recorded with the rollback.
    #[arg(short, long)]
    message: Option<String>,
    /// Wait until every connected proxy runs it (default 60s).
    #[arg(long, value_name = "DUR", num_args = 0..=1, default_missing_value = "60s", value_parser = crate::wait::parse_duration)]
    wait: Option<Duration>,
    /// Also export this command's root span to an OTLP/gRPC collector
    /// (`http://host:4317`); without it the trace context still travels.
    #[arg(long, env = "SENTINEL_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
}

pub async fn run(client: &Client, format: Format, args: &Args) -> Result<(), CliError> {
    let trace = Started::start("sentinelctl rollback", args.otlp_endpoint.as_deref())?;
    let result = rollback(client, format, args, &trace).await;
    trace.finish(&result).await;
    result
}

async fn rollback(
    client: &Client,
    format: Format,
    args: &Args,
    trace: &Started,
) -> Result<(), CliError> {
    let request = body(&RollbackBody {
        to: args.to,
        message: args.message.clone(),
    });
    let (status, result) = client
        .request(
            Method::POST,
            "/v1/rollback",
            Some(&request),
            &[trace.header()],
        )
        .await?;
    if !status.is_success() {
        return Err(CliError::Failed(message(&result)));
    }
    let done: RollbackResult = typed(&result)?;
    let to = done.to;
    match format {
        Format::Json => render::json(&result),
        Format::Table => println!(
            "{}",
            green(&format!("rolled back from v{} to v{to}", done.from))
        ),
    }
    trace.version(to);
    if args.wait.is_some() && format == Format::Table {
        println!("trace {}", trace.trace_id);
    }
    if let Some(timeout) = args.wait {
        crate::wait::wait(client, to, timeout).await?;
    }
    Ok(())
}
