//! Tasks as people write them: the options one `task add` gives all its tasks, and a task as a
//! JSON object (a line of `task add --from-file`, an item of the HTTP API's `POST /api/tasks`),
//! turned into [`TaskSpec`]s the same way wherever they come from.

use std::time::Duration;

use serde::Deserialize;

use crate::cli::parse_duration;
use crate::{BlockType, Data, EnvVar, Payload, Tag, TaskSpec};

/// Milliseconds of a duration, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Options every task of one `task add` shares (the defaults of a JSON task).
#[derive(Clone, Debug, Default)]
pub struct Common {
    /// Label.
    pub name: Option<String>,
    /// Block type.
    pub block: BlockType,
    /// Priority.
    pub priority: i32,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Max attempts; 0 leaves them to the queue (1 unless it sets another default).
    pub attempts: u32,
    /// Timeout.
    pub timeout: Option<Duration>,
    /// Extra environment for exec tasks.
    pub env: Vec<EnvVar>,
    /// Working directory for exec tasks.
    pub cwd: Option<String>,
    /// User data key.
    pub user_key: Option<String>,
    /// User data.
    pub user_data: Data,
    /// The queue; `default` when absent.
    pub queue: Option<String>,
    /// Soft affinity tags.
    pub prefer: Vec<Tag>,
    /// Hard affinity tags.
    pub require: Vec<Tag>,
}

impl Common {
    /// A spec for `payload` with these options.
    pub fn spec(&self, payload: Payload) -> TaskSpec {
        TaskSpec {
            name: self.name.clone(),
            block: self.block,
            priority: self.priority,
            tags: self.tags.clone(),
            payload,
            max_attempts: self.attempts,
            timeout_ms: self.timeout.map(millis),
            user_key: self.user_key.clone(),
            user_data: self.user_data.clone(),
            queue: self.queue.clone(),
            prefer: self.prefer.clone(),
            require: self.require.clone(),
        }
    }

    /// An exec payload with these options' env and cwd.
    pub fn exec(&self, argv: Vec<String>) -> Payload {
        Payload::Exec {
            argv,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
        }
    }
}

/// A task as a JSON object: exactly one of `command` (argv), `shell` (a line for `sh -c`),
/// `sleep` (a duration) or `custom` (a handler, with `data`); the other fields as `task add`
/// names its flags. Unknown fields are refused.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct JsonTask {
    /// `command`.
    pub command: Option<Vec<String>>,
    /// `shell`.
    pub shell: Option<String>,
    /// `sleep`.
    pub sleep: Option<String>,
    /// `custom`.
    pub custom: Option<String>,
    /// `data`.
    pub data: Option<serde_json::Value>,
    /// `name`.
    pub name: Option<String>,
    /// `block`.
    pub block: Option<String>,
    /// `priority`.
    pub priority: Option<i32>,
    #[serde(default)]
    /// `tags`.
    pub tags: Vec<String>,
    /// `attempts`.
    pub attempts: Option<u32>,
    /// `timeout`.
    pub timeout: Option<String>,
    /// `cwd`.
    pub cwd: Option<String>,
    #[serde(default)]
    /// `env`.
    pub env: std::collections::BTreeMap<String, String>,
    /// `queue`.
    pub queue: Option<String>,
    #[serde(default)]
    /// `prefer`.
    pub prefer: Vec<String>,
    #[serde(default)]
    /// `require`.
    pub require: Vec<String>,
}

impl JsonTask {
    /// The spec: this task's fields over `common`'s.
    pub fn spec(self, common: &Common) -> Result<TaskSpec, String> {
        let f = self;
        let kinds = [
            f.command.is_some(),
            f.shell.is_some(),
            f.sleep.is_some(),
            f.custom.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(
                "give exactly one of \"command\", \"shell\", \"sleep\" or \"custom\"".into(),
            );
        }
        let mut c = common.clone();
        if let Some(n) = f.name {
            c.name = Some(n);
        }
        if let Some(b) = f.block {
            c.block = b.parse()?;
        }
        if let Some(p) = f.priority {
            c.priority = p;
        }
        for t in f.tags {
            c.tags.push(t.parse()?);
        }
        if let Some(a) = f.attempts {
            if a == 0 {
                return Err(
                    "\"attempts\" must be at least 1 (leave it out for the queue's default)".into(),
                );
            }
            c.attempts = a;
        }
        if f.queue.is_some() {
            c.queue = f.queue;
        }
        for t in f.prefer {
            c.prefer.push(t.parse()?);
        }
        for t in f.require {
            c.require.push(t.parse()?);
        }
        if let Some(t) = f.timeout {
            c.timeout = Some(parse_duration(&t)?);
        }
        if f.cwd.is_some() {
            c.cwd = f.cwd;
        }
        c.env.extend(
            f.env
                .into_iter()
                .map(|(name, value)| EnvVar { name, value }),
        );
        let payload = if let Some(argv) = f.command {
            c.exec(argv)
        } else if let Some(sh) = f.shell {
            c.exec(vec!["sh".into(), "-c".into(), sh])
        } else if let Some(d) = f.sleep {
            Payload::Sleep {
                duration_ms: millis(parse_duration(&d)?),
            }
        } else {
            let data = match f.data {
                Some(v) => Data::encode(&v).map_err(|e| e.to_string())?,
                None => Data::empty(),
            };
            Payload::Custom {
                handler: f.custom.unwrap_or_default(),
                data,
            }
        };
        Ok(c.spec(payload))
    }
}
