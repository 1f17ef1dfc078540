//! Named queues with the real binaries: a limit held across workers and a restart, pause and
//! play, hard and soft affinity, and the queue commands' output.

use std::time::Duration;

use serde_json::Value;
use tatzelwurm_tests::{Coordinator, Db, max_overlap, wait_for};

const LONG: Duration = Duration::from_secs(30);

/// Waits until every listed task is completed.
fn wait_completed(c: &Coordinator, ids: &[String]) {
    for id in ids {
        c.wait_state(id, "completed", LONG);
    }
}

/// The start and end of every attempt of the tasks.
fn intervals(c: &Coordinator, ids: &[String]) -> Vec<(String, String)> {
    ids.iter()
        .flat_map(|id| {
            let t = c.show(id);
            t["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["started"].as_str().unwrap().to_string(),
                        a["ended"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The worker name of each task's last attempt.
fn ran_on(c: &Coordinator, id: &str) -> String {
    let t = c.show(id);
    t["attempts"].as_array().unwrap().last().unwrap()["worker_name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn queue(c: &Coordinator, name: &str) -> Value {
    c.json(&["queue", "show", name])
}

#[test]
fn a_queue_limit_holds_across_workers_and_survives_a_restart() {
    let mut c = Coordinator::start(Db::Kv).unwrap();
    let set = queue(&c, "sims");
    assert_eq!(set["limit"], Value::Null, "a new queue has no limit");
    c.action(&["queue", "set", "sims", "--limit", "2", "--weight", "3"]);
    let _a = c.worker(&["--slots", "4", "--name", "a"]);
    let _b = c.worker(&["--slots", "4", "--name", "b"]);
    let ids = c.add(&[
        "--queue", "sims", "--count", "6", "--play", "--", "sleep", "0.3",
    ]);
    wait_completed(&c, &ids);
    let overlap = max_overlap(&intervals(&c, &ids));
    assert!(
        overlap <= 2,
        "{overlap} ran at once with 8 free slots and a limit of 2"
    );
    let before = queue(&c, "sims");
    assert_eq!(before["counts"]["completed"], 6);
    assert!(before["finished_last_minute"].as_u64().unwrap() >= 6);
    // The settings and the counts come back after a restart.
    c.restart().unwrap();
    let after = queue(&c, "sims");
    for key in ["limit", "weight", "priority", "paused", "counts"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(
        (after["limit"].as_u64(), after["weight"].as_u64()),
        (Some(2), Some(3))
    );
    // `queue set --limit none` removes it.
    c.action(&["queue", "set", "sims", "--limit", "none"]);
    assert_eq!(queue(&c, "sims")["limit"], Value::Null);
}

#[test]
fn a_paused_queue_keeps_its_tasks_waiting_and_play_releases_them() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--slots", "8"]);
    c.action(&["queue", "pause", "night"]);
    let held = c.add(&[
        "--queue", "night", "--play", "--count", "2", "--sleep", "10ms",
    ]);
    let other = c.add(&["--play", "--sleep", "10ms"]);
    wait_completed(&c, &other);
    for id in &held {
        assert_eq!(c.state(id), "ready", "the paused queue dispatched {id}");
    }
    let why = c.action(&["task", "show", &held[0]]);
    assert!(why.contains("queue night is paused"), "{why}");
    assert_eq!(
        c.show(&held[0])["waiting"],
        "queue night is paused (`queue play night`)"
    );
    let listed = c.json(&["queue", "list"]);
    let night = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "night")
        .expect("listed");
    assert_eq!(
        (night["paused"].as_bool(), night["counts"]["ready"].as_u64()),
        (Some(true), Some(2))
    );
    c.action(&["queue", "play", "night"]);
    wait_completed(&c, &held);
    // `task list --queue` shows the queue's tasks only, with their queue.
    let tasks = c.json(&["task", "list", "-f", "all", "--queue", "night"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t["queue"] == "night"));
    let table = c.action(&["queue", "list"]);
    assert!(
        table.contains("night") && table.contains("2 completed"),
        "{table}"
    );
}

#[test]
fn hard_affinity_routes_by_worker_tags_and_soft_affinity_prefers_them() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _gpu = c.worker(&["--slots", "4", "--name", "gpu", "--tag", "gpu=yes"]);
    let _cpu = c.worker(&["--slots", "4", "--name", "cpu", "--tag", "gpu=no"]);
    wait_for(LONG, || {
        c.json(&["worker", "list"]).as_array().unwrap().len() == 2
    })
    .unwrap();
    let hard = c.add(&[
        "--require",
        "gpu=yes",
        "--count",
        "6",
        "--play",
        "--sleep",
        "20ms",
    ]);
    wait_completed(&c, &hard);
    for id in &hard {
        assert_eq!(ran_on(&c, id), "gpu", "{id}");
    }
    let soft = c.add(&["--prefer", "gpu=no", "--play", "--sleep", "10ms"]);
    wait_completed(&c, &soft);
    assert_eq!(ran_on(&c, &soft[0]), "cpu");
    // A requirement no connected worker meets: the task waits and says why.
    let never = c.add(&["--require", "gpu=maybe", "--play", "--sleep", "10ms"]);
    let shown = c.show(&never[0]);
    assert_eq!(shown["state"], "ready");
    assert_eq!(
        shown["waiting"],
        "no connected worker takes async tasks with tags gpu=maybe"
    );
    assert_eq!(shown["require"], serde_json::json!(["gpu=maybe"]));
}

#[test]
fn bad_queue_commands_are_refused_with_a_clear_message() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let out = c
        .try_action(&["queue", "set", "q", "--weight", "0"])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weight"), "{err}");
    let out = c.try_action(&["queue", "set", "q"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("say what changes"));
    let out = c
        .try_action(&["queue", "set", "q", "--limit", "0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("or none"));
    let out = c
        .try_action(&["task", "add", "--queue", "", "--sleep", "1s"])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue"));
    // Moving a task that does not exist names it.
    let out = c
        .try_action(&["task", "move", "--to", "x", "abcdef"])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task with id abcdef"));
}
