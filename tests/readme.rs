//! README's "Using it" examples, run as written and in order against a real coordinator: every
//! line must succeed, except the RPC to an identifier nobody holds (which must say so) and
//! `listen`, which streams until it is stopped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tatzelwurm_tests::{Coordinator, Db, bin_dir, checkout, wait_for};

/// The lines of the first `sh` block after `## Using it`, without their comments.
fn examples() -> Vec<String> {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = &readme[readme.find("## Using it").expect("a Using it section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an sh block");
    block
        .lines()
        // A comment starts after at least two spaces.
        .map(|l| l.split("  #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn shell(c: &Coordinator, dir: &Path, line: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", line])
        .current_dir(dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("TATZELWURM_ADDR", &c.addr)
        .env("TATZELWURM_TOKEN_FILE", c.token_file())
        .env("COLUMNS", "100");
    cmd
}

#[test]
fn the_readme_examples_run_as_written() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let simulate = dir.path().join("simulate");
    std::fs::write(&simulate, "#!/bin/sh\necho \"simulating $*\"\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&simulate)
        .status()
        .unwrap();
    std::fs::write(
        dir.path().join("tasks.txt"),
        "echo one\n{\"command\": [\"echo\", \"two\"], \"tags\": [\"project=apollo\"]}\n",
    )
    .unwrap();
    let mut background = Vec::new();
    let mut ran = 0;
    for line in examples() {
        if line == "tatzelwurm" || line.starts_with("tatzelwurm ") {
            continue; // the test's coordinator stands in for it
        }
        if line.starts_with("workwurm") {
            let child = shell(&c, dir.path(), &format!("exec {line}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            background.push(child);
            let n = background.len() as u64;
            wait_for(Duration::from_secs(30), || {
                c.json(&["summary"])["workers_connected"].as_u64() == Some(n)
            })
            .unwrap();
            continue;
        }
        if line.contains(" listen ") {
            let mut child = shell(&c, dir.path(), &format!("exec {line}"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            assert!(
                child.try_wait().unwrap().is_none(),
                "listen streams until stopped: {line}"
            );
            child.kill().unwrap();
            child.wait().unwrap();
            ran += 1;
            continue;
        }
        let out = shell(&c, dir.path(), &line).output().unwrap();
        let text = format!(
            "{line}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if line.contains(" rpc 42 ") {
            assert!(
                !out.status.success() && text.contains("42"),
                "an RPC nobody holds fails and says so:\n{text}"
            );
        } else {
            assert!(out.status.success(), "{text}");
        }
        ran += 1;
    }
    assert!(ran >= 30, "only {ran} examples ran");
    for mut b in background {
        let _ = b.kill();
        let _ = b.wait();
    }
}
