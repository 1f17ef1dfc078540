//! `actionwurm` against a real coordinator and real workers: every command, as a table and as
//! JSON, and every error the issue names.

use std::time::Duration;

use tatzelwurm_tests::{Coordinator, Db, bin, wait_for};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn add_list_show_play_pause_kill_remove() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let ids = c.add(&[
        "--name",
        "build",
        "--tag",
        "project=apollo",
        "--priority",
        "7",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(ids.len(), 1);
    let sleepers = c.add(&["--sleep", "1h30m", "--count", "2", "--block", "sync"]);
    assert_eq!(sleepers.len(), 2);
    let mocks = c.add(&["-n", "3", "--scale", "2", "--block-type", "sync"]);
    assert_eq!(mocks.len(), 3);

    // Without a filter, list shows running tasks (none) and the counts line.
    let text = c.action(&["task", "list"]);
    assert!(text.contains("6 tasks: 6 created"), "{text}");
    let text = c.action(&["task", "list", "--filter", "created"]);
    assert!(
        text.contains("echo hi")
            && text.contains("project=apollo")
            && text.contains("sleep 1h 30m"),
        "{text}"
    );
    // Each row has the task's number and an id prefix that names one task, though the three
    // mocks were made in the same millisecond: either can be pasted back.
    let rows: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('│').map(str::trim);
            cells.next();
            Some((cells.next()?, cells.next()?))
        })
        .filter(|(n, _)| *n != "#")
        .collect();
    assert_eq!(rows.len(), 6, "{text}");
    for (number, id) in rows {
        let task = c.show(id);
        assert!(
            task["id"]
                .as_str()
                .unwrap()
                .replace('-', "")
                .starts_with(id),
            "{id}: {task}"
        );
        assert_eq!(c.show(number)["id"], task["id"], "number {number}");
    }

    let all = c.json(&["task", "list", "--filter", "all"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 6);
    for t in all {
        for key in [
            "id", "state", "priority", "tags", "block", "name", "command", "attempts", "created",
        ] {
            assert!(t.get(key).is_some(), "missing {key} in {t}");
        }
    }
    let tagged = c.json(&["task", "list", "-f", "all", "--tag", "project=apollo"]);
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    assert_eq!(tagged[0]["priority"], 7);
    assert_eq!(tagged[0]["tags"][0], "project=apollo");
    assert_eq!(
        c.json(&["task", "list", "-f", "all", "--limit", "2"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let mock = c.show(&mocks[0]);
    assert_eq!(mock["payload"]["kind"], "sleep");
    assert_eq!(mock["payload"]["duration_ms"], 2000);
    assert_eq!(mock["block"], "sync");

    // Show by a unique prefix; both forms.
    let prefix = &ids[0].replace('-', "")[..30];
    let shown = c.show(prefix);
    assert_eq!(shown["id"], ids[0].as_str());
    assert_eq!(shown["name"], "build");
    assert_eq!(shown["payload"]["argv"][1], "hi");
    assert!(shown["times"]["created"].as_str().unwrap().ends_with('Z'));
    let text = c.action(&["task", "show", &ids[0]]);
    assert!(
        text.contains("build") && text.contains("created") && text.contains("echo hi"),
        "{text}"
    );
    // People read local times to the second, each stage with the time since the one before;
    // `--json` keeps RFC 3339 in UTC.
    let created = text
        .lines()
        .find(|l| l.trim_start_matches('│').trim().starts_with("created"))
        .expect("a created line");
    let stamp = |s: &str| {
        let b = s.as_bytes();
        b.len() == 19 && b[4] == b'-' && b[10] == b' ' && b[13] == b':' && b[16] == b':'
    };
    assert!(
        created.split('│').any(|cell| stamp(cell.trim())),
        "{created}"
    );
    let utc = shown["times"]["created"].as_str().unwrap();
    assert!(!text.contains(utc), "{text}");

    // Pause, play, kill, remove.
    assert_eq!(
        c.action(&["task", "pause", &sleepers[0]]).trim(),
        sleepers[0]
    );
    assert_eq!(c.state(&sleepers[0]), "paused");
    c.action(&["task", "play", &sleepers[0]]);
    assert_eq!(c.state(&sleepers[0]), "ready");
    c.action(&["task", "kill", &sleepers[0]]);
    assert_eq!(c.state(&sleepers[0]), "killed");
    c.action(&["task", "remove", &sleepers[0]]);
    let out = c.try_action(&["task", "show", &sleepers[0]]).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains(&sleepers[0]),
        "{}",
        stderr_of(&out)
    );

    // -a forms (created tasks were never played: `--created` plays them too).
    assert_eq!(c.action(&["-q", "task", "play", "-a"]).lines().count(), 0);
    let played = c.action(&["-q", "task", "play", "-a", "--created"]);
    assert_eq!(played.lines().count(), 5);
    let paused = c.json(&["task", "pause", "--all"]);
    assert_eq!(paused.as_array().unwrap().len(), 5);
    c.action(&["task", "kill", "-a"]);
    let counts = c.action(&["task", "list"]);
    assert!(counts.contains("5 killed"), "{counts}");

    let breakdown = c.json(&["summary", "--by-tag", "project"]);
    assert_eq!(breakdown["key"], "project");
    assert_eq!(breakdown["values"]["apollo"]["killed"], 1, "{breakdown}");
    let table = c.action(&["summary", "--by-tag", "project"]);
    assert!(
        table.contains("apollo") && table.contains("killed"),
        "{table}"
    );

    let summary = c.json(&["summary"]);
    assert_eq!(summary["counts"]["killed"], 5);
    assert_eq!(summary["workers_connected"], 0);
    let text = c.action(&["summary"]);
    assert!(text.contains("0 workers connected"), "{text}");
}

#[test]
fn workers_run_tasks_and_wait_reports_failures() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", "async", "--name", "cli-worker", "--tag", "zone=a"]);
    tatzelwurm_tests::wait_for(Duration::from_secs(10), || {
        c.json(&["worker", "list"]).as_array().unwrap().len() == 1
    })
    .unwrap();
    let workers = c.json(&["worker", "list"]);
    let w = &workers[0];
    assert_eq!(w["name"], "cli-worker");
    assert_eq!(w["block"], "async");
    assert_eq!(w["state"], "active");
    assert_eq!(w["tags"][0], "zone=a");
    for key in [
        "id",
        "host",
        "slots",
        "running",
        "last_heartbeat",
        "handlers",
    ] {
        assert!(w.get(key).is_some(), "missing {key}");
    }
    let table = c.action(&["worker", "list"]);
    assert!(
        table.contains("cli-worker") && table.contains("active"),
        "{table}"
    );

    let ok = c.add(&[
        "--play",
        "--",
        "sh",
        "-c",
        "echo \"index=$TATZELWURM_TASK_INDEX\"",
    ]);
    let wait = c.try_action(&["task", "wait", &ok[0]]).unwrap();
    assert!(wait.status.success(), "{}", stderr_of(&wait));
    assert_eq!(c.state(&ok[0]), "completed");
    assert_eq!(c.show(&ok[0])["attempts"][0]["stdout_tail"], "index=\n");

    let copies = c.add(&[
        "--play",
        "--count",
        "3",
        "--",
        "sh",
        "-c",
        "echo $TATZELWURM_TASK_INDEX",
    ]);
    let bad = c.add(&["--play", "--", "false"]);
    let mut args = vec!["task", "wait"];
    args.extend(copies.iter().map(String::as_str));
    args.push(&bad[0]);
    let wait = c.try_action(&args).unwrap();
    assert_eq!(
        wait.status.code(),
        Some(1),
        "a failed task makes wait fail: {}",
        stderr_of(&wait)
    );
    assert!(
        stderr_of(&wait).contains("1 failed"),
        "{}",
        stderr_of(&wait)
    );
    let mut outs: Vec<String> = copies
        .iter()
        .map(|id| {
            c.show(id)["attempts"][0]["stdout_tail"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    outs.sort();
    assert_eq!(
        outs,
        vec!["0\n", "1\n", "2\n"],
        "each copy is told its index"
    );

    // Named, ended tasks are reported as they ended; `--all` takes only what can still end, so
    // an old failure no longer fails it.
    let mut named = vec!["--json", "task", "wait"];
    named.extend(copies.iter().map(String::as_str));
    named.push(&bad[0]);
    let out = c.try_action(&named).unwrap();
    assert_eq!(out.status.code(), Some(1), "one of them failed");
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(waited.as_object().unwrap().len(), 4);
    assert_eq!(waited[&bad[0]], "failed");
    let out = c.try_action(&["--json", "task", "wait", "--all"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "nothing left to end");
    let wait_all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(wait_all.as_object().unwrap().is_empty());
    let list = c.json(&["task", "list", "-f", "completed", "-f", "failed"]);
    assert_eq!(list.as_array().unwrap().len(), 5);
}

#[test]
fn from_file_adds_all_lines_or_nothing() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "# a comment\necho one\n\n{\"sleep\": \"10ms\", \"tags\": [\"k=v\"]}\n{\"custom\": \"echo\", \"data\": {\"n\": 1}}\n").unwrap();
    assert_eq!(c.add(&["--from-file", good.to_str().unwrap()]).len(), 3);
    let bad = dir.path().join("bad.txt");
    std::fs::write(
        &bad,
        "echo fine\n{\"sleep\": \"10ms\"}\n{\"sleep\": \"forever\"}\n",
    )
    .unwrap();
    let out = c
        .try_action(&["task", "add", "--from-file", bad.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("line 3") && err.contains("nothing was added"),
        "{err}"
    );
    assert_eq!(
        c.json(&["task", "list", "-f", "all"])
            .as_array()
            .unwrap()
            .len(),
        3,
        "nothing from the bad file"
    );
}

#[test]
fn a_large_add_from_standard_input_goes_in_several_requests() {
    use std::io::Write;
    let c = Coordinator::start(Db::Mem).unwrap();
    // More than one request holds, so the client splits it.
    let n = tatzelwurm_protocol::MAX_ADD_TASKS * 2 + 500;
    let lines: String = (0..n).map(|i| format!("sim --seed {i}\n")).collect();
    let mut child = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "--token-file"])
        .arg(c.token_file())
        .args(["-q", "task", "add", "--from-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(lines.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let ids: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), n, "one distinct id per line");
    let summary = c.action(&["summary"]);
    assert!(
        summary.contains(&format!("{n} tasks: {n} created")),
        "{summary}"
    );
    // The last line is the last task, with its own command.
    let newest = c.json(&["task", "list", "-f", "all", "--limit", "1"]);
    assert_eq!(
        newest[0]["command"],
        format!("sh -c 'sim --seed {}'", n - 1)
    );
}

#[test]
fn a_split_add_that_fails_midway_names_what_it_added() {
    use tatzelwurm_actioner::client::{Client, ClientError};
    use tatzelwurm_protocol::{BodyCodec, MAX_ADD_TASKS, Payload, TaskSpec};
    let c = Coordinator::start(Db::Mem).unwrap();
    let token = std::fs::read_to_string(c.token_file()).unwrap();
    // The first request's tasks are fine; the second request holds a task the coordinator
    // refuses, so it adds nothing.
    let mut specs = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 }); MAX_ADD_TASKS + 1];
    specs[MAX_ADD_TASKS].timeout_ms = Some(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let mut client = Client::connect(&c.addr, token.trim(), BodyCodec::Bincode).await?;
        client.add(specs, false).await
    });
    match result {
        Err(ClientError::PartlyAdded {
            added,
            total,
            source,
        }) => {
            assert_eq!((added.len(), total), (MAX_ADD_TASKS, MAX_ADD_TASKS + 1));
            assert!(source.to_string().contains("timeout"), "{source}");
            let summary = c.action(&["summary"]);
            assert!(
                summary.contains(&format!("{MAX_ADD_TASKS} tasks: {MAX_ADD_TASKS} created")),
                "exactly the first request's tasks: {summary}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_add_larger_than_a_frame_goes_in_several_requests() {
    use tatzelwurm_actioner::client::Client;
    use tatzelwurm_protocol::{BodyCodec, Data, Payload, TaskSpec};
    let c = Coordinator::start(Db::Mem).unwrap();
    let token = std::fs::read_to_string(c.token_file()).unwrap();
    // 20 tasks of 1 MiB of user data: more than one 16 MiB frame holds.
    let mut spec = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
    spec.user_data = Data(vec![0xc0; 1 << 20]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt
        .block_on(async {
            let mut client = Client::connect(&c.addr, token.trim(), BodyCodec::Bincode).await?;
            client.add(vec![spec; 20], false).await
        })
        .unwrap();
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        20
    );
    let summary = c.action(&["summary"]);
    assert!(summary.contains("20 tasks: 20 created"), "{summary}");
}

#[test]
fn errors_are_one_clear_line() {
    let c = Coordinator::start(Db::Mem).unwrap();
    // Unknown id.
    let out = c.try_action(&["task", "play", "abcdef"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no task with id abcdef"),
        "{}",
        stderr_of(&out)
    );
    // Not an id at all.
    let out = c.try_action(&["task", "show", "xyz"]).unwrap();
    assert!(
        stderr_of(&out).contains("\"xyz\" is not a task id"),
        "{}",
        stderr_of(&out)
    );
    // Ambiguous prefix: two tasks added together share their first digits.
    let ids = c.add(&["--sleep", "1s", "--count", "2"]);
    let common: String = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let out = c.try_action(&["task", "show", &common]).unwrap();
    assert!(stderr_of(&out).contains("ambiguous"), "{}", stderr_of(&out));
    // Invalid operation names the id and its state.
    c.action(&["task", "kill", &ids[0]]);
    let out = c.try_action(&["task", "play", &ids[0]]).unwrap();
    let err = stderr_of(&out);
    assert!(err.contains(&ids[0]) && err.contains("killed"), "{err}");
    // Bad flags are refused before anything is sent.
    for args in [
        vec!["task", "add", "--sleep", "soon"],
        vec!["task", "add", "--priority", "high", "--", "true"],
        vec!["task", "add", "--tag", "novalue", "--", "true"],
        vec!["task", "add", "--block", "sideways", "--", "true"],
        vec!["task", "list", "--filter", "sleeping"],
        vec!["task", "add"],
    ] {
        let out = c.try_action(&args).unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            !stderr_of(&out).trim().is_empty(),
            "{args:?} should say why"
        );
    }
    assert_eq!(
        c.json(&["task", "list", "-f", "all"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Unreachable coordinator: one line naming where it tried, and its own exit code (3), apart
    // from a refusal or a failed task (1).
    let out = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", "127.0.0.1:1", "task", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr_of(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("127.0.0.1:1") && err.contains("refused"),
        "{err}"
    );
    // Wrong token.
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "0000").unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "--token-file"])
        .arg(wrong.path())
        .args(["task", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("wrong token"),
        "{}",
        stderr_of(&out)
    );
    // A security property, not a speed: a wrong token is answered only after the fixed delay.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn token_is_found_in_the_default_or_named_data_dir_and_auth_can_be_off() {
    // A coordinator whose data dir is the default one for XDG_DATA_HOME: clients find the token.
    let home = tempfile::tempdir().unwrap();
    let data_dir = home.path().join("tatzelwurm");
    let c = Coordinator::start_with(Db::Mem, &["--data-dir", data_dir.to_str().unwrap()]).unwrap();
    let out = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "summary"])
        .env("XDG_DATA_HOME", home.path())
        .env_remove("TATZELWURM_TOKEN_FILE")
        .env_remove("TATZELWURM_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "summary"])
        .env("XDG_DATA_HOME", elsewhere.path())
        .env_remove("TATZELWURM_TOKEN_FILE")
        .env_remove("TATZELWURM_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        stderr_of(&out).contains("a token is required"),
        "{}",
        stderr_of(&out)
    );

    // A coordinator started with TATZELWURM_DATA_DIR: clients with the same variable find its
    // token, wherever the default data dir is.
    let custom = tempfile::tempdir().unwrap();
    let c =
        Coordinator::start_with(Db::Mem, &["--data-dir", custom.path().to_str().unwrap()]).unwrap();
    let client = |program: &str| {
        let mut cmd = std::process::Command::new(bin(program));
        cmd.args(["--coordinator", &c.addr])
            .env("XDG_DATA_HOME", elsewhere.path())
            .env("TATZELWURM_DATA_DIR", custom.path())
            .env_remove("TATZELWURM_TOKEN_FILE")
            .env_remove("RUST_LOG");
        cmd
    };
    let out = client("actionwurm").arg("summary").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mut worker = client("workwurm")
        .args(["--type", "async", "--name", "found-it"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let joined = wait_for(Duration::from_secs(30), || {
        c.json(&["worker", "list"]).as_array().unwrap().len() == 1
    });
    let _ = worker.kill();
    let _ = worker.wait();
    joined.unwrap_or_else(|_| panic!("the worker never joined:\n{}", c.log_text()));

    // --insecure-no-auth takes any token and says so loudly.
    let open = Coordinator::start_with(Db::Mem, &["--insecure-no-auth"]).unwrap();
    let out = std::process::Command::new(bin("actionwurm"))
        .args([
            "--coordinator",
            &open.addr,
            "--token-file",
            "/dev/null",
            "summary",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(open.log_text().contains("AUTHENTICATION IS OFF"));
}

#[test]
fn addresses_and_tokens_come_from_the_environment_and_v_logs() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let env_cmd = |program: &str| {
        let mut cmd = std::process::Command::new(bin(program));
        cmd.env("TATZELWURM_ADDR", &c.addr)
            .env("TATZELWURM_TOKEN_FILE", c.token_file())
            .env_remove("RUST_LOG");
        cmd
    };
    let mut worker = env_cmd("workwurm")
        .args(["--type", "async"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = env_cmd("actionwurm")
        .args(["-v", "-q", "task", "add", "--play", "--sleep", "10ms"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("connected to the coordinator"),
        "-v logs: {}",
        stderr_of(&out)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = env_cmd("actionwurm")
        .args(["task", "wait", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the worker found the coordinator through the environment"
    );
    let out = env_cmd("actionwurm")
        .args(["task", "list"])
        .output()
        .unwrap();
    assert!(
        stderr_of(&out).is_empty(),
        "no logs without -v: {}",
        stderr_of(&out)
    );
    let _ = worker.kill();
    let _ = worker.wait();
}

/// `task wait` draws a progress bar on a terminal: run it under `script(1)`, which gives it a
/// pseudo-terminal, and look for the bar's counts in what it drew.
#[test]
fn wait_shows_a_progress_bar_on_a_terminal() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", "async"]);
    let ids = c.add(&["--play", "--count", "3", "--sleep", "300ms"]);
    let command = format!(
        "{} --coordinator {} --token-file {} task wait {}",
        bin("actionwurm").display(),
        c.addr,
        c.token_file().display(),
        ids.join(" ")
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .output()
        .expect("script(1) from util-linux");
    let screen = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("0/3"), "the bar's position: {screen}");
    assert!(
        screen.contains("3 tasks ended in") && screen.contains("3 completed"),
        "the counts per state: {screen}"
    );
    // The rate and the time left: `tests/terminal.rs`, where tasks end over seconds.
}

#[test]
fn answers_larger_than_a_frame_come_in_parts_or_as_a_clear_error() {
    // A small frame limit stands in for a table of millions under the default 16 MiB.
    let c = Coordinator::start_with(Db::Mem, &["--lease", "3s", "--max-frame", "2048"]).unwrap();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.extend(c.add(&["--play", "--queue", "big", "--sleep", "0s", "--count", "15"]));
    }
    // The snapshot behind a wait for 300 tasks takes several frames (and the wait asks for them
    // without naming 300 ids in one request): every task is waited on.
    let waiter = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "--token-file"])
        .arg(c.token_file())
        .args(["--json", "task", "wait", "--queue", "big"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _w = c.worker(&["--type", "async"]);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let waited = waited.as_object().unwrap();
    assert_eq!(waited.len(), 300, "every task is in the snapshot");
    for id in &ids {
        assert_eq!(waited[id], "completed", "{id}");
    }
    // The ids a change to every task touched come in parts too.
    let mut waiting = Vec::new();
    for _ in 0..20 {
        waiting.extend(c.add(&["--sleep", "1h", "--count", "15"]));
    }
    let killed = c.json(&["task", "kill", "--all"]);
    let mut killed: Vec<String> = killed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    killed.sort();
    waiting.sort();
    assert_eq!(killed, waiting, "every killed id, once");
    // A list of 600 tasks cannot be split: a clear error, not a hang up.
    let out = c.try_action(&["task", "list", "-f", "all"]).unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("does not fit in a frame") && err.contains("--limit"),
        "{err}"
    );
    let few = c.json(&["task", "list", "-f", "all", "--limit", "5"]);
    assert_eq!(
        few.as_array().unwrap().len(),
        5,
        "a smaller answer still works"
    );
}

#[test]
fn coordinator_refuses_flags_that_cannot_work_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (vec!["--lease", "0s"], "--lease 0s is too short"),
        (
            vec!["--lease", "1s", "--heartbeat", "2s"],
            "must be shorter than --lease 1s",
        ),
        (vec!["--db", "foo://bar"], "not a store URL"),
        (vec!["--forget-lost-after", "soon"], "or `never`"),
        (vec!["--kv-memtable-mib", "2"], "--kv-memtable-mib"),
        (vec!["--kv-cache-mib", "0"], "--kv-cache-mib"),
        (vec!["--threads", "0"], "--threads"),
    ] {
        let out = std::process::Command::new(bin("tatzelwurm"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(&flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains(says),
            "{flags:?}: {}",
            stderr_of(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "{flags:?}: it never listened"
        );
    }
}

/// `actionwurm task list | head -1`: the reader goes away first, and the listing ends quietly
/// (by SIGPIPE, as other tools do), without a panic about a broken pipe on its stderr.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let c = Coordinator::start(Db::Mem).unwrap();
    c.add(&["--sleep", "1h", "--count", "2000"]);
    let mut child = std::process::Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "--token-file"])
        .arg(c.token_file())
        .args(["task", "list", "--filter", "all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(nix::sys::signal::Signal::SIGPIPE as i32),
        "ended by SIGPIPE: {:?}, {}",
        out.status,
        stderr_of(&out)
    );
    assert!(stderr_of(&out).is_empty(), "{}", stderr_of(&out));
}
