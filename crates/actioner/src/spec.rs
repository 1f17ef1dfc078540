//! Turning what people type (flags, durations, lines of a task file) into task specs.

use tatzelwurm_protocol::{Data, TaskSpec};

pub use tatzelwurm_protocol::cli::parse_duration;

pub use tatzelwurm_protocol::input::{Common, JsonTask, millis};

/// Encodes a JSON text as task data.
pub fn json_data(text: &str) -> Result<Data, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON {text:?}: {e}"))?;
    Data::encode(&v).map_err(|e| e.to_string())
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
    let f: JsonTask = serde_json::from_str(line).map_err(|e| format!("invalid JSON task: {e}"))?;
    f.spec(common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::Payload;

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
