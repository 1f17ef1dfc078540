//! The `actionwurm` command line: argument definitions and what each command does.

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
use crate::output;
use crate::spec::{self, Common, millis, parse_duration};

/// Drive a tatzelwurm coordinator: add, play, pause, kill and watch tasks; list workers.
#[derive(Parser, Debug)]
#[command(name = "actionwurm", version, about, propagate_version = true)]
pub struct Cli {
    /// Coordinator address: a host name or address, with a port or without (then 5677).
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
    #[arg(long, global = true, env = "TATZELWURM_NAMESPACE", default_value = "")]
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

/// Queue commands.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// The queues of the namespace: settings, tasks per state, running now, finished per minute.
    List,
    /// One queue: its settings, counts and subscribers.
    Show {
        /// The queue's name.
        name: String,
    },
    /// Change a queue's settings (creating it when new); they are stored.
    Set(QueueSetArgs),
    /// Dispatch nothing new from a queue; what runs goes on.
    Pause {
        /// The queue's name.
        name: String,
    },
    /// Dispatch from a paused queue again.
    Play {
        /// The queue's name.
        name: String,
    },
}

/// `queue set` options; what is left out stays as it is.
#[derive(Args, Debug)]
pub struct QueueSetArgs {
    /// The queue's name.
    pub name: String,
    /// Queues of a higher priority dispatch first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Share of dispatches among queues of equal priority (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub weight: Option<u32>,
    /// Most of its tasks running at once across all workers; `none` removes the limit.
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<u32>,
    /// Attempts for tasks added without --attempts; `none` goes back to 1.
    #[arg(long, value_parser = parse_limit)]
    pub attempts: Option<u32>,
    /// Timeout for tasks added without --timeout; `none` removes it.
    #[arg(long, value_parser = parse_optional_duration)]
    pub timeout: Option<u64>,
}

/// A positive number, or `none` (read as 0: no limit).
fn parse_limit(s: &str) -> Result<u32, String> {
    match s {
        "none" => Ok(0),
        _ => match s.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!("{s:?}: give a number of at least 1, or none")),
            Ok(n) => Ok(n),
        },
    }
}

/// A duration in milliseconds, or `none` (read as 0: no timeout).
fn parse_optional_duration(s: &str) -> Result<u64, String> {
    match s {
        "none" => Ok(0),
        _ => match parse_duration(s).map(millis)? {
            0 => Err(format!("{s:?}: a timeout must be longer than 0 (or none)")),
            ms => Ok(ms),
        },
    }
}

/// A message typed on the command line: JSON when it parses, else the text itself.
fn message_data(text: &str) -> Result<Data> {
    let value = serde_json::from_str::<serde_json::Value>(text)
        .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
    Data::encode(&value).map_err(|e| anyhow::anyhow!("cannot encode the message: {e}"))
}

/// Task commands.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Add tasks: a command (after --), a mock sleep task, a custom task, or a file of tasks.
    Add(AddArgs),
    /// Make created or paused tasks ready to run (-a: every paused task).
    Play(PlayArgs),
    /// Hold tasks; running ones are suspended on their worker.
    Pause(Select),
    /// End tasks as killed; running ones are stopped on their worker.
    Kill(Select),
    /// Run failed or killed tasks again, keeping their earlier attempts (-a: every failed task).
    Retry(RetryArgs),
    /// Forget finished tasks (completed, failed, killed).
    Remove(Select),
    /// Move tasks that no worker holds to another queue (-a: every such task).
    Move(MoveArgs),
    /// List tasks (running ones unless filtered), then the counts per state.
    List(ListArgs),
    /// Show every field, stage time and attempt of a task.
    Show {
        /// Task id or unique prefix.
        id: String,
    },
    /// Print what a task's command wrote: its latest attempt's stdout (--stderr: stderr), as
    /// kept (the last 64 KiB of each).
    Log {
        /// Task id or unique prefix.
        id: String,
        /// This attempt instead of the latest (1 is the first).
        #[arg(long)]
        attempt: Option<u32>,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
    },
    /// Wait until tasks end: those named, or (-a, --tag, --queue) those that can still end;
    /// exits 1 when any failed or was killed, 3 when the coordinator was lost.
    Wait(WaitArgs),
}

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
async fn drain_worker(
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
fn find_worker<'a>(
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

/// Which tasks: ids, every task (-a), or those that match filters (which act like -a, among the
/// matching tasks).
#[derive(Args, Debug)]
pub struct Select {
    /// Task ids or unique prefixes.
    #[arg(required_unless_present_any = ["all", "tag", "state", "queue", "name", "batch"], conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Every task the command applies to.
    #[arg(short, long)]
    pub all: bool,
    /// Only tasks with this key=value tag (repeatable; all must match).
    #[arg(long, short = 't', conflicts_with = "ids")]
    pub tag: Vec<Tag>,
    /// Only tasks in this state (repeatable): created, ready, assigned, running, paused,
    /// completed, failed, killed.
    #[arg(long, conflicts_with = "ids")]
    pub state: Vec<TaskState>,
    /// Only tasks of this queue.
    #[arg(long, conflicts_with = "ids")]
    pub queue: Option<String>,
    /// Only tasks with this name.
    #[arg(long, conflicts_with = "ids")]
    pub name: Option<String>,
    /// Only the tasks of this batch (the number `task add` printed for them).
    #[arg(long, conflicts_with = "ids")]
    pub batch: Option<u64>,
}

/// Which tasks to wait for.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Which tasks: ids, or -a for every task that can still end.
    #[command(flatten)]
    pub select: WaitSelect,
    /// Only tasks with this tag (repeatable; all must match) that can still end.
    #[arg(long, short = 't')]
    pub tag: Vec<Tag>,
    /// Only tasks of this queue that can still end.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only tasks of this batch that can still end.
    #[arg(long)]
    pub batch: Option<u64>,
    /// How long to wait for a coordinator that went away before giving up (exit 3).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub reconnect_for: Duration,
}

/// The tasks of a wait: like [`Select`], but a filter may stand in for ids.
#[derive(Args, Debug)]
pub struct WaitSelect {
    /// Task ids or unique prefixes.
    #[arg(required_unless_present_any = ["all", "tag", "queue", "batch"], conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Every task that can still end (not created, not ended yet).
    #[arg(short, long)]
    pub all: bool,
}

/// Which tasks to play.
#[derive(Debug, Args)]
pub struct PlayArgs {
    /// Which tasks.
    #[command(flatten)]
    pub select: Select,
    /// With -a or a filter, also the created tasks that were never played.
    #[arg(long, conflicts_with = "ids")]
    pub created: bool,
}

/// Which tasks go to which queue.
#[derive(Debug, Args)]
pub struct MoveArgs {
    /// Which tasks.
    #[command(flatten)]
    pub select: Select,
    /// The queue they go to.
    #[arg(long)]
    pub to: String,
}

/// Which tasks to run again, and how many more attempts they get.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Which tasks.
    #[command(flatten)]
    pub select: Select,
    /// Attempts each task gets beyond those it has used.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
}

impl Select {
    fn filtered(&self) -> bool {
        !self.tag.is_empty()
            || !self.state.is_empty()
            || self.queue.is_some()
            || self.name.is_some()
            || self.batch.is_some()
    }

    fn selector(&self) -> Selector {
        if self.filtered() {
            Selector::Where(TaskFilter {
                states: self.state.clone(),
                tags: self.tag.clone(),
                queue: self.queue.clone(),
                name: self.name.clone(),
                batch: self.batch,
            })
        } else if self.all {
            Selector::All
        } else {
            Selector::Ids(self.ids.clone())
        }
    }
}

/// `task list` options.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only tasks in this state (repeatable); `all` for every state.
    #[arg(long, short = 'f')]
    pub filter: Vec<String>,
    /// Only tasks with this tag (repeatable; all must match).
    #[arg(long, short = 't')]
    pub tag: Vec<Tag>,
    /// At most this many (newest first).
    #[arg(long, short = 'l')]
    pub limit: Option<u32>,
    /// Only tasks of this queue.
    #[arg(long)]
    pub queue: Option<String>,
}

/// `task add` options.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// A mock task that sleeps this long (e.g. 10ms, 2s, 1h30m).
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["custom", "from_file", "number"])]
    pub sleep: Option<Duration>,
    /// A custom task for workers serving this handler.
    #[arg(long, conflicts_with_all = ["from_file", "number"])]
    pub custom: Option<String>,
    /// The custom task's input, as JSON.
    #[arg(long, requires = "custom")]
    pub data: Option<String>,
    /// Read tasks from a file (`-`: standard input), one per line: a shell command line or a JSON
    /// object.
    #[arg(long, conflicts_with = "number")]
    pub from_file: Option<PathBuf>,
    /// Make N mock sleep tasks (upstream form; with --scale and --block-type).
    #[arg(short = 'n', long)]
    pub number: Option<u32>,
    /// How long each mock task of --number sleeps (seconds, or a duration).
    #[arg(long, value_parser = parse_duration, default_value = "1s", requires = "number")]
    pub scale: Duration,
    /// Which workers run it: sync (each task blocks a thread of its worker) or async (many
    /// share a worker's runtime).
    #[arg(long, alias = "block-type", default_value = "async", value_parser = block_type())]
    pub block: BlockType,
    /// A shell command line, run with `sh -c` (as a line of a task file): `--shell 'a && b'`.
    #[arg(long, conflicts_with_all = ["sleep", "custom", "from_file", "number", "command"])]
    pub shell: Option<String>,
    /// Higher runs first.
    #[arg(long, short = 'p', default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// A key=value label (repeatable).
    #[arg(long, short = 't')]
    pub tag: Vec<Tag>,
    /// A name for people.
    #[arg(long)]
    pub name: Option<String>,
    /// Attempts before the task stays failed [default: the queue's, 1 unless set].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: Option<u32>,
    /// The queue it waits in [default: default].
    #[arg(long)]
    pub queue: Option<String>,
    /// Soft affinity: prefer workers with this key=value tag, but run elsewhere rather than
    /// wait (repeatable).
    #[arg(long)]
    pub prefer: Vec<Tag>,
    /// Hard affinity: run only on workers with this key=value tag (repeatable).
    #[arg(long)]
    pub require: Vec<Tag>,
    /// Stop and fail an attempt after this long [default: the queue's, none unless set].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Add N copies; each sees its index (0..N) in TATZELWURM_TASK_INDEX.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["from_file", "number"])]
    pub count: u32,
    /// Environment variable for exec tasks, NAME=VALUE (repeatable).
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Working directory for exec tasks.
    #[arg(long)]
    pub cwd: Option<String>,
    /// User data key.
    #[arg(long)]
    pub user_key: Option<String>,
    /// User data, a JSON object that handlers may update.
    #[arg(long)]
    pub user_data: Option<String>,
    /// Make the tasks ready at once.
    #[arg(long)]
    pub play: bool,
    /// Then wait until they end, with a progress bar on a terminal (as `task wait`; exits 1
    /// when any failed).
    #[arg(long, alias = "progress", requires = "play")]
    pub wait: bool,
    /// The command and its arguments (after --).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `sync` or `async`, listed as the choices in `--help`.
fn block_type() -> impl clap::builder::TypedValueParser<Value = BlockType> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["sync", "async"])
        .map(|s| s.parse::<BlockType>().expect("a listed choice parses"))
}

/// The variable that tells each of `--count` copies its index.
pub const INDEX_VAR: &str = "TATZELWURM_TASK_INDEX";

impl AddArgs {
    fn specs(&self) -> Result<Vec<tatzelwurm_protocol::TaskSpec>> {
        let mut env = Vec::new();
        for e in &self.env {
            let (name, value) = e
                .split_once('=')
                .with_context(|| format!("--env {e:?} is not NAME=VALUE"))?;
            env.push(EnvVar {
                name: name.into(),
                value: value.into(),
            });
        }
        let user_data = match &self.user_data {
            Some(t) => {
                let is_object =
                    serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| v.is_object());
                if !is_object {
                    bail!("--user-data {t:?}: give a JSON object, such as '{{\"step\": 1}}'");
                }
                spec::json_data(t)
                    .map_err(anyhow::Error::msg)
                    .context("--user-data")?
            }
            None => Data::empty(),
        };
        let common = Common {
            name: self.name.clone(),
            block: self.block,
            priority: self.priority,
            tags: self.tag.clone(),
            attempts: self.attempts.unwrap_or(0),
            timeout: self.timeout,
            env,
            cwd: self.cwd.clone(),
            user_key: self.user_key.clone(),
            user_data,
            queue: self.queue.clone(),
            prefer: self.prefer.clone(),
            require: self.require.clone(),
        };
        if let Some(q) = &self.queue {
            tatzelwurm_protocol::check_queue_name(q)
                .map_err(anyhow::Error::msg)
                .context("--queue")?;
        }
        if self.count == 0 {
            bail!("--count must be at least 1");
        }
        let kinds = [
            self.sleep.is_some(),
            self.custom.is_some(),
            self.from_file.is_some(),
            self.number.is_some(),
            !self.command.is_empty(),
            self.shell.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => bail!(
                "say what to run: -- COMMAND [ARGS]..., --shell 'LINE', --sleep DURATION, --custom HANDLER, --from-file FILE or --number N"
            ),
            1 => {}
            _ => bail!(
                "give only one of a command, --shell, --sleep, --custom, --from-file, --number"
            ),
        }
        if let Some(path) = &self.from_file {
            let (name, text) = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .context("cannot read the tasks from standard input")?;
                ("standard input".to_string(), text)
            } else {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                (path.display().to_string(), text)
            };
            let specs = spec::parse_task_file(&text, &common)
                .map_err(|e| anyhow::anyhow!("{name}: {e}; nothing was added"))?;
            if specs.is_empty() {
                bail!("{name}: no tasks in it; nothing was added");
            }
            return Ok(specs);
        }
        if let Some(n) = self.number {
            let payload = Payload::Sleep {
                duration_ms: millis(self.scale),
            };
            return Ok((0..n).map(|_| common.spec(payload.clone())).collect());
        }
        let mut specs = Vec::with_capacity(self.count as usize);
        for i in 0..self.count {
            let payload = if let Some(d) = self.sleep {
                Payload::Sleep {
                    duration_ms: millis(d),
                }
            } else if let Some(h) = &self.custom {
                let data = match &self.data {
                    Some(t) => spec::json_data(t)
                        .map_err(anyhow::Error::msg)
                        .context("--data")?,
                    None => Data::empty(),
                };
                Payload::Custom {
                    handler: h.clone(),
                    data,
                }
            } else {
                let mut c = common.clone();
                if self.count > 1 {
                    c.env.push(EnvVar {
                        name: INDEX_VAR.into(),
                        value: i.to_string(),
                    });
                }
                match &self.shell {
                    Some(line) => c.exec(vec!["sh".into(), "-c".into(), line.clone()]),
                    None => c.exec(self.command.clone()),
                }
            };
            specs.push(common.spec(payload));
        }
        Ok(specs)
    }
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
                        let reach = Reach {
                            addr: cli.coordinator.clone(),
                            token: token.clone(),
                            namespace: cli.namespace.clone(),
                            timeout: cli.connect_timeout,
                        };
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
            let reach = Reach {
                addr: cli.coordinator.clone(),
                token: token.clone(),
                namespace: cli.namespace.clone(),
                timeout: cli.connect_timeout,
            };
            return wait(client, &reach, a, json).await;
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

fn list_states(filters: &[String]) -> Result<Vec<TaskState>> {
    if filters.is_empty() {
        return Ok(vec![TaskState::Running]);
    }
    if filters.iter().any(|f| f == "all") {
        return Ok(Vec::new());
    }
    filters
        .iter()
        .map(|f| f.parse::<TaskState>().map_err(anyhow::Error::msg))
        .collect()
}

/// What `task add` prints: a line per task with its number and id (`-q`: ids only), then
/// which numbers and batch they are; `--json`: `[{"number", "id", "batch"}]`.
fn print_added(added: &[crate::client::AddedTask], json: bool, quiet: bool) {
    if json {
        let v: Vec<serde_json::Value> = added
            .iter()
            .map(|t| json!({ "number": t.number, "id": t.id.to_string(), "batch": t.batch }))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if quiet {
        added.iter().for_each(|t| println!("{}", t.id));
        return;
    }
    added
        .iter()
        .for_each(|t| println!("{:<8} {}", t.number, t.id));
    if let (Some(first), Some(last)) = (added.first(), added.last()) {
        let numbers = if first.number == last.number {
            format!("{}", first.number)
        } else {
            format!("{}-{}", first.number, last.number)
        };
        let batches = if first.batch == last.batch {
            format!("batch {}", first.batch)
        } else {
            format!("batches {}-{}", first.batch, last.batch)
        };
        eprintln!(
            "added {} ({numbers}, {batches})",
            plural(added.len() as u64, "task")
        );
    }
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

/// The kinds of work among `specs` that no connected worker can take, in words ("async tasks",
/// "sync tasks with handler render", "async tasks with tags gpu=yes").
async fn unserved_kinds(
    client: &mut Client,
    specs: &[tatzelwurm_protocol::TaskSpec],
) -> Result<Vec<String>> {
    let workers = client.workers().await?;
    let active: Vec<_> = workers
        .iter()
        .filter(|w| w.state == tatzelwurm_protocol::WorkerState::Active)
        .collect();
    let mut out: Vec<String> = Vec::new();
    for s in specs {
        let handler = s.payload.handler();
        let served = active.iter().any(|w| {
            w.block == s.block
                && handler.is_none_or(|h| w.handlers.iter().any(|x| x == h))
                && s.require.iter().all(|t| w.tags.contains(t))
        });
        if served {
            continue;
        }
        let mut kind = format!("{} tasks", s.block);
        if let Some(h) = handler {
            kind.push_str(&format!(" with handler {h}"));
        }
        if !s.require.is_empty() {
            let tags: Vec<String> = s.require.iter().map(|t| t.to_string()).collect();
            kind.push_str(&format!(" with tags {}", tags.join(",")));
        }
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
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

/// How to reach the coordinator again (`task wait` after it went away).
struct Reach {
    addr: String,
    token: String,
    namespace: String,
    timeout: Duration,
}

impl Reach {
    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_within(
            &self.addr,
            &self.token,
            BodyCodec::Bincode,
            &self.namespace,
            self.timeout,
        )
        .await
    }
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

/// Subscribes to the tasks of a wait (named, by tag and queue, or all); returns their states
/// now, cut down to `only` when given (after a reconnect: what was left).
async fn watch(
    client: &mut Client,
    a: &WaitArgs,
    only: Option<&HashSet<TaskId>>,
) -> Result<HashMap<TaskId, TaskState>, ClientError> {
    let by_filter = !a.tag.is_empty() || a.queue.is_some() || a.batch.is_some();
    let filter = EventFilter {
        ids: a.select.ids.clone(),
        tags: a.tag.clone(),
        all: a.select.ids.is_empty() && !by_filter,
        queue: a.queue.clone(),
        batch: a.batch,
    };
    let snapshot = client.subscribe(filter).await?;
    Ok(snapshot
        .iter()
        .filter(|t| only.is_none_or(|ids| ids.contains(&t.id)))
        .map(|t| (t.id, t.state))
        .collect())
}

/// Waits for tasks to reach a final state, using the event stream (no polling). Named tasks are
/// waited for whatever their state; `--all` and the filters take the tasks that can still end
/// (not created, not ended), so that neither last week's failures nor tasks nobody will play
/// decide the outcome. A coordinator that goes away is waited for (`--reconnect-for`).
async fn wait(mut client: Client, reach: &Reach, a: WaitArgs, json: bool) -> Result<i32> {
    let snapshot = watch(&mut client, &a, None).await?;
    let named = !a.select.ids.is_empty();
    let mut states: HashMap<TaskId, TaskState> = snapshot
        .into_iter()
        .filter(|(_, s)| named || (!s.is_final() && *s != TaskState::Created))
        .collect();
    let watched: HashSet<TaskId> = states.keys().copied().collect();
    let total = watched.len() as u64;
    let done =
        |st: &HashMap<TaskId, TaskState>| st.values().filter(|s| s.is_final()).count() as u64;
    let bar = if std::io::stderr().is_terminal() && !json {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut conn = Some(client);
    while done(&states) < total {
        if let Some(b) = &bar {
            b.set_position(done(&states));
            b.set_message(count_states(&states));
        }
        let ev = match conn.as_mut() {
            Some(c) => c.next_event().await,
            None => Err(ClientError::Closed(String::new())),
        };
        match ev {
            Ok(ev) => {
                if watched.contains(&ev.id) {
                    states.insert(ev.id, ev.state);
                }
            }
            Err(e) if is_lost(&e) => {
                // Back when the coordinator is: subscribe again to what is left.
                eprintln!("lost the coordinator; waiting for it to come back");
                let left: HashSet<TaskId> = states
                    .iter()
                    .filter(|(_, s)| !s.is_final())
                    .map(|(id, _)| *id)
                    .collect();
                let deadline = Instant::now() + a.reconnect_for;
                conn = None;
                while conn.is_none() {
                    if Instant::now() > deadline {
                        return Err(ClientError::Closed(format!(
                            " and did not come back within {:?}",
                            a.reconnect_for
                        ))
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(mut c) = reach.connect().await
                        && let Ok(now) = watch(&mut c, &a, Some(&left)).await
                    {
                        states.extend(now);
                        conn = Some(c);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(b) = &bar {
        b.set_position(total);
        b.finish_with_message(count_states(&states));
    }
    let failed = states
        .values()
        .filter(|s| matches!(s, TaskState::Failed | TaskState::Killed))
        .count();
    if json {
        let v: BTreeMap<String, &str> = states
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_str()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if total == 0 {
        eprintln!("no task to wait for");
    } else {
        eprintln!(
            "{} ended in {:.1}s: {}",
            plural(total, "task"),
            started.elapsed().as_secs_f64(),
            count_states(&states)
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn count_states(states: &HashMap<TaskId, TaskState>) -> String {
    let mut counts: BTreeMap<TaskState, usize> = BTreeMap::new();
    for s in states.values() {
        *counts.entry(*s).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
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
