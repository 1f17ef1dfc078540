//! `worker` commands: finding a worker by id or name, drain and resume.

use super::*;

/// Worker commands.
#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// List workers: id, name, host, type, slots, running, tags, last heartbeat, state.
    List,
    /// One worker: every field, and the tasks it holds.
    Show {
        /// Its id (`w3` or `3`) or its name.
        worker: String,
    },
    /// Give a worker no new task; what it runs goes on, and it stays connected.
    Drain {
        /// Its id (`w3` or `3`) or its name.
        worker: String,
    },
    /// Let a drained worker take tasks again.
    Resume {
        /// Its id (`w3` or `3`) or its name.
        worker: String,
    },
}

/// `worker drain` and `worker resume`.
pub(super) async fn drain_worker(
    client: &mut Client,
    name: &str,
    drain: bool,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let workers = client.workers().await?;
    let id = find_worker(&workers, name)?.id;
    let w = match client
        .request(ActionerRequest::WorkerDrain {
            worker: id.0,
            drain,
        })
        .await?
    {
        Reply::Workers { mut workers } if workers.len() == 1 => workers.remove(0),
        other => bail!("unexpected reply: {other:?}"),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&output::worker_json(&w))?
        );
    } else if quiet {
        println!("{}", w.id);
    } else if drain {
        eprintln!(
            "worker {} ({}) takes no new task; it still runs {}",
            w.id,
            w.name,
            plural(w.running as u64, "task")
        );
    } else {
        eprintln!("worker {} ({}) takes tasks again", w.id, w.name);
    }
    Ok(())
}

/// The worker a person named: by id (`w3`, `3`) or by a name only one worker has.
pub(super) fn find_worker<'a>(
    workers: &'a [tatzelwurm_protocol::WorkerInfo],
    text: &str,
) -> Result<&'a tatzelwurm_protocol::WorkerInfo> {
    let number = text.strip_prefix('w').unwrap_or(text).parse::<u64>().ok();
    if let Some(w) = number.and_then(|n| workers.iter().find(|w| w.id.0 == n)) {
        return Ok(w);
    }
    let named: Vec<_> = workers.iter().filter(|w| w.name == text).collect();
    match named.as_slice() {
        [w] => Ok(w),
        [] => bail!("no worker {text:?} (by id or name; `worker list` shows them)"),
        many => bail!(
            "{} workers are named {text:?}: name one by its id ({})",
            many.len(),
            many.iter()
                .map(|w| w.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
