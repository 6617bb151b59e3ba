//! `sentinelctl rollback [--to N] [--wait]`.

use std::time::Duration;

use reqwest::Method;
use sentinel_api::{RollbackBody, RollbackResult};

use crate::client::{CliError, Client, body, message, typed};
use crate::render::{self, Format, green};

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
}

pub async fn run(client: &Client, format: Format, args: &Args) -> Result<(), CliError> {
    let request = body(&RollbackBody {
        to: args.to,
        message: args.message.clone(),
    });
    let (status, result) = client
        .request(Method::POST, "/v1/rollback", Some(&request), &[])
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
    if let Some(timeout) = args.wait {
        crate::wait::wait(client, to, timeout).await?;
    }
    Ok(())
}
