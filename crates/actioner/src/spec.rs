//! Turning what people type (flags, durations, lines of a task file) into task specs.

use std::time::Duration;

use serde::Deserialize;
use tatzelwurm_protocol::{BlockType, Data, EnvVar, Payload, Tag, TaskSpec};

pub use tatzelwurm_protocol::cli::parse_duration;

/// Milliseconds of a duration, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Options every task of one `task add` shares.
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

/// Encodes a JSON text as task data.
pub fn json_data(text: &str) -> Result<Data, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON {text:?}: {e}"))?;
    Data::encode(&v).map_err(|e| e.to_string())
}

/// One line of a `--from-file` in JSON form. Exactly one of `command`, `shell`, `sleep`, `custom`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileTask {
    command: Option<Vec<String>>,
    shell: Option<String>,
    sleep: Option<String>,
    custom: Option<String>,
    data: Option<serde_json::Value>,
    name: Option<String>,
    block: Option<String>,
    priority: Option<i32>,
    #[serde(default)]
    tags: Vec<String>,
    attempts: Option<u32>,
    timeout: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    queue: Option<String>,
    #[serde(default)]
    prefer: Vec<String>,
    #[serde(default)]
    require: Vec<String>,
}

/// Parses a task file: one task per line, either a shell command line (run with `sh -c`) or a JSON
/// object; blank lines and lines starting with `#` are skipped. Any bad line fails the whole file,
/// naming the line.
pub fn parse_task_file(text: &str, common: &Common) -> Result<Vec<TaskSpec>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = parse_line(line, common).map_err(|e| format!("line {}: {e}", i + 1))?;
        spec.validate()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(spec);
    }
    Ok(out)
}

fn parse_line(line: &str, common: &Common) -> Result<TaskSpec, String> {
    if !line.starts_with('{') {
        return Ok(common.spec(common.exec(vec!["sh".into(), "-c".into(), line.into()])));
    }
    let f: FileTask = serde_json::from_str(line).map_err(|e| format!("invalid JSON task: {e}"))?;
    let kinds = [
        f.command.is_some(),
        f.shell.is_some(),
        f.sleep.is_some(),
        f.custom.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("give exactly one of \"command\", \"shell\", \"sleep\" or \"custom\"".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_file_lines() {
        let text = "# comment\n\necho hi\n{\"sleep\": \"10ms\", \"priority\": 3, \"tags\": [\"a=b\"]}\n{\"custom\": \"render\", \"data\": {\"x\": 1}}\n{\"command\": [\"ls\", \"-l\"], \"env\": {\"A\": \"1\"}}\n";
        let specs = parse_task_file(text, &Common::default()).unwrap();
        assert_eq!(specs.len(), 4);
        assert_eq!(
            specs[0].payload,
            Payload::Exec {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![],
                cwd: None
            }
        );
        assert_eq!(specs[1].payload, Payload::Sleep { duration_ms: 10 });
        assert_eq!(specs[1].priority, 3);
        assert_eq!(specs[1].tags, vec!["a=b".parse().unwrap()]);
        assert_eq!(specs[2].payload.handler(), Some("render"));
        assert!(matches!(&specs[3].payload, Payload::Exec { env, .. } if env.len() == 1));
    }

    #[test]
    fn task_file_lines_name_queues_and_affinity() {
        let text = "{\"sleep\": \"1s\", \"queue\": \"gpu\", \"prefer\": [\"curve=USD\"], \"require\": [\"gpu=yes\"]}\n";
        let specs = parse_task_file(text, &Common::default()).unwrap();
        assert_eq!(specs[0].queue.as_deref(), Some("gpu"));
        assert_eq!(specs[0].prefer, vec!["curve=USD".parse().unwrap()]);
        assert_eq!(specs[0].require, vec!["gpu=yes".parse().unwrap()]);
        assert_eq!(specs[0].max_attempts, 0, "attempts left to the queue");
        let e = parse_task_file("{\"sleep\": \"1s\", \"attempts\": 0}", &Common::default())
            .unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = parse_task_file("{\"sleep\": \"1s\", \"queue\": \"\"}", &Common::default())
            .unwrap_err();
        assert!(e.contains("queue"), "{e}");
    }

    #[test]
    fn bad_task_file_line_is_named_and_nothing_is_kept() {
        let text = "echo ok\n{\"sleep\": \"1s\"}\n{\"sleep\": \"x\"}\n";
        let e = parse_task_file(text, &Common::default()).unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = parse_task_file("{\"sleep\": \"1s\", \"shell\": \"ls\"}", &Common::default())
            .unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let e = parse_task_file("{not json", &Common::default()).unwrap_err();
        assert!(e.starts_with("line 1: invalid JSON"), "{e}");
    }
}
