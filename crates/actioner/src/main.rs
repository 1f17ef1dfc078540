//! `actionwurm`: parses the command line, runs it, and turns errors into one line and an exit code.

use clap::Parser;
use tatzelwurm_actioner::cli::{Cli, EXIT_NO_COORDINATOR, lost_coordinator, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // 1 is a failed task (`task wait`) or a refused command; a lost coordinator is 3.
            std::process::exit(if lost_coordinator(&e) {
                EXIT_NO_COORDINATOR
            } else {
                1
            });
        }
    }
}
