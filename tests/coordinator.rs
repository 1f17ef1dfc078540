//! The real coordinator with `mem://` and with `surrealkv://` on disk: the task life, a graceful
//! restart that keeps every task with its state, attempts and output, `kill -9` while tasks are
//! being added and run, and peers that reach it through its Unix socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tatzelwurm_tests::{Coordinator, Db, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn life(db: Db) {
    let c = Coordinator::start(db).unwrap();
    let _w = c.worker(&["--type", "async"]);
    let id = c.add(&["--", "sh", "-c", "echo life"]);
    assert_eq!(c.state(&id[0]), "created");
    c.action(&["task", "play", &id[0]]);
    c.wait_state(&id[0], "completed", LONG);
    let t = c.show(&id[0]);
    let times = &t["times"];
    for stage in ["created", "ready", "assigned", "running", "ended"] {
        assert!(times[stage].is_string(), "stage {stage} has no time: {t}");
    }
    assert_eq!(t["attempts"][0]["outcome"], "succeeded");
    assert_eq!(t["attempts"][0]["stdout_tail"], "life\n");
}

#[test]
fn task_life_with_mem_store() {
    life(Db::Mem);
}

#[test]
fn task_life_with_surrealkv_store() {
    life(Db::Kv);
}

#[test]
fn workers_and_the_cli_reach_the_coordinator_through_its_unix_socket() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("tw.sock");
    let path = sock.to_str().unwrap();
    let mut c = Coordinator::start_with(Db::Kv, &["--lease", "3s", "--socket", path]).unwrap();
    c.reach = Some(format!("unix:{path}"));
    let _w = c.worker(&["--type", "async"]);
    let first = c.add(&["--play", "--", "sh", "-c", "echo through the socket"]);
    c.wait_state(&first[0], "completed", LONG);
    assert_eq!(
        c.show(&first[0])["attempts"][0]["stdout_tail"],
        "through the socket\n"
    );
    // The worker was given only the socket; the CLI's connections are logged with their process.
    let log = c.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("actioner connected") && l.contains("peer=unix pid")),
        "the CLI came through the socket; log:\n{log}"
    );

    // Killed, it leaves its socket file; the next start replaces it and the worker comes back.
    c.kill9();
    assert!(sock.exists(), "kill -9 leaves the socket file");
    c.restart().unwrap();
    let second = c.add(&["--play", "--", "sh", "-c", "echo again"]);
    c.wait_state(&second[0], "completed", LONG);

    // A second coordinator may not take the socket of a running one.
    let other = Coordinator::start_with(Db::Mem, &["--socket", path]);
    let err = format!("{:#}", other.err().expect("the socket is in use"));
    assert!(err.contains("is the socket of a running process"), "{err}");
    // TCP still serves beside the socket.
    c.reach = None;
    assert_eq!(c.all_ids().len(), 2);

    assert_eq!(c.terminate(), Some(0));
    assert!(
        !sock.exists(),
        "a coordinator that stops removes its socket file"
    );
}

#[test]
fn a_coordinator_without_a_port_serves_its_socket_alone() {
    let sock_dir = tempfile::tempdir().unwrap();
    let path = sock_dir.path().join("tw.sock");
    let path = path.to_str().unwrap();
    let flags = ["--lease", "3s", "--listen", "none", "--socket", path];
    let c = Coordinator::start_with(Db::Mem, &flags).unwrap();
    assert_eq!(
        c.addr,
        format!("unix:{path}"),
        "its first line names the socket"
    );
    let _w = c.worker(&["--type", "async"]);
    let id = c.add(&["--play", "--", "true"]);
    c.wait_state(&id[0], "completed", LONG);
    let log = c.log_text();
    assert!(!log.contains("listening addr="), "no TCP port; log:\n{log}");
}

/// Everything a restart must keep, without the fields that change by themselves.
fn snapshot(c: &Coordinator) -> Vec<Value> {
    let list = c.json(&["task", "list", "-f", "all"]);
    let mut out: Vec<Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| c.show(t["id"].as_str().unwrap()))
        .collect();
    out.sort_by_key(|t| t["id"].as_str().unwrap().to_string());
    out
}

#[test]
fn a_second_coordinator_on_the_same_data_dir_is_refused_and_the_first_carries_on() {
    let c = Coordinator::start(Db::Kv).unwrap();
    let before = c.add(&["--sleep", "1s"]);
    let dir = c.dir.to_str().unwrap().to_string();
    let second = Coordinator::start_with(Db::Kv, &["--data-dir", &dir]);
    let err = format!("{:#}", second.err().expect("the second one must not start"));
    assert!(
        err.contains("another coordinator is using this data dir"),
        "{err}"
    );
    let after = c.add(&["--sleep", "1s"]);
    let mut ids = c.all_ids();
    ids.sort();
    let mut want = vec![before[0].clone(), after[0].clone()];
    want.sort();
    assert_eq!(ids, want, "the first coordinator still works");
}

#[test]
fn finished_tasks_expire_when_the_coordinator_is_told_to_remove_them() {
    let mut c =
        Coordinator::start_with(Db::Kv, &["--lease", "3s", "--remove-finished-after", "2s"])
            .unwrap();
    let _w = c.worker(&["--type", "async"]);
    let done = c.add(&["--play", "--sleep", "10ms"]);
    let failed = c.add(&["--play", "--", "false"]);
    let waiting = c.add(&["--sleep", "10ms"]);
    c.wait_state(&done[0], "completed", LONG);
    c.wait_state(&failed[0], "failed", LONG);
    // Across a restart too: the expiry is rebuilt from the store.
    c.restart().unwrap();
    wait_for(LONG, || c.all_ids() == waiting).unwrap_or_else(|_| panic!("{:?}", c.all_ids()));
    assert_eq!(c.state(&waiting[0]), "created", "unfinished tasks stay");
}

#[test]
fn graceful_restart_keeps_every_task_with_attempts_and_output() {
    let mut c = Coordinator::start(Db::Kv).unwrap();
    let mut w = c.worker(&["--type", "async"]);
    let done = c.add(&[
        "--play",
        "--name",
        "ok",
        "--tag",
        "k=v",
        "--",
        "sh",
        "-c",
        "echo kept-output; echo err >&2",
    ]);
    let failed = c.add(&["--play", "--attempts", "2", "--", "sh", "-c", "exit 4"]);
    let custom = c.add(&[
        "--play",
        "--custom",
        "echo",
        "--data",
        "{\"a\": [1, 2]}",
        "--user-key",
        "step",
    ]);
    c.action(&["task", "wait", &done[0], &custom[0]]);
    c.wait_state(&failed[0], "failed", LONG);
    let created = c.add(&["--sleep", "1s", "--priority", "-3"]);
    let paused = c.add(&["--sleep", "1s"]);
    c.action(&["task", "pause", &paused[0]]);
    w.signal("TERM");
    assert_eq!(w.wait_exit(LONG), Some(0));

    let before = snapshot(&c);
    assert_eq!(before.len(), 5);
    assert_eq!(c.terminate(), Some(0), "SIGTERM exits 0");
    assert!(c.log_text().contains("stopped"));
    c.restart().unwrap();
    let after = snapshot(&c);
    assert_eq!(
        before, after,
        "every task, state, attempt and output survives a restart"
    );
    assert_eq!(c.state(&created[0]), "created");
    assert_eq!(c.state(&paused[0]), "paused");
    let f = c.show(&failed[0]);
    assert_eq!(f["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(
        c.show(&done[0])["attempts"][0]["stdout_tail"],
        "kept-output\n"
    );
    assert_eq!(c.show(&done[0])["attempts"][0]["stderr_tail"], "err\n");
    // The restarted coordinator keeps working on the same tables.
    let _w2 = c.worker(&["--type", "async"]);
    c.action(&["task", "play", &created[0]]);
    c.wait_state(&created[0], "completed", LONG);
}

#[test]
fn kill9_while_adding_and_running_loses_no_acknowledged_task() {
    kill9_while_adding_and_running(&[]);
}

/// The same with checkpoints as often as the rule allows (whenever the journal is as large as the
/// tables), so that the kill lands before, during or after one.
#[test]
fn kill9_while_checkpointing_loses_no_acknowledged_task() {
    kill9_while_adding_and_running(&["--checkpoint-bytes", "1"]);
}

/// SIGTERM while checkpoints run (one whenever the journal is as large as the tables: pausing
/// and playing every task rewrites them all). Checkpoints run on the blocking pool, beside the
/// runtime: the coordinator must stop one that is under way rather than leave it holding the
/// store, exit 0, and keep every change it acknowledged. On the default runtime of one thread
/// and on one of three.
#[test]
fn sigterm_during_checkpoints_exits_0_and_keeps_every_acknowledged_change() {
    for threads in ["1", "3"] {
        let mut c =
            Coordinator::start_with(Db::Kv, &["--checkpoint-bytes", "1", "--threads", threads])
                .unwrap();
        let mut added = 0;
        for _ in 0..2 {
            added += c
                .add(&["--sleep", "1h", "--play", "--count", "10000"])
                .len();
        }
        let mut rounds = 0;
        while c.log_text().matches("checkpoint written").count() < 3 {
            assert!(rounds < 50, "{threads}: no checkpoints were written");
            c.action(&["task", "pause", "--all"]);
            c.action(&["task", "play", "-a"]);
            rounds += 1;
        }
        // Acknowledged after its commit, which makes the next checkpoint due: the signal lands
        // while that one starts or runs.
        c.action(&["task", "pause", "--all"]);
        tatzelwurm_tests::signal(c.pid(), "TERM");
        assert_eq!(
            c.wait_exit(LONG),
            Some(0),
            "{threads}: SIGTERM during checkpoints exits 0"
        );
        c.restart().unwrap();
        assert_eq!(
            c.json(&["summary"])["counts"]["paused"].as_u64(),
            Some(added as u64),
            "{threads}: every task is there, paused, after the restart"
        );
    }
}

/// A small write buffer (surrealkv's memtable), so that checkpoints fill it again and again (the
/// journal is in files of its own; every round changes every task, which makes a checkpoint of
/// the whole table due): the write that did not fit is the one surrealkv 0.21.4 lost at a crash
/// after the older buffer's flush (the patch in third_party/), and a lost bucket write after the
/// journal it folded was deleted loses tasks. Every acknowledged change must be there after the
/// kill. The buffer is 4 MiB (checkpoint transactions are a quarter of it): three fills take a
/// quarter of the writes that 16 MiB took, and the same path.
#[test]
fn kill9_after_the_store_filled_its_write_buffer_loses_no_acknowledged_task() {
    let mut c = Coordinator::start_with(
        Db::Kv,
        &[
            "--kv-memtable-mib",
            "4",
            "--max-frame",
            "2097152",
            "--checkpoint-bytes",
            "1",
        ],
    )
    .unwrap();
    let mut added = 0;
    let mut rounds = 0;
    while c.log_text().matches("WAL rotated").count() < 3 {
        assert!(rounds < 40, "the write buffer never filled three times");
        let ids = c.action(&[
            "-q", "task", "add", "--sleep", "1h", "--play", "--count", "10000",
        ]);
        added += ids.lines().count();
        c.action(&["task", "pause", "--all"]);
        c.action(&["task", "play", "-a"]);
        rounds += 1;
    }
    assert!(
        c.log_text().contains("checkpoint written"),
        "{}",
        c.log_text()
    );
    c.kill9();
    c.restart().unwrap();
    let counts = c.json(&["summary"])["counts"].clone();
    assert_eq!(
        counts["ready"].as_u64(),
        Some(added as u64),
        "every acknowledged task and change is there after kill -9: {counts}"
    );
}

/// A task larger than the write buffer: its journal record once made surrealkv refuse it (and
/// the coordinator refused a buffer smaller than twice the largest frame); the patched store
/// gives it a buffer of its own. It must be accepted and be there whole after a `kill -9` right
/// after it (read back from the store's log into a buffer of its size at the next open), and
/// again after more writes and another `kill -9`.
#[test]
fn a_task_larger_than_the_write_buffer_is_kept_through_kill9() {
    let mut c = Coordinator::start_with(Db::Kv, &["--kv-memtable-mib", "4"]).unwrap();
    let mut added = c.add(&["--count", "100", "--sleep", "1h"]).len();
    let dir = tempfile::tempdir().unwrap();
    let big_arg = "x".repeat(6 << 20);
    let file = dir.path().join("big.txt");
    std::fs::write(&file, format!("echo {big_arg}\n")).unwrap();
    let big = c.add(&["--from-file", file.to_str().unwrap()]);
    assert_eq!(big.len(), 1);
    added += 1;
    for round in 0..2 {
        c.kill9();
        c.restart().unwrap();
        let shown = c.show(&big[0]);
        let argv = shown["payload"]["argv"]
            .as_array()
            .expect("a command's argv");
        assert!(
            argv.iter()
                .any(|a| a.as_str().is_some_and(|a| a.ends_with(&big_arg))),
            "round {round}: the large task's command line is whole"
        );
        assert_eq!(
            c.json(&["summary"])["counts"]["created"].as_u64(),
            Some(added as u64),
            "round {round}: and the writes around it are there"
        );
        added += c.add(&["--count", "100", "--sleep", "1h"]).len();
    }
}

fn kill9_while_adding_and_running(extra: &[&str]) {
    let mut flags = vec!["--lease", "10s"];
    flags.extend_from_slice(extra);
    let mut c = Coordinator::start_with(Db::Kv, &flags).unwrap();
    let _w = c.worker(&["--type", "async", "--slots", "8"]);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Long tasks that are running when the coordinator dies.
    let script = format!("echo $TATZELWURM_TASK_ID >> {}; sleep 2", runs.display());
    let running = c.add(&["--play", "--count", "3", "--", "sh", "-c", &script]);
    for id in &running {
        c.wait_state(id, "running", LONG);
    }
    let finished = c.add(&["--play", "--sleep", "10ms"]);
    c.wait_state(&finished[0], "completed", LONG);

    // Add tasks from a client as fast as acknowledgements come, and kill -9 in the middle.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let adder = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let addr = c.addr.clone();
        let token = c.token_file();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = std::process::Command::new(tatzelwurm_tests::bin("actionwurm"))
                    .args(["--coordinator", &addr, "--token-file"])
                    .arg(&token)
                    .args(["--json", "task", "add", "--sleep", "1h", "--count", "5"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    let added: Vec<serde_json::Value> =
                        serde_json::from_slice(&out.stdout).unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .extend(added.iter().map(|t| t["id"].as_str().unwrap().to_string()));
                }
            }
        })
    };
    wait_for(LONG, || acked.lock().unwrap().len() >= 50).unwrap();
    if !extra.is_empty() {
        assert!(
            c.log_text().contains("checkpoint written"),
            "checkpoints ran before the kill"
        );
    }
    c.kill9();
    stop.store(true, Ordering::SeqCst);
    adder.join().unwrap();
    c.restart().unwrap();

    let all = c.all_ids();
    let acked = acked.lock().unwrap().clone();
    let missing: Vec<&String> = acked.iter().filter(|id| !all.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged adds lost: {missing:?}",
        missing.len()
    );
    assert_eq!(
        c.state(&finished[0]),
        "completed",
        "finished results are kept"
    );
    for id in &running {
        c.wait_state(id, "completed", LONG);
        assert_eq!(
            c.show(id)["attempts"].as_array().unwrap().len(),
            1,
            "reattached, not rerun"
        );
    }
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        lines.lines().count(),
        3,
        "each running task ran exactly once: {lines}"
    );
}

/// Appends `tail` to the newest write-ahead log segment of a stopped coordinator's store, as a
/// write cut short (a full disk, a crash between two write calls) leaves it.
fn tear_the_log(c: &Coordinator, tail: &[u8]) {
    let wal = c.dir.join("store/wal");
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .expect("a WAL segment");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut f, tail).unwrap();
}

/// Found by `tatzelwurm-chaos` (a full disk had torn the last record of surrealkv's write-ahead
/// log). A torn tail that surrealkv's reader sees as damage is repaired at the next start, by a
/// new file in the old one's place, but its writer still held the old file, so every write after
/// the repair went to an unlinked file; a torn tail that the reader takes for the end of the log
/// stays, new records are appended after it, and the start after that stops reading at it. Both
/// lost everything written in between, acknowledged adds included. Each kind of tail is made here
/// by hand.
#[test]
fn writes_after_a_torn_write_ahead_log_survive_the_next_crash() {
    for tail in [[0xab_u8; 100], [0_u8; 100]] {
        let mut c = Coordinator::start(Db::Kv).unwrap();
        let before = c.add(&["--sleep", "1s"]);
        c.kill9();
        tear_the_log(&c, &tail);
        c.restart().unwrap();
        let after = c.add(&["--sleep", "1s", "--count", "3"]);
        c.kill9();
        c.restart().unwrap();
        let ids = c.all_ids();
        for id in before.iter().chain(&after) {
            assert!(
                ids.contains(id),
                "tail {:#x}: acknowledged task {id} lost; log:\n{}",
                tail[0],
                c.log_text()
            );
        }
    }
}

#[test]
fn with_interval_sync_a_kill9_loses_nothing_acknowledged() {
    // Commits reach the operating system at once and the disk every 10 s: a crash of the
    // coordinator alone (not of the machine) must lose nothing it acknowledged meanwhile.
    let mut c = Coordinator::start_with(Db::Kv, &["--lease", "3s", "--sync", "10s"]).unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(c.add(&["--sleep", "1s", "--count", "20"]));
    }
    let played = c.add(&["--sleep", "1s", "--play"]);
    c.restart().unwrap();
    assert!(
        c.log_text()
            .contains("background syncing on interval (10000ms)"),
        "the store did not take the sync mode"
    );
    ids.extend(played.iter().cloned());
    ids.sort();
    assert_eq!(c.all_ids(), ids);
    assert_eq!(c.state(&played[0]), "ready");
}

/// The coordinator runs on jemalloc with the settings compiled into it (`main.rs`): the
/// background threads that return freed memory exist only when jemalloc read them, so a renamed
/// symbol or a lost feature shows here rather than as a higher peak in a benchmark.
#[test]
fn the_coordinator_returns_freed_memory_from_jemalloc_background_threads() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", c.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|name| name.trim() == "jemalloc_bg_thd")
            .count()
    };
    wait_for(LONG, || threads() > 0).unwrap();
    assert!(
        threads() <= 2,
        "max_background_threads:2 holds: {}",
        threads()
    );
}
