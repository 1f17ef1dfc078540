//! The `actionwurm` command line: the top-level arguments and the dispatch of every command.
//! The arguments and helpers of each group of commands are in their own file: `tasks.rs`,
//! `wait.rs`, `workers.rs`, `queues.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tatzelwurm_protocol::client::read_token;
use tatzelwurm_protocol::{
    ActionerRequest, BlockType, BodyCodec, BroadcastMessage, Data, EnvVar, EventFilter,
    MessageOutcome, Payload, QueueChange, Reply, Selector, Tag, TaskFilter, TaskId, TaskState,
};

use crate::client::{Client, ClientError, DEFAULT_ADDR, default_token_file};

mod follow;
mod queues;
mod tasks;
mod wait;
mod workers;

use crate::output;
use crate::spec::{self, Common, millis, parse_duration};
pub use queues::*;
pub use tasks::*;
pub use wait::*;
pub use workers::*;

/// Drive a tatzelwurm coordinator: add, play, pause, kill and watch tasks; list workers.
#[derive(Parser, Debug)]
#[command(name = "actionwurm", version, about, propagate_version = true)]
pub struct Cli {
    /// Coordinator address: a host name or address, with a port or without (then 5677), or
    /// `unix:PATH` for the Unix socket of a coordinator on this machine (`tatzelwurm --socket`).
    #[arg(long, global = true, env = "TATZELWURM_ADDR", default_value = DEFAULT_ADDR)]
    pub coordinator: String,
    /// File holding the coordinator's token [default: the token of a coordinator on this machine:
    /// in $TATZELWURM_DATA_DIR, else in its default data dir].
    #[arg(long, global = true, env = "TATZELWURM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON (stable, documented in README.md) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only ids.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The namespace of queues, RPC identifiers and broadcasts (as a kiwipy client's, e.g. an
    /// AiiDA profile's UUID) [default: the default namespace].
    #[arg(
        long,
        global = true,
        env = "TATZELWURM_NAMESPACE",
        default_value = "",
        hide_default_value = true
    )]
    pub namespace: String,
    /// How long the coordinator has to answer the handshake.
    #[arg(long, global = true, env = "TATZELWURM_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Log what the client does (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Add, play, pause, kill, list, show and wait for tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Look at workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Counts per state, connected workers, and tasks finished per second over the last minute.
    Summary {
        /// Instead, counts per state for each value of this tag key.
        #[arg(long, value_name = "KEY")]
        by_tag: Option<String>,
    },
    /// List, show, set, pause and play the queues of the namespace.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send an RPC to the connection holding IDENTIFIER in the namespace, and print its answer.
    Rpc {
        /// The RPC identifier (for AiiDA: a process's pk).
        identifier: String,
        /// The message: JSON, or else taken as a string.
        message: String,
    },
    /// Send a broadcast to every listener of the namespace.
    Broadcast {
        /// The body: JSON, or else taken as a string.
        body: String,
        /// Its subject.
        #[arg(long)]
        subject: Option<String>,
        /// Its sender.
        #[arg(long)]
        sender: Option<String>,
        /// Its correlation id.
        #[arg(long)]
        correlation_id: Option<String>,
    },
    /// Print a completion script for a shell: `actionwurm completions bash > /etc/bash_completion.d/actionwurm`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the namespace's broadcasts as they come, one a line, until interrupted.
    Listen {
        /// Only broadcasts whose subject matches (exact, or `*` for any run; repeatable).
        #[arg(long)]
        subject: Vec<String>,
        /// Only broadcasts whose sender matches (repeatable).
        #[arg(long)]
        sender: Vec<String>,
    },
}

/// A message typed on the command line: JSON when it parses, else the text itself.
fn message_data(text: &str) -> Result<Data> {
    let value = serde_json::from_str::<serde_json::Value>(text)
        .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
    Data::encode(&value).map_err(|e| anyhow::anyhow!("cannot encode the message: {e}"))
}

/// Runs a parsed command line; the returned code is the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "actionwurm",
            &mut std::io::stdout(),
        );
        return Ok(0);
    }
    let default = default_token_file();
    let token = read_token(cli.token_file.as_deref(), default.as_deref())?;
    // Parse what can be parsed before connecting, so a typo never waits on the network.
    let add_specs = match &cli.command {
        Command::Task(TaskCommand::Add(a)) => Some(a.specs()?),
        _ => None,
    };
    let states = match &cli.command {
        Command::Task(TaskCommand::List(l)) => Some(list_states(&l.filter)?),
        _ => None,
    };
    let mut client = Client::connect_within(
        &cli.coordinator,
        &token,
        BodyCodec::Bincode,
        &cli.namespace,
        cli.connect_timeout,
    )
    .await?;
    let (json, quiet) = (cli.json, cli.quiet);
    // How `task wait` reaches the coordinator again when it went away.
    let reach = Reach {
        addr: cli.coordinator.clone(),
        token: token.clone(),
        namespace: cli.namespace.clone(),
        timeout: cli.connect_timeout,
    };
    match cli.command {
        Command::Task(TaskCommand::Add(a)) => {
            let specs = add_specs.expect("parsed above");
            let unserved = if a.play {
                unserved_kinds(&mut client, &specs).await?
            } else {
                Vec::new()
            };
            match client.add_numbered(specs, a.play).await {
                Ok(added) => {
                    print_added(&added, json, quiet);
                    let ids: Vec<TaskId> = added.iter().map(|t| t.id).collect();
                    for kind in &unserved {
                        eprintln!(
                            "warning: no connected worker takes {kind}: the tasks wait in ready \
                             until one connects (`worker list` shows who is connected)"
                        );
                    }
                    if a.wait {
                        let w = WaitArgs {
                            select: WaitSelect {
                                ids: ids.iter().map(|i| i.to_string()).collect(),
                                all: false,
                            },
                            tag: vec![],
                            queue: None,
                            batch: None,
                            reconnect_for: Duration::from_secs(300),
                        };
                        return wait(client, &reach, w, json).await;
                    }
                }
                // What was added is durable: say which, so nothing is added twice on a retry.
                Err(ClientError::PartlyAdded {
                    added,
                    total,
                    source,
                }) => {
                    print_ids(&added, json);
                    bail!(
                        "added {} of {total} tasks (their ids are above), then: {source}",
                        added.len()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Task(TaskCommand::Play(p)) => {
            let n = change(
                &mut client,
                ActionerRequest::Play {
                    selector: p.select.selector(),
                    created: p.created,
                },
                "played",
                json,
                quiet,
            )
            .await?;
            if (p.select.all || p.select.filtered()) && !p.created && !json && !quiet {
                let (_, counts) = client.list(vec![], vec![], Some(0), None).await?;
                let created = counts
                    .iter()
                    .find(|c| c.state == TaskState::Created)
                    .map_or(0, |c| c.count);
                if n == 0 && created > 0 {
                    eprintln!(
                        "{} never played; `task play -a --created` plays them too",
                        plural(created, "created task")
                    );
                }
            }
        }
        Command::Task(TaskCommand::Pause(s)) => {
            change(
                &mut client,
                ActionerRequest::Pause {
                    selector: s.selector(),
                },
                "paused",
                json,
                quiet,
            )
            .await?;
        }
        Command::Task(TaskCommand::Kill(s)) => {
            change(
                &mut client,
                ActionerRequest::Kill {
                    selector: s.selector(),
                },
                "killed",
                json,
                quiet,
            )
            .await?;
        }
        Command::Task(TaskCommand::Retry(r)) => {
            change(
                &mut client,
                ActionerRequest::Retry {
                    selector: r.select.selector(),
                    attempts: r.attempts,
                },
                "retried",
                json,
                quiet,
            )
            .await?;
        }
        Command::Task(TaskCommand::Remove(s)) => {
            change(
                &mut client,
                ActionerRequest::Remove {
                    selector: s.selector(),
                },
                "removed",
                json,
                quiet,
            )
            .await?;
        }
        Command::Task(TaskCommand::Move(m)) => {
            change(
                &mut client,
                ActionerRequest::Move {
                    selector: m.select.selector(),
                    queue: m.to,
                },
                "moved",
                json,
                quiet,
            )
            .await?;
        }
        Command::Task(TaskCommand::List(l)) => {
            let (tasks, counts) = client
                .list(states.expect("parsed above"), l.tag, l.limit, l.queue)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &tasks.iter().map(output::summary_json).collect::<Vec<_>>()
                    )?
                );
            } else if quiet {
                tasks.iter().for_each(|t| println!("{}", t.id));
            } else {
                if !tasks.is_empty() {
                    println!("{}", output::tasks_table(&tasks));
                }
                println!("{}", output::counts_line(&counts));
            }
        }
        Command::Task(TaskCommand::Show { id }) => {
            let (task, waiting) = client.show(&id).await?;
            if json {
                let mut v = output::task_json(&task);
                v["waiting"] = json!(waiting);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if quiet {
                println!("{}", task.id);
            } else {
                print!("{}", output::task_text(&task, waiting.as_deref()));
            }
        }
        Command::Task(TaskCommand::Log {
            id,
            attempt,
            stderr,
        }) => {
            let (task, _) = client.show(&id).await?;
            let a = match attempt {
                Some(n) => task
                    .attempts
                    .iter()
                    .find(|a| a.number == n)
                    .with_context(|| {
                        format!(
                            "task {} has no attempt {n} (it has {})",
                            task.id,
                            task.attempts.len()
                        )
                    })?,
                None => task.attempts.last().with_context(|| {
                    format!("task {} has not run yet (it is {})", task.id, task.state)
                })?,
            };
            print!(
                "{}",
                if stderr {
                    &a.stderr_tail
                } else {
                    &a.stdout_tail
                }
            );
        }
        Command::Task(TaskCommand::Wait(a)) => {
            return wait(client, &reach, a, json).await;
        }
        Command::Task(TaskCommand::Follow { id, reconnect_for }) => {
            return follow::follow(client, &reach, &id, reconnect_for).await;
        }
        Command::Worker(WorkerCommand::List) => {
            let workers = client.workers().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &workers.iter().map(output::worker_json).collect::<Vec<_>>()
                    )?
                );
            } else if quiet {
                workers.iter().for_each(|w| println!("{}", w.id));
            } else {
                println!("{}", output::workers_table(&workers));
            }
        }
        Command::Worker(WorkerCommand::Show { worker }) => {
            let workers = client.workers().await?;
            let w = find_worker(&workers, &worker)?.clone();
            let (tasks, _) = client
                .list(
                    vec![TaskState::Assigned, TaskState::Running, TaskState::Paused],
                    vec![],
                    None,
                    None,
                )
                .await?;
            let held: Vec<_> = tasks
                .into_iter()
                .filter(|t| t.worker == Some(w.id))
                .collect();
            if json {
                let mut v = output::worker_json(&w);
                v["tasks"] = json!(held.iter().map(|t| t.id.to_string()).collect::<Vec<_>>());
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if quiet {
                println!("{}", w.id);
            } else {
                print!("{}", output::worker_text(&w));
                if !held.is_empty() {
                    println!("{}", output::tasks_table(&held));
                }
            }
        }
        Command::Worker(WorkerCommand::Drain { worker }) => {
            drain_worker(&mut client, &worker, true, json, quiet).await?
        }
        Command::Worker(WorkerCommand::Resume { worker }) => {
            drain_worker(&mut client, &worker, false, json, quiet).await?
        }
        Command::Summary { by_tag: Some(key) } => {
            match client.request(ActionerRequest::Breakdown { key }).await? {
                Reply::Breakdown { key, values } => {
                    if json {
                        let v: serde_json::Map<String, serde_json::Value> = values
                            .iter()
                            .map(|v| (v.value.clone(), output::counts_json(&v.counts)))
                            .collect();
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&json!({ "key": key, "values": v }))?
                        );
                    } else {
                        println!("{}", output::breakdown_table(&key, &values));
                    }
                }
                other => bail!("unexpected reply: {other:?}"),
            }
        }
        Command::Queue(QueueCommand::List) => {
            let queues = client.queues().await?;
            if json {
                let v: Vec<_> = queues.iter().map(output::queue_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if quiet {
                queues.iter().for_each(|q| println!("{}", q.name));
            } else {
                println!("{}", output::queues_table(&queues));
            }
        }
        Command::Queue(q) => {
            let (name, change) = match q {
                QueueCommand::List => unreachable!("matched above"),
                QueueCommand::Show { name } => (name, None),
                QueueCommand::Pause { name } => (
                    name,
                    Some(QueueChange {
                        paused: Some(true),
                        ..Default::default()
                    }),
                ),
                QueueCommand::Play { name } => (
                    name,
                    Some(QueueChange {
                        paused: Some(false),
                        ..Default::default()
                    }),
                ),
                QueueCommand::Set(a) => {
                    let change = QueueChange {
                        priority: a.priority,
                        weight: a.weight,
                        limit: a.limit,
                        paused: None,
                        max_attempts: a.attempts,
                        timeout_ms: a.timeout,
                    };
                    if change == QueueChange::default() {
                        bail!(
                            "queue set: say what changes (--priority, --weight, --limit, --attempts, --timeout)"
                        );
                    }
                    (a.name, Some(change))
                }
            };
            let queue = client.queue(&name, change).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&output::queue_json(&queue))?
                );
            } else if quiet {
                println!("{}", queue.name);
            } else {
                print!("{}", output::queue_text(&queue));
            }
        }
        Command::Rpc {
            identifier,
            message,
        } => match client.call(&identifier, message_data(&message)?).await? {
            MessageOutcome::Value(v) => {
                let v = output::data_json(&v);
                println!("{}", if json { v.to_string() } else { plain(&v) });
            }
            MessageOutcome::Failed(e) => bail!("the RPC failed at {identifier}: {e}"),
            MessageOutcome::Cancelled(e) => bail!("the RPC was cancelled at {identifier}: {e}"),
            MessageOutcome::Pending => bail!("unexpected pending answer"),
        },
        Command::Broadcast {
            body,
            subject,
            sender,
            correlation_id,
        } => {
            let n = client
                .broadcast(BroadcastMessage {
                    body: message_data(&body)?,
                    sender,
                    subject,
                    correlation_id,
                })
                .await?;
            if json {
                println!("{}", json!({ "listeners": n }));
            } else if !quiet {
                println!("sent to {n} listener{}", if n == 1 { "" } else { "s" });
            }
        }
        Command::Completions { .. } => unreachable!("answered before connecting"),
        Command::Listen { subject, sender } => {
            client.listen(subject, sender).await?;
            loop {
                let m = client.next_broadcast().await?;
                if json {
                    println!("{}", output::broadcast_json(&m));
                } else {
                    let body = output::data_json(&m.body);
                    println!(
                        "{} from {}: {}",
                        m.subject.as_deref().unwrap_or("-"),
                        m.sender.as_deref().unwrap_or("-"),
                        plain(&body)
                    );
                }
            }
        }
        Command::Summary { by_tag: None } => {
            match client.request(ActionerRequest::Summary).await? {
                Reply::Summary {
                    counts,
                    workers_connected,
                    finished_last_minute,
                } => {
                    let rate = finished_last_minute as f64 / 60.0;
                    if json {
                        let v = json!({
                            "counts": output::counts_json(&counts),
                            "workers_connected": workers_connected,
                            "finished_last_minute": finished_last_minute,
                            "finished_per_second": rate,
                        });
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        println!("{}", output::counts_line(&counts));
                        println!("{workers_connected} workers connected");
                        println!(
                            "{rate:.2} tasks/s finished over the last minute ({finished_last_minute} tasks)"
                        );
                    }
                }
                other => bail!("unexpected reply: {other:?}"),
            }
        }
    }
    Ok(0)
}

fn print_ids(ids: &[TaskId], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(&ids.iter().map(|i| i.to_string()).collect::<Vec<_>>())
                .expect("strings")
        );
    } else {
        ids.iter().for_each(|i| println!("{i}"));
    }
}

/// `n thing` or `n things`.
fn plural(n: u64, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// Sends a change and prints the ids it changed; returns how many.
async fn change(
    client: &mut Client,
    req: ActionerRequest,
    verb: &str,
    json: bool,
    quiet: bool,
) -> Result<usize> {
    let ids = client.change(req).await?;
    if json || quiet {
        print_ids(&ids, json);
    } else {
        ids.iter().for_each(|i| println!("{i}"));
        eprintln!("{verb} {}", plural(ids.len() as u64, "task"));
    }
    Ok(ids.len())
}

/// The exit code of a command that lost its coordinator (or never reached it): apart from 1, a
/// task that failed, so that scripts can tell the two.
pub const EXIT_NO_COORDINATOR: i32 = 3;

/// Whether an error means the coordinator is gone or unreachable, rather than a refusal.
pub fn lost_coordinator(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<ClientError>().is_some_and(is_lost))
}

fn is_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::NoAnswer { .. }
            | ClientError::Closed(_)
            | ClientError::Frame(_)
    )
}

/// A JSON value for people: a string without its quotes, anything else as JSON.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks the definitions (unique short flags, valid defaults) only when a command is
    /// built: this builds every one, so a clash fails here and not in a user's hands.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_and_timeouts_take_none() {
        assert_eq!(parse_limit("none"), Ok(0));
        assert_eq!(parse_limit("3"), Ok(3));
        assert!(parse_limit("0").is_err());
        assert_eq!(parse_optional_duration("none"), Ok(0));
        assert_eq!(parse_optional_duration("2s"), Ok(2000));
        assert!(parse_optional_duration("0s").is_err());
    }
}
