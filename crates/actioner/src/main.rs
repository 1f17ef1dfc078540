//! `actionwurm`: parses the command line, runs it, and turns errors into one line and an exit code.

use clap::{CommandFactory, FromArgMatches};
use tatzelwurm_actioner::cli::{Cli, EXIT_NO_COORDINATOR, lost_coordinator, run};
use tatzelwurm_actioner::config;

/// Output piped into `head` and the like ends quietly when the reader goes away, as with other
/// command-line tools, instead of a panic on the broken pipe (Rust starts with SIGPIPE ignored).
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: sets a signal's disposition to its default; the runtime has a single thread and
    // installs no SIGPIPE handler of its own.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    default_sigpipe();
    // The configuration file gives the defaults; flags and environment variables win.
    let cfg = config::load(config::path().as_deref()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let matches = config::apply(Cli::command(), &cfg).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
