//! The first hour of a new user, with the real binaries: a worker started before its coordinator,
//! clients pointed at something that is not a coordinator, host names and bare numbers in flags,
//! logs written to files, a second coordinator on a data dir in use.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tatzelwurm_tests::{Coordinator, Db, Worker, bin, wait_for};

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server that answers every connection like a web server would, after reading what came.
fn http_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    addr
}

/// A server that accepts connections and never says a word.
fn silent_server() -> (String, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap().to_string(), l)
}

#[test]
fn a_client_pointed_at_a_web_server_says_so() {
    let addr = http_server();
    let out = Command::new(bin("actionwurm"))
        .args(["--coordinator", &addr, "summary"])
        .env("TATZELWURM_DATA_DIR", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a tatzelwurm coordinator (it answered like HTTP)"),
        "{err}"
    );
}

#[test]
fn a_client_and_a_worker_facing_silence_give_up_or_obey_signals() {
    let (addr, _keep) = silent_server();
    let started = Instant::now();
    let out = Command::new(bin("actionwurm"))
        .args([
            "--coordinator",
            &addr,
            "--connect-timeout",
            "300ms",
            "summary",
        ])
        .env("TATZELWURM_DATA_DIR", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no answer from"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A worker waiting on the handshake still hears SIGTERM and leaves (it runs nothing).
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let mut w = Worker::start(&addr, &token, &["--connect-timeout", "1h"]);
    std::thread::sleep(Duration::from_millis(300));
    w.signal("TERM");
    assert_eq!(
        w.wait_exit(Duration::from_secs(5)),
        Some(0),
        "the worker ignored SIGTERM while connecting; log:\n{}",
        w.log_text()
    );
}

#[test]
fn a_worker_started_before_a_new_coordinator_picks_up_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // No token file yet: the coordinator writes it when it first starts.
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let mut worker = Command::new(bin("workwurm"))
        .args(["--coordinator", &addr, "--name", "early"])
        .env("TATZELWURM_DATA_DIR", &data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let c = Coordinator::start_with(
        Db::Mem,
        &[
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            &addr,
            "--lease",
            "3",
        ],
    )
    .unwrap();
    let joined = wait_for(Duration::from_secs(20), || {
        c.json(&["worker", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "early" && w["state"] == "active")
    });
    let alive = worker.try_wait().unwrap().is_none();
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        alive,
        "the worker died: {}",
        std::fs::read_to_string(dir.path().join("worker.log")).unwrap()
    );
    assert!(joined.is_ok(), "the worker never joined");
}

#[test]
fn host_names_bare_ports_and_bare_seconds_are_taken_and_logs_in_files_have_no_colours() {
    let port = free_port();
    // `--listen localhost:PORT` and `--lease 3` (seconds).
    let c = Coordinator::start_with(
        Db::Mem,
        &["--listen", &format!("localhost:{port}"), "--lease", "3"],
    )
    .unwrap();
    let out = Command::new(bin("actionwurm"))
        .args([
            "--coordinator",
            &format!("localhost:{port}"),
            "--token-file",
        ])
        .arg(c.token_file())
        .args(["--json", "summary"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = c.log_text();
    assert!(log.contains("listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
}

#[test]
fn a_second_coordinator_on_a_data_dir_in_use_never_claims_to_listen() {
    let first = Coordinator::start(Db::Kv).unwrap();
    let out = Command::new(bin("tatzelwurm"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&first.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another coordinator is using this data dir")
    );
}
