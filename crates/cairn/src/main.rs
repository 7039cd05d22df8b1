//! The `cairn` command line.
//!
//! The sources this build knows are registered in [`sources`]; flags are
//! parsed by clap into [`cli::Cli`] (each source adds its own); [`context::Context`] turns
//! them, the environment and `cairn.yaml` into ready-to-use settings
//! (repository location, password, output mode) in one place; each
//! subcommand lives in [`commands`]. Errors become one line on stderr (or a
//! JSON line) and a documented exit code (see [`exit`]).

mod cli;
mod commands;
mod config;
mod context;
mod exit;
mod metrics;
mod output;
mod report;
mod sources;

use clap::FromArgMatches;

// Backups churn through large short-lived buffers on many threads; glibc's
// per-thread arenas kept hundreds of MiB of them resident and kept giving
// pages back to the kernel only to fault them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let registry = sources::registry();
    let matches = cli::command(&registry).get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(commands::run(cli, matches, registry));
    // Don't wait for stray blocking tasks (e.g. a lock refresh) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::ExitCode::from(code)
}
