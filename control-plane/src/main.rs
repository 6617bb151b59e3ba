//! `sentinel-cp`: the control plane. Not built yet: it says so and exits 2
//! rather than pretend to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "error: sentinel-cp is not built yet (see the control-plane issue); nothing was started"
    );
    ExitCode::from(2)
}
