//! The coordinator with its tables in a real SurrealDB server over `ws://`: credentials,
//! namespace and database are honoured, a coordinator restart finds every task, and a server
//! that vanishes mid-run costs no acknowledged change.
//!
//! These tests need a SurrealDB server binary (`TATZELWURM_SURREAL_BIN`). Building one is a long
//! SurrealDB build of its own, so they are `#[ignore]`d for a plain `cargo test`; `scripts/test`
//! builds the server from `tools/surreal-server` and runs them with `--include-ignored`.

use std::time::Duration;

use tatzelwurm_tests::{Coordinator, Db, SurrealServer, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn coordinator(server: &SurrealServer, ns: &str, db: &str, extra: &[&str]) -> Coordinator {
    let mut flags = server.flags(ns, db);
    flags.extend(["--lease", "3s"].iter().map(|s| s.to_string()));
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Coordinator::start_with(Db::Mem, &flags).unwrap()
}

#[test]
#[ignore = "needs a SurrealDB server: scripts/test builds one and runs this"]
fn ws_store_keeps_every_task_across_restarts_in_its_own_namespace_and_database() {
    let server = SurrealServer::start().unwrap();
    let mut c = coordinator(&server, "team_a", "queue", &[]);
    assert!(
        c.log_text().contains("store open") && c.log_text().contains(&server.url()),
        "the log names the remote store: {}",
        c.log_text()
    );
    let w = c.worker(&["--type", "async"]);
    let done = c.add(&[
        "--play",
        "--name",
        "remote",
        "--",
        "sh",
        "-c",
        "echo remote-out",
    ]);
    c.wait_state(&done[0], "completed", LONG);
    let waiting = c.add(&["--sleep", "1s", "--tag", "k=v"]);
    drop(w);

    let before: Vec<_> = [&done[0], &waiting[0]].map(|id| c.show(id)).to_vec();
    c.kill9();
    c.restart().unwrap();
    let after: Vec<_> = [&done[0], &waiting[0]].map(|id| c.show(id)).to_vec();
    assert_eq!(before, after, "the server kept every task whole");
    assert_eq!(after[0]["attempts"][0]["stdout_tail"], "remote-out\n");
    assert_eq!(c.state(&waiting[0]), "created");

    // Another namespace, or another database in the same namespace, is another queue.
    let other_ns = coordinator(&server, "team_b", "queue", &[]);
    assert!(
        other_ns.all_ids().is_empty(),
        "team_b sees nothing of team_a"
    );
    let other_db = coordinator(&server, "team_a", "other", &[]);
    assert!(other_db.all_ids().is_empty(), "database `other` is empty");
    let mut expected = vec![done[0].clone(), waiting[0].clone()];
    expected.sort();
    assert_eq!(c.all_ids(), expected);
}

#[test]
#[ignore = "needs a SurrealDB server: scripts/test builds one and runs this"]
fn ws_store_with_a_wrong_password_refuses_to_start_and_says_why() {
    let server = SurrealServer::start().unwrap();
    let mut flags = server.flags("ns", "db");
    let pass = flags.iter().position(|f| f == "--db-pass").unwrap() + 1;
    flags[pass] = "not-the-password".into();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let err = Coordinator::start_with(Db::Mem, &flags)
        .err()
        .expect("a coordinator that cannot log in must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("cannot open store {}", server.url())),
        "the error names the store: {text}"
    );
    assert!(
        text.contains("authentication"),
        "the error says the login failed: {text}"
    );
}

#[test]
#[ignore = "needs a SurrealDB server: scripts/test builds one and runs this"]
fn ws_store_server_that_vanishes_and_returns_loses_no_acknowledged_task() {
    let mut server = SurrealServer::start().unwrap();
    let mut c = coordinator(&server, "ns", "db", &["--db-timeout", "2s"]);
    let _w = c.worker(&["--type", "async"]);
    let mut acknowledged = c.add(&["--play", "--count", "3", "--", "true"]);
    for id in &acknowledged {
        c.wait_state(id, "completed", LONG);
    }

    server.kill9();
    let refused = c
        .try_action(&["task", "add", "--play", "--", "true"])
        .unwrap();
    assert!(
        !refused.status.success(),
        "an add the store cannot take is not acknowledged"
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("store"), "the refusal names the store: {why}");

    server.restart().unwrap();
    // The SDK reconnects and the coordinator retries; adds are accepted again.
    let mut again = Vec::new();
    wait_for(LONG, || {
        let out = c
            .try_action(&["--json", "task", "add", "--play", "--", "true"])
            .unwrap();
        if out.status.success() {
            let added: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            again.extend(added.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        }
        out.status.success()
    })
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", c.log_text()));
    c.wait_state(&again[0], "completed", LONG);
    acknowledged.append(&mut again);

    c.kill9();
    c.restart().unwrap();
    let found = c.all_ids();
    for id in &acknowledged {
        assert!(found.contains(id), "acknowledged task {id} was lost");
        assert_eq!(c.state(id), "completed");
    }
}

#[test]
#[ignore = "needs a SurrealDB server: scripts/test builds one and runs this"]
fn ws_store_opened_by_a_second_coordinator_stops_the_first() {
    let server = SurrealServer::start().unwrap();
    let mut first = coordinator(&server, "ns", "db", &[]);
    let kept = first.add(&["--sleep", "1s"]);
    let second = coordinator(&server, "ns", "db", &[]);
    assert_eq!(
        second.all_ids(),
        kept,
        "the second finds what the first wrote"
    );
    // The first learns at its next write that it no longer owns the store, refuses the change
    // and stops, rather than writing over the second's journal.
    let refused = first.try_action(&["task", "add", "--sleep", "1s"]).unwrap();
    assert!(!refused.status.success(), "the first acknowledged a change");
    assert_eq!(
        first.wait_exit(LONG),
        Some(1),
        "the first stops with an error"
    );
    assert!(
        first
            .log_text()
            .contains("another coordinator took over this store"),
        "{}",
        first.log_text()
    );
    assert!(second.log_text().contains("took the store over"));
    let added = second.add(&["--sleep", "1s"]);
    let mut all = kept.clone();
    all.extend(added);
    all.sort();
    assert_eq!(second.all_ids(), all, "the second goes on");
}
