//! `task` commands: which tasks (ids, numbers, filters), what `task add` makes of its flags,
//! and what it prints.

use super::*;

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
    /// Print a task's output as its command writes it, until the task ends (stdout to stdout,
    /// stderr to stderr; of a task that has ended, the output as kept). Exits 1 when the task
    /// did not succeed, 3 when the coordinator was lost.
    Follow {
        /// Task number, id or unique prefix.
        id: String,
        /// How long to wait for a coordinator that went away before giving up (exit 3).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        reconnect_for: Duration,
    },
    /// Wait until tasks end: those named, or (-a, --tag, --queue) those that can still end;
    /// exits 1 when any failed or was killed, 3 when the coordinator was lost.
    Wait(WaitArgs),
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
    pub(super) fn filtered(&self) -> bool {
        !self.tag.is_empty()
            || !self.state.is_empty()
            || self.queue.is_some()
            || self.name.is_some()
            || self.batch.is_some()
    }

    pub(super) fn selector(&self) -> Selector {
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
pub(super) fn block_type() -> impl clap::builder::TypedValueParser<Value = BlockType> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["sync", "async"])
        .map(|s| s.parse::<BlockType>().expect("a listed choice parses"))
}

/// The variable that tells each of `--count` copies its index.
pub const INDEX_VAR: &str = "TATZELWURM_TASK_INDEX";

impl AddArgs {
    pub(super) fn specs(&self) -> Result<Vec<tatzelwurm_protocol::TaskSpec>> {
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

pub(super) fn list_states(filters: &[String]) -> Result<Vec<TaskState>> {
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
pub(super) fn print_added(added: &[crate::client::AddedTask], json: bool, quiet: bool) {
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

/// The kinds of work among `specs` that no connected worker can take, in words ("async tasks",
/// "sync tasks with handler render", "async tasks with tags gpu=yes").
pub(super) async fn unserved_kinds(
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
        let kind = s.worker_needs();
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}
