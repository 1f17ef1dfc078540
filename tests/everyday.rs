//! What a person types every day, with the real binaries: adds that warn when nobody can run
//! them, play-all that leaves created tasks alone, removing tasks that wait, refused options,
//! scoped waits with their exit codes, and a wait that outlives a coordinator restart.

use std::process::{Command, Stdio};
use std::time::Duration;

use tatzelwurm_tests::{Coordinator, Db, bin, wait_for};

const LONG: Duration = Duration::from_secs(30);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_add_that_no_connected_worker_can_run_says_so_and_show_says_why() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", "sync", "--slots", "2", "--name", "s"]);
    wait_for(LONG, || {
        !c.json(&["worker", "list"]).as_array().unwrap().is_empty()
    })
    .unwrap();
    // async by default, and nobody serves `render` or gpu=yes.
    let out = c
        .try_action(&["-q", "task", "add", "--play", "--", "true"])
        .unwrap();
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("warning: no connected worker takes async tasks"),
        "{err}"
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        c.show(&id)["waiting"],
        "no connected worker takes async tasks"
    );
    let out = c
        .try_action(&[
            "task", "add", "--play", "--block", "sync", "--custom", "render",
        ])
        .unwrap();
    assert!(
        stderr(&out).contains("sync tasks with handler render"),
        "{}",
        stderr(&out)
    );
    // Work the worker takes: no warning.
    let out = c
        .try_action(&[
            "task", "add", "--play", "--block", "sync", "--sleep", "10ms",
        ])
        .unwrap();
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn play_all_wakes_paused_tasks_and_leaves_created_ones_unless_asked() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let created = c.add(&["--sleep", "1h"]);
    let played = c.add(&["--play", "--sleep", "1h"]);
    c.action(&["task", "pause", "-a"]);
    assert_eq!(
        c.state(&created[0]),
        "paused",
        "pause -a takes created ones too"
    );
    let kept = c.add(&["--sleep", "1h"]);
    let out = c.try_action(&["task", "play", "-a"]).unwrap();
    assert!(out.status.success());
    assert_eq!(c.state(&played[0]), "ready");
    assert_eq!(
        c.state(&created[0]),
        "ready",
        "it was paused: play wakes it"
    );
    assert_eq!(
        c.state(&kept[0]),
        "created",
        "never played: play -a leaves it"
    );
    let out = c.try_action(&["task", "play", "-a"]).unwrap();
    assert!(
        stderr(&out)
            .contains("1 created task never played; `task play -a --created` plays them too"),
        "{}",
        stderr(&out)
    );
    c.action(&["task", "play", "-a", "--created"]);
    assert_eq!(c.state(&kept[0]), "ready");
}

#[test]
fn tasks_that_wait_can_be_removed_and_running_ones_must_be_killed_first() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let created = c.add(&["--sleep", "1h"]);
    let ready = c.add(&["--play", "--sleep", "1h", "--block", "sync"]);
    let paused = c.add(&["--sleep", "1h"]);
    c.action(&["task", "pause", &paused[0]]);
    for id in [&created[0], &ready[0], &paused[0]] {
        c.action(&["task", "remove", id]);
    }
    assert!(c.all_ids().is_empty());
    let _w = c.worker(&["--slots", "1"]);
    let running = c.add(&["--play", "--sleep", "1h"]);
    c.wait_state(&running[0], "running", LONG);
    let out = c.try_action(&["task", "remove", &running[0]]).unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("kill it first"), "{}", stderr(&out));
}

#[test]
fn options_that_would_be_ignored_or_changed_are_refused() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "true\n").unwrap();
    for (args, says) in [
        (
            vec![
                "task",
                "add",
                "--count",
                "3",
                "--from-file",
                &file.path().display().to_string(),
            ],
            "cannot be used with",
        ),
        (
            vec!["task", "add", "--user-data", "[1,2]", "--", "true"],
            "give a JSON object",
        ),
        (vec!["task", "add", "--wait", "--", "true"], "--play"),
        (vec!["task", "add", "--attempts", "0", "--", "true"], "0"),
    ] {
        let out = c.try_action(&args).unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(c.all_ids().is_empty(), "nothing was added");
}

#[test]
fn waits_take_what_can_still_end_and_their_exit_codes_tell_failure_from_a_lost_coordinator() {
    let mut c = Coordinator::start(Db::Kv).unwrap();
    let _w = c.worker(&["--slots", "4"]);
    // Last week's failure and a task nobody played.
    let old = c.add(&["--play", "--", "false"]);
    c.wait_state(&old[0], "failed", LONG);
    c.add(&["--sleep", "1h"]);
    // `add --wait` waits for what it added.
    let out = c
        .try_action(&[
            "task", "add", "--play", "--wait", "--sleep", "100ms", "--count", "2",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = c
        .try_action(&["task", "add", "--play", "--wait", "--", "false"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // `wait -a` neither hangs on the created task nor fails for the old failures.
    c.add(&["--play", "--sleep", "200ms"]);
    let out = c.try_action(&["task", "wait", "-a"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Scoped by tag and by queue.
    c.add(&["--play", "--tag", "run=1", "--", "false"]);
    c.add(&["--play", "--queue", "q2", "--sleep", "100ms"]);
    let out = c.try_action(&["task", "wait", "--queue", "q2"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A wait outlives a coordinator restart.
    let long = c.add(&["--play", "--sleep", "2s"]);
    c.wait_state(&long[0], "running", LONG);
    let waiter = Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "--token-file"])
        .arg(c.token_file())
        .args(["task", "wait", &long[0]])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.restart().unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lost the coordinator"),
        "{}",
        stderr(&out)
    );
    // One that does not come back: exit 3, not 1.
    let more = c.add(&["--play", "--sleep", "1h"]);
    let waiter = Command::new(bin("actionwurm"))
        .args(["--coordinator", &c.addr, "--token-file"])
        .arg(c.token_file())
        .args(["task", "wait", "--reconnect-for", "1s", &more[0]])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.kill9();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn bulk_commands_take_a_scope_by_tag_state_queue_and_name() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let one = c.add(&["--tag", "run=1", "--sleep", "1h", "--count", "2"]);
    let two = c.add(&["--tag", "run=2", "--sleep", "1h"]);
    let night = c.add(&["--queue", "night", "--name", "n", "--sleep", "1h"]);
    let killed = c.json(&["task", "kill", "--tag", "run=1"]);
    assert_eq!(killed.as_array().unwrap().len(), 2);
    for id in &one {
        assert_eq!(c.state(id), "killed");
    }
    assert_eq!(c.state(&two[0]), "created");
    let paused = c.json(&["task", "pause", "--queue", "night"]);
    assert_eq!(paused, serde_json::json!([night[0]]));
    // Filters combine: paused tasks named n; then only the killed ones go.
    let played = c.json(&["task", "play", "--state", "paused", "--name", "n"]);
    assert_eq!(played, serde_json::json!([night[0]]));
    let removed = c.json(&["task", "remove", "--state", "killed"]);
    assert_eq!(removed.as_array().unwrap().len(), 2);
    assert_eq!(c.all_ids().len(), 2);
    // Ids and filters do not mix.
    let out = c
        .try_action(&["task", "kill", &two[0], "--tag", "run=2"])
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_drained_worker_finishes_what_it_runs_takes_nothing_new_and_can_resume() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--slots", "4", "--name", "box"]);
    wait_for(LONG, || {
        !c.json(&["worker", "list"]).as_array().unwrap().is_empty()
    })
    .unwrap();
    let running = c.add(&["--play", "--sleep", "500ms"]);
    c.wait_state(&running[0], "running", LONG);
    let shown = c.json(&["worker", "show", "box"]);
    assert_eq!(shown["tasks"], serde_json::json!([running[0]]));
    let drained = c.json(&["worker", "drain", "box"]);
    assert_eq!(drained["state"], "draining");
    let waits = c.add(&["--play", "--sleep", "10ms"]);
    c.wait_state(&running[0], "completed", LONG);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.state(&waits[0]),
        "ready",
        "a drained worker took a new task"
    );
    assert_eq!(
        c.json(&["worker", "list"])[0]["state"],
        "draining",
        "it stays connected"
    );
    let id = shown["id"].as_str().unwrap().to_string();
    c.action(&["worker", "resume", &id]);
    c.wait_state(&waits[0], "completed", LONG);
    let out = c.try_action(&["worker", "drain", "nobody"]).unwrap();
    assert!(
        stderr(&out).contains("no worker \"nobody\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_config_file_gives_the_defaults_flags_win_and_completions_print() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "coordinator = \"{}\"\ntoken_file = \"{}\"\nnamespace = \"cfg-ns\"\n",
            c.addr,
            c.token_file().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(bin("actionwurm"))
            .args(args)
            .env("TATZELWURM_CONFIG", &cfg)
            .env_remove("TATZELWURM_ADDR")
            .env_remove("TATZELWURM_TOKEN_FILE")
            .env_remove("TATZELWURM_NAMESPACE")
            .output()
            .unwrap()
    };
    // The file's namespace: a queue set there is not in the default namespace.
    let out = run(&["queue", "set", "mine", "--limit", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(c.json(&["queue", "list"]).as_array().unwrap().is_empty());
    let out = run(&["--json", "queue", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "mine");
    // A flag wins over the file.
    let out = run(&["--coordinator", "127.0.0.1:1", "summary"]);
    assert_eq!(out.status.code(), Some(3));
    // A bad file is named.
    std::fs::write(&cfg, "coordinatr = 1\n").unwrap();
    let out = run(&["summary"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config.toml"), "{}", stderr(&out));
    std::fs::remove_file(&cfg).unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("actionwurm") && script.contains("queue"),
            "{shell}"
        );
    }
}

#[test]
fn output_reads_well_quoting_names_choices_and_plurals() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--slots", "2", "--name", "box"]);
    let id = c.add(&["--play", "--shell", "echo a && echo 'b c'"]);
    c.wait_state(&id[0], "completed", LONG);
    assert_eq!(c.show(&id[0])["attempts"][0]["stdout_tail"], "a\nb c\n");
    let list = c.action(&["task", "list", "-f", "all"]);
    assert!(list.contains("sh -c 'echo a && echo"), "{list}");
    assert!(list.contains("box"), "the worker that ran it: {list}");
    assert!(list.contains("1 task: "), "{list}");
    let shown = c.action(&["task", "show", &id[0]]);
    assert!(shown.contains(", ran "), "{shown}");
    let none = c.action(&["summary", "--by-tag", "nothing"]);
    assert!(none.contains("no task has a tag nothing="), "{none}");
    let help = c.action(&["task", "add", "--help"]);
    assert!(help.contains("[possible values: sync, async]"), "{help}");
    for (binary, name) in [
        ("workwurm", "workwurm "),
        ("tatzelwurm", "tatzelwurm "),
        ("actionwurm", "actionwurm "),
    ] {
        let out = Command::new(bin(binary)).arg("--version").output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(name),
            "{binary}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The children of a process, by `pgrep -P`.
fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_pool_of_workers_restarts_one_that_dies_and_drains_on_sigterm() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let mut pool = c.worker(&["--processes", "2", "--name", "pool", "--slots", "2"]);
    let active = |c: &Coordinator| {
        let mut names: Vec<String> = c
            .json(&["worker", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "active")
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    wait_for(LONG, || active(&c) == ["pool-1", "pool-2"]).unwrap();
    let members = children(pool.pid());
    assert_eq!(members.len(), 2, "{members:?}");
    tatzelwurm_tests::signal(members[0], "KILL");
    // Restarted: two members again, one of them a new process.
    wait_for(LONG, || {
        let now = children(pool.pid());
        now.len() == 2 && !now.contains(&members[0])
    })
    .unwrap();
    wait_for(LONG, || active(&c).len() == 2).unwrap();
    // A task runs on the pool, then SIGTERM drains every member and the pool exits 0.
    let id = c.add(&["--play", "--sleep", "300ms"]);
    c.wait_state(&id[0], "running", LONG);
    pool.signal("TERM");
    assert_eq!(pool.wait_exit(LONG), Some(0), "{}", pool.log_text());
    assert_eq!(c.state(&id[0]), "completed", "the drain let it finish");
}

#[test]
fn tables_fit_the_screen_and_cut_the_long_columns() {
    let c = Coordinator::start(Db::Mem).unwrap();
    c.add(&[
        "--name",
        "a-rather-long-name-for-a-task",
        "--tag",
        "project=a-very-long-project-name",
        "--",
        "echo",
        "an argument long enough to overflow any reasonable terminal all by itself",
    ]);
    let list = |cols: Option<&str>| {
        let mut cmd = Command::new(bin("actionwurm"));
        cmd.args(["--coordinator", &c.addr, "--token-file"])
            .arg(c.token_file())
            .args(["task", "list", "-f", "all"]);
        match cols {
            Some(n) => cmd.env("COLUMNS", n),
            None => cmd.env_remove("COLUMNS"),
        };
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    let narrow = list(Some("80"));
    for line in narrow.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    assert!(narrow.contains('…'), "{narrow}");
    assert!(narrow.ends_with('\n'));
    // Into a pipe without COLUMNS, nothing is cut.
    assert!(list(None).contains("overflow any reasonable terminal"));
}

#[test]
fn task_log_prints_what_an_attempt_wrote_and_show_says_how_much_was_kept() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--slots", "2"]);
    let id = c.add(&[
        "--play",
        "--attempts",
        "2",
        "--shell",
        "echo out-$TATZELWURM_ATTEMPT; echo err >&2; [ $TATZELWURM_ATTEMPT = 2 ]",
    ]);
    c.wait_state(&id[0], "completed", LONG);
    assert_eq!(c.action(&["task", "log", &id[0]]), "out-2\n");
    assert_eq!(
        c.action(&["task", "log", &id[0], "--attempt", "1"]),
        "out-1\n"
    );
    assert_eq!(c.action(&["task", "log", &id[0], "--stderr"]), "err\n");
    let out = c
        .try_action(&["task", "log", &id[0], "--attempt", "3"])
        .unwrap();
    assert!(
        stderr(&out).contains("has no attempt 3"),
        "{}",
        stderr(&out)
    );
    let shown = c.action(&["task", "show", &id[0]]);
    assert!(shown.contains("--- stdout (all of it) ---"), "{shown}");
    // A command that writes more than is kept: show says that the start is gone.
    let big = c.add(&["--play", "--shell", "head -c 200000 /dev/zero | tr '\\0' x"]);
    c.wait_state(&big[0], "completed", LONG);
    let shown = c.action(&["task", "show", &big[0]]);
    assert!(
        shown.contains("its last 64 KiB; what came before is not kept"),
        "{}",
        &shown[..300.min(shown.len())]
    );
    assert_eq!(c.action(&["task", "log", &big[0]]).len(), 64 * 1024);
}

#[test]
fn tasks_have_numbers_people_can_type_kept_across_restarts_with_ranges_and_batches() {
    let mut c = Coordinator::start(Db::Kv).unwrap();
    let out = c.json(&["task", "add", "--sleep", "1h", "--count", "3"]);
    let first: Vec<u64> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["number"].as_u64().unwrap())
        .collect();
    assert_eq!(first, [1, 2, 3]);
    let batch = out[0]["batch"].as_u64().unwrap();
    let second = c.json(&["task", "add", "--sleep", "1h"]);
    assert_eq!(second[0]["number"], 4);
    assert_ne!(second[0]["batch"].as_u64().unwrap(), batch);
    assert_eq!(c.show("2")["id"], out[1]["id"]);
    assert_eq!(c.show("#4")["id"], second[0]["id"]);
    // A range, and a batch, as selectors.
    let killed = c.json(&["task", "kill", "2-3"]);
    assert_eq!(killed.as_array().unwrap().len(), 2);
    let paused = c.json(&["task", "pause", "--batch", &batch.to_string()]);
    assert_eq!(paused, serde_json::json!([out[0]["id"]]));
    let out2 = c.try_action(&["task", "show", "99"]).unwrap();
    assert!(
        stderr(&out2).contains("no task number 99"),
        "{}",
        stderr(&out2)
    );
    // Numbers stay across a restart, and new ones follow them.
    c.action(&["task", "remove", "2"]);
    c.restart().unwrap();
    assert_eq!(c.show("1")["id"], out[0]["id"]);
    let third = c.json(&["task", "add", "--sleep", "1h"]);
    assert_eq!(third[0]["number"], 5);
    let listed = c.action(&["task", "list", "-f", "all"]);
    assert!(listed.contains("│ 5 "), "{listed}");
}

/// `actionwurm task follow ARGS` started in the background; its stdout and stderr are gathered.
struct Follower {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// The threads that gather them, done once the pipes close.
    gatherers: Vec<std::thread::JoinHandle<()>>,
}

impl Follower {
    fn start(c: &Coordinator, id: &str) -> Follower {
        let mut child = Command::new(bin("actionwurm"))
            .args(["--coordinator", &c.addr, "--token-file"])
            .arg(c.token_file())
            .args(["task", "follow", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut gatherers = Vec::new();
        let mut gather = |mut r: Box<dyn std::io::Read + Send>| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let b = buf.clone();
            gatherers.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }));
            buf
        };
        let out = gather(Box::new(child.stdout.take().unwrap()));
        let err = gather(Box::new(child.stderr.take().unwrap()));
        Follower {
            child,
            out,
            err,
            gatherers,
        }
    }

    /// Waits for it to exit and for the last of its output to be gathered.
    fn finish(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        for g in self.gatherers.drain(..) {
            g.join().unwrap();
        }
        status
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn wait_stdout(&self, want: &str) {
        let ok = wait_for(LONG, || self.stdout() == want);
        assert!(
            ok.is_ok(),
            "stdout {:?}, not {want:?}; stderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }
}

#[test]
fn task_follow_streams_a_running_command_through_a_coordinator_restart_on_both_kinds_of_worker() {
    for block in ["async", "sync"] {
        let mut c = Coordinator::start(Db::Kv).unwrap();
        let _w = c.worker(&["--type", block]);
        let gates = tempfile::tempdir().unwrap();
        let gate = |n: u32| gates.path().join(format!("gate{n}"));
        let script = format!(
            "echo one; until [ -e {g1} ]; do sleep 0.05; done; echo two >&2; echo three; \
             until [ -e {g2} ]; do sleep 0.05; done; echo four; exit 3",
            g1 = gate(1).display(),
            g2 = gate(2).display()
        );
        let id = c.add(&["--play", "--block", block, "--shell", &script]);
        let f = Follower::start(&c, "1");
        // "one" arrives while the command still waits at its first gate: it is streamed.
        f.wait_stdout("one\n");
        assert_eq!(c.state(&id[0]), "running");
        if block == "async" {
            // The follower waits the restart out; the worker's tails, sent again after it
            // reattached, are not printed twice.
            c.restart().unwrap();
            let ok = wait_for(LONG, || f.stderr().contains("lost the coordinator"));
            assert!(ok.is_ok(), "{}", f.stderr());
        }
        std::fs::write(gate(1), "").unwrap();
        f.wait_stdout("one\nthree\n");
        std::fs::write(gate(2), "").unwrap();
        let mut f = f;
        let status = f.finish();
        assert_eq!(f.stdout(), "one\nthree\nfour\n");
        let err = f.stderr();
        assert_eq!(status.code(), Some(1), "the task failed: {err}");
        assert_eq!(err.matches("two\n").count(), 1, "{err}");
        assert!(err.contains("task 1 failed (exit code 3)"), "{err}");
        // Followed after its end: the output as kept, and the same exit code.
        let out = c.try_action(&["task", "follow", "1"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "one\nthree\nfour\n");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("has ended (failed)"),
            "{}",
            stderr(&out)
        );
    }
}
