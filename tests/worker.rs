//! The real `workwurm` with the real coordinator: task kinds on both worker types, slot limits,
//! concurrency, kill, timeout, pause/resume, reconnect without re-running, and draining.

use std::time::Duration;

use serde_json::Value;
use tatzelwurm_tests::{Coordinator, Db, max_overlap, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn attempt_intervals(c: &Coordinator, ids: &[String]) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| {
            let a = &c.show(id)["attempts"][0];
            (
                a["started"].as_str().unwrap().to_string(),
                a["ended"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Kills a task and waits until its first attempt is recorded killed.
fn kill_and_wait(c: &Coordinator, id: &str) {
    c.action(&["task", "kill", id]);
    wait_for(LONG, || c.show(id)["attempts"][0]["outcome"] == "killed").unwrap();
    assert_eq!(c.state(id), "killed");
}

fn wait_all(c: &Coordinator, ids: &[String]) -> std::process::Output {
    let mut args = vec!["task", "wait"];
    args.extend(ids.iter().map(String::as_str));
    c.try_action(&args).unwrap()
}

#[test]
fn both_worker_types_run_exec_sleep_and_custom_tasks() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _sync = c.worker(&["--type", "sync", "--slots", "2"]);
    let _async = c.worker(&["--type", "async", "--slots", "50"]);
    for block in ["sync", "async"] {
        let exec = c.add(&[
            "--play",
            "--block",
            block,
            "--",
            "sh",
            "-c",
            "echo from-$0",
            block,
        ]);
        let sleep = c.add(&["--play", "--block", block, "--sleep", "50ms"]);
        let custom = c.add(&[
            "--play",
            "--block",
            block,
            "--custom",
            "echo",
            "--data",
            "{\"n\": 42}",
        ]);
        let failing = c.add(&[
            "--play",
            "--block",
            block,
            "--custom",
            "fail",
            "--data",
            "\"no luck\"",
        ]);
        let out = wait_all(
            &c,
            &[
                exec[0].clone(),
                sleep[0].clone(),
                custom[0].clone(),
                failing[0].clone(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "the failing one fails");
        let e = c.show(&exec[0]);
        assert_eq!(e["state"], "completed");
        assert_eq!(e["attempts"][0]["stdout_tail"], format!("from-{block}\n"));
        assert_eq!(e["attempts"][0]["exit_code"], 0);
        assert_eq!(c.state(&sleep[0]), "completed");
        let cu = c.show(&custom[0]);
        assert_eq!(cu["state"], "completed");
        assert_eq!(cu["attempts"][0]["output"], serde_json::json!({"n": 42}));
        assert_eq!(
            cu["user_data"],
            serde_json::json!({"n": 42}),
            "the handler updated the user data"
        );
        let f = c.show(&failing[0]);
        assert_eq!(f["state"], "failed");
        assert_eq!(f["attempts"][0]["error"], "no luck");
        // Each ran on a worker of its own type.
        let workers = c.json(&["worker", "list"]);
        let worker_id = e["attempts"][0]["worker"].as_str().unwrap().to_string();
        let w = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == worker_id.as_str())
            .unwrap();
        assert_eq!(w["block"], block);
    }
}

#[test]
fn exec_failures_are_reported_with_their_reason() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", "async"]);
    let missing = c.add(&["--play", "--", "/no/such/binary-tatzelwurm"]);
    let bad_dir = c.add(&["--play", "--cwd", "/no/such/dir", "--", "true"]);
    let code = c.add(&[
        "--play",
        "--attempts",
        "2",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ]);
    wait_all(
        &c,
        &[missing[0].clone(), bad_dir[0].clone(), code[0].clone()],
    );
    let m = c.show(&missing[0]);
    assert_eq!(m["state"], "failed");
    assert!(
        m["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot start"),
        "{m}"
    );
    let d = c.show(&bad_dir[0]);
    assert!(
        d["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("/no/such/dir"),
        "{d}"
    );
    let k = c.show(&code[0]);
    assert_eq!(k["state"], "failed");
    assert_eq!(
        k["attempts"].as_array().unwrap().len(),
        2,
        "retried once, every attempt kept"
    );
    for a in k["attempts"].as_array().unwrap() {
        assert_eq!(a["exit_code"], 7);
        assert_eq!(a["stderr_tail"], "oops\n");
    }
}

#[test]
fn a_failed_task_retried_runs_again_and_keeps_its_first_attempt() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", "async"]);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("second-time");
    // Fails the first time, succeeds once the flag exists.
    let script = format!(
        "if [ -e {0} ]; then echo fine; else touch {0}; exit 5; fi",
        flag.display()
    );
    let t = c.add(&["--play", "--", "sh", "-c", &script]);
    wait_all(&c, &t);
    assert_eq!(c.state(&t[0]), "failed");
    let refused = c
        .try_action(&["task", "retry", "--attempts", "0", &t[0]])
        .unwrap();
    assert!(!refused.status.success(), "zero attempts is a bad flag");

    let out = c.action(&["task", "retry", "-a"]);
    assert_eq!(out.trim(), t[0], "the ids retried");
    wait_all(&c, &t);
    let task = c.show(&t[0]);
    assert_eq!(task["state"], "completed", "{task}");
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task}");
    assert_eq!(attempts[0]["exit_code"], 5);
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_eq!(attempts[1]["stdout_tail"], "fine\n");
    let text = c.action(&["task", "show", &t[0]]);
    assert_eq!(
        text.matches("exit code 5").count(),
        1,
        "said once, on its attempt: {text}"
    );

    // A completed task is not retried; the error names it and its state.
    let out = c.try_action(&["task", "retry", &t[0]]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&t[0]) && err.contains("completed"),
        "{err}"
    );
}

#[test]
fn sync_worker_never_runs_more_than_its_slots() {
    two_at_a_time(&[]);
}

#[test]
fn a_prefetching_sync_worker_still_runs_no_more_than_its_slots() {
    // The held ones start as slots free, after the others.
    two_at_a_time(&["--prefetch", "2"]);
}

/// Six short tasks on a sync worker of two slots (and `extra` flags) run exactly two at a time.
fn two_at_a_time(extra: &[&str]) {
    let c = Coordinator::start(Db::Mem).unwrap();
    let mut args = vec!["--type", "sync", "--slots", "2"];
    args.extend_from_slice(extra);
    let _w = c.worker(&args);
    let ids = c.add(&[
        "--play", "--block", "sync", "--count", "6", "--sleep", "300ms",
    ]);
    assert!(wait_all(&c, &ids).status.success());
    let overlap = max_overlap(&attempt_intervals(&c, &ids));
    assert_eq!(overlap, 2, "two slots: exactly two at a time");
}

/// Tasks held beyond a worker's slots (`--prefetch`) wait there without running, can be killed,
/// paused and resumed before they start, start as the slot frees, and move to another worker
/// that has a free slot.
#[test]
fn held_tasks_wait_can_be_killed_and_paused_and_move_to_a_free_worker() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _a = c.worker(&["--slots", "1", "--prefetch", "3", "--name", "a"]);
    let dir = tempfile::tempdir().unwrap();
    let ran = |name: &str| dir.path().join(name);
    let touch = |name: &str| format!("touch {}", ran(name).display());
    let long = c.add(&["--play", "--", "sleep", "60"]);
    c.wait_state(&long[0], "running", LONG);
    let killed = c.add(&["--play", "--", "sh", "-c", &touch("killed")]);
    let moved = c.add(&["--play", "--", "sh", "-c", &touch("moved")]);
    let after = c.add(&["--play", "--", "sh", "-c", &touch("after")]);
    for id in [&killed[0], &moved[0], &after[0]] {
        c.wait_state(id, "assigned", LONG);
    }
    std::thread::sleep(Duration::from_millis(500));
    for id in [&killed[0], &moved[0], &after[0]] {
        assert_eq!(c.state(id), "assigned", "held, not started");
    }
    assert_eq!(
        c.json(&["worker", "list"])[0]["running"],
        4,
        "it holds four"
    );

    // Killed before it started: it never runs.
    kill_and_wait(&c, &killed[0]);

    // Paused and resumed while held: back to assigned, still held.
    c.action(&["task", "pause", &after[0]]);
    assert_eq!(c.state(&after[0]), "paused");
    c.action(&["task", "play", &after[0]]);
    assert_eq!(c.state(&after[0]), "assigned");

    // A worker with a free slot comes: a held task goes there (given back by a, uncounted).
    let _b = c.worker(&["--slots", "1", "--name", "b"]);
    c.wait_state(&moved[0], "completed", LONG);
    c.wait_state(&after[0], "completed", LONG);
    assert!(ran("moved").exists() && ran("after").exists());
    assert!(!ran("killed").exists(), "a held task killed never ran");
    for id in [&moved[0], &after[0]] {
        let attempts = c.show(id)["attempts"].as_array().unwrap().clone();
        let last = attempts.last().unwrap();
        assert_eq!(last["worker_name"], "b", "{attempts:?}");
        assert_eq!(last["outcome"], "succeeded");
        assert!(
            attempts[..attempts.len() - 1]
                .iter()
                .all(|a| a["outcome"] == "handed_back" && a["worker_name"] == "a"),
            "{attempts:?}"
        );
    }
    assert_eq!(
        c.state(&long[0]),
        "running",
        "a's slot still runs its long task"
    );
}

#[test]
fn async_worker_runs_hundreds_of_sleep_tasks_at_once() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", "async", "--slots", "400"]);
    let ids = c.add(&["--play", "--count", "300", "--sleep", "3s"]);
    assert!(wait_all(&c, &ids).status.success());
    let overlap = max_overlap(&attempt_intervals(&c, &ids));
    assert!(overlap >= 250, "only {overlap} ran at once");
}

#[test]
fn kill_timeout_and_pause_resume_of_exec_tasks_on_an_async_worker() {
    kill_timeout_and_pause_resume("async");
}

#[test]
fn kill_timeout_and_pause_resume_of_exec_tasks_on_a_sync_worker() {
    kill_timeout_and_pause_resume("sync");
}

/// Output tails, kill (the whole group, SIGKILL after the grace), timeout, pause and resume of commands that a
/// worker of type `block` started (by a vfork-style clone, `workwurm --spawn clone`).
fn kill_timeout_and_pause_resume(block: &str) {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--type", block, "--kill-grace", "1s"]);
    // Played at once, for this worker's type.
    let add = |args: &[&str]| {
        let mut all = vec!["--play", "--block", block];
        all.extend_from_slice(args);
        c.add(&all)
    };
    let dir = tempfile::tempdir().unwrap();

    // Output tails, each stream on its own.
    let both = add(&["--", "sh", "-c", "echo out; echo err >&2"]);
    c.wait_state(&both[0], "completed", LONG);
    let a = &c.show(&both[0])["attempts"][0];
    assert_eq!(
        (&a["stdout_tail"], &a["stderr_tail"]),
        (&"out\n".into(), &"err\n".into())
    );

    // Kill: the whole process group goes.
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 60", pidfile.display());
    let killed = add(&["--", "sh", "-c", &script]);
    c.wait_state(&killed[0], "running", LONG);
    wait_for(LONG, || {
        pidfile.exists() && !std::fs::read_to_string(&pidfile).unwrap().is_empty()
    })
    .unwrap();
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        c.json(&["worker", "list"])[0]["running"],
        1,
        "worker list counts what the worker holds"
    );
    kill_and_wait(&c, &killed[0]);
    wait_for(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .unwrap();

    // A command that ignores SIGTERM gets SIGKILL when the kill grace (1 s) ends.
    let stubborn = add(&["--", "sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"]);
    c.wait_state(&stubborn[0], "running", LONG);
    std::thread::sleep(Duration::from_millis(200));
    c.action(&["task", "kill", &stubborn[0]]);
    wait_for(Duration::from_secs(20), || {
        c.show(&stubborn[0])["attempts"][0]["outcome"] == "killed"
    })
    .unwrap();
    assert!(
        c.show(&stubborn[0])["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("killed")
    );

    // Timeout: the attempt fails as timed out.
    let slow = add(&["--timeout", "300ms", "--", "sleep", "60"]);
    c.wait_state(&slow[0], "failed", LONG);
    let a = &c.show(&slow[0])["attempts"][0];
    assert_eq!(a["outcome"], "timed_out");
    assert!(a["error"].as_str().unwrap().contains("timed out"));

    // Pause and resume: SIGSTOP freezes the output, SIGCONT lets it finish.
    let counter = dir.path().join("count");
    let script = format!(
        "for i in $(seq 1 20); do echo $i >> {}; sleep 0.1; done",
        counter.display()
    );
    let task = add(&["--", "sh", "-c", &script]);
    wait_for(LONG, || {
        counter.exists() && std::fs::read_to_string(&counter).unwrap().lines().count() >= 2
    })
    .unwrap();
    c.action(&["task", "pause", &task[0]]);
    assert_eq!(c.state(&task[0]), "paused");
    std::thread::sleep(Duration::from_millis(300));
    let frozen = std::fs::read_to_string(&counter).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        frozen,
        "a paused task makes no progress"
    );
    assert!(frozen < 20);
    c.action(&["task", "play", &task[0]]);
    assert_eq!(c.state(&task[0]), "running");
    c.wait_state(&task[0], "completed", LONG);
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        20
    );
    assert_eq!(c.show(&task[0])["attempts"].as_array().unwrap().len(), 1);
}

#[test]
fn worker_keeps_running_through_a_coordinator_restart_and_delivers_results_once() {
    let mut c = Coordinator::start_with(Db::Kv, &["--lease", "10s"]).unwrap();
    let _w = c.worker(&["--type", "async"]);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let long = format!("echo long >> {}; sleep 2; echo done", runs.display());
    let short = format!("echo short >> {}; sleep 0.3; echo quick", runs.display());
    let long_id = c.add(&["--play", "--", "sh", "-c", &long]);
    let short_id = c.add(&["--play", "--", "sh", "-c", &short]);
    c.wait_state(&long_id[0], "running", LONG);
    c.wait_state(&short_id[0], "running", LONG);
    c.kill9();
    // The short task ends while the coordinator is down; its result waits in the worker.
    std::thread::sleep(Duration::from_millis(800));
    c.restart().unwrap();
    c.wait_state(&short_id[0], "completed", LONG);
    c.wait_state(&long_id[0], "completed", LONG);
    for (id, out) in [(&long_id[0], "done\n"), (&short_id[0], "quick\n")] {
        let t = c.show(id);
        assert_eq!(
            t["attempts"].as_array().unwrap().len(),
            1,
            "not run twice: {t}"
        );
        assert_eq!(t["attempts"][0]["stdout_tail"], out);
    }
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(lines.lines().count(), 2, "each command ran once: {lines}");
}

/// A task held beyond the slots when the coordinator dies stays the worker's: it is claimed at
/// the reattach, started once the slot frees, and runs once.
#[test]
fn a_held_task_survives_a_coordinator_restart_and_runs_once() {
    let mut c = Coordinator::start_with(Db::Kv, &["--lease", "10s"]).unwrap();
    let _w = c.worker(&["--slots", "1", "--prefetch", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let first = format!("echo first >> {}; sleep 1.5", runs.display());
    let held = format!("echo held >> {}", runs.display());
    let first_id = c.add(&["--play", "--", "sh", "-c", &first]);
    c.wait_state(&first_id[0], "running", LONG);
    let held_id = c.add(&["--play", "--", "sh", "-c", &held]);
    c.wait_state(&held_id[0], "assigned", LONG);
    c.kill9();
    std::thread::sleep(Duration::from_millis(300));
    c.restart().unwrap();
    c.wait_state(&held_id[0], "completed", LONG);
    assert_eq!(c.state(&first_id[0]), "completed");
    let t = c.show(&held_id[0]);
    assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "{t}");
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(lines, "first\nheld\n", "each ran once, the held one after");
}

/// A finished task's report waits for others to share its write (`--report-linger`) only while
/// a held task can take the freed slot: once the last held one has started, the reports go at
/// once. Here the linger is an hour and heartbeats are minutes apart, so nothing else would
/// carry the last reports to the coordinator.
#[test]
fn reports_go_at_once_when_no_held_task_is_left_to_start() {
    let c = Coordinator::start_with(Db::Mem, &["--lease", "10m", "--heartbeat", "5m"]).unwrap();
    let _w = c.worker(&["--slots", "1", "--prefetch", "2", "--report-linger", "1h"]);
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let wait_for_go = format!("until [ -e {} ]; do sleep 0.02; done", go.display());
    let first = c.add(&["--play", "--", "sh", "-c", &wait_for_go]);
    c.wait_state(&first[0], "running", LONG);
    let held = c.add(&["--play", "--count", "2", "--", "true"]);
    for id in &held {
        c.wait_state(id, "assigned", LONG);
    }
    std::fs::write(&go, b"").unwrap();
    for id in first.iter().chain(&held) {
        c.wait_state(id, "completed", LONG);
    }
}

/// A draining worker gives back what it holds beyond its slots at once, and finishes what runs.
#[test]
fn a_draining_worker_gives_back_its_held_tasks_at_once() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let mut w = c.worker(&["--slots", "1", "--prefetch", "2", "--drain-grace", "60s"]);
    let running = c.add(&["--play", "--sleep", "1500ms"]);
    c.wait_state(&running[0], "running", LONG);
    let held = c.add(&["--play", "--count", "2", "--sleep", "1ms"]);
    for id in &held {
        c.wait_state(id, "assigned", LONG);
    }
    w.signal("TERM");
    for id in &held {
        wait_for(LONG, || {
            c.show(id)["attempts"][0]["outcome"] == "handed_back"
        })
        .unwrap();
        assert_eq!(
            c.state(id),
            "ready",
            "back in the queue while the other still runs"
        );
    }
    assert_eq!(c.state(&running[0]), "running");
    assert_eq!(w.wait_exit(LONG), Some(0), "{}", w.log_text());
    assert_eq!(c.state(&running[0]), "completed");
}

#[test]
fn sigterm_drains_and_a_second_signal_hands_back() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let mut w = c.worker(&["--type", "async", "--kill-grace", "500ms"]);
    let t = c.add(&["--play", "--sleep", "700ms"]);
    c.wait_state(&t[0], "running", LONG);
    w.signal("TERM");
    assert_eq!(
        w.wait_exit(LONG),
        Some(0),
        "drained and exited 0: {}",
        w.log_text()
    );
    assert_eq!(c.state(&t[0]), "completed", "the running task finished");
    // It left on purpose with nothing to report: it is gone from the table, not `lost`.
    wait_for(LONG, || {
        c.json(&["worker", "list"]).as_array().unwrap().is_empty()
    })
    .unwrap_or_else(|_| panic!("{}", c.json(&["worker", "list"])));

    let mut w = c.worker(&["--type", "async", "--kill-grace", "500ms"]);
    let t = c.add(&["--play", "--", "sleep", "60"]);
    c.wait_state(&t[0], "running", LONG);
    w.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    w.signal("TERM");
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
    let task: Value = c.show(&t[0]);
    assert_eq!(task["state"], "ready", "handed back to the queue: {task}");
    assert_eq!(task["attempts"][0]["outcome"], "handed_back");
}

#[test]
fn a_worker_without_its_coordinator_retries_and_warns_ever_more_rarely() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "unused").unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("worker.log");
    let mut child = std::process::Command::new(tatzelwurm_tests::bin("workwurm"))
        .args([
            "--coordinator",
            &format!("127.0.0.1:{port}"),
            "--token-file",
        ])
        .arg(&token)
        .args(["--type", "async"])
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let attempts = |text: &str| {
        text.lines()
            .filter(|l| l.contains("cannot connect"))
            .count()
    };
    let waited = wait_for(LONG, || {
        attempts(&std::fs::read_to_string(&log).unwrap_or_default()) >= 6
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    waited.unwrap_or_else(|_| panic!("it stopped retrying:\n{text}"));
    let failures = attempts(&text);
    let warnings = text
        .lines()
        .filter(|l| l.contains("cannot connect") && l.contains("WARN"))
        .count();
    // The 1st, 2nd, 4th, 8th… failure warns; the rest are debug lines.
    let expected = (1..=failures).filter(|n| n.is_power_of_two()).count();
    assert_eq!(warnings, expected, "{failures} failures:\n{text}");
    assert!(warnings < failures);
}
