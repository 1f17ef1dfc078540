//! What people see in a real terminal: `task list`, `task show` and `task wait` run in an
//! 80-column tmux pane, captured as the screen shows them.

use std::process::Command;
use std::time::Duration;

use tatzelwurm_tests::{Coordinator, Db, bin, wait_for};

const LONG: Duration = Duration::from_secs(30);

/// A detached tmux session of 80 columns running one shell command; killed on drop.
struct Pane {
    name: String,
}

impl Pane {
    fn run(name: &str, shell: &str) -> Pane {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "80",
                "-y",
                "40",
                shell,
            ])
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux runs (apt install tmux)");
        assert!(ok.success(), "tmux new-session failed");
        Pane {
            name: name.to_string(),
        }
    }

    /// The screen, lines joined where the terminal wrapped them (`-J`), so that a line longer
    /// than the pane shows as one long line.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-J", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

fn actionwurm(c: &Coordinator, args: &str) -> String {
    format!(
        "{} --coordinator {} --token-file {} {args}",
        bin("actionwurm").display(),
        c.addr,
        c.token_file().display()
    )
}

fn fits(screen: &str) {
    for line in screen.lines() {
        assert!(
            line.trim_end().chars().count() <= 80,
            "a line wider than the terminal:\n{line}\n\n{screen}"
        );
    }
}

#[test]
fn list_show_and_wait_fit_an_80_column_terminal_and_wait_shows_rate_and_eta() {
    let c = Coordinator::start(Db::Mem).unwrap();
    let _w = c.worker(&["--slots", "2", "--name", "term"]);
    let long = "a-task-name-far-longer-than-any-column-of-an-eighty-column-terminal-can-hold";
    c.action(&[
        "task", "add", "--play", "--count", "8", "--name", long, "--tag", "t=1", "--sleep", "700ms",
    ]);
    let id = format!("term-{}", std::process::id());

    // `task wait` while they run: the bar, the rate over the last seconds and the time left.
    let wait = Pane::run(
        &format!("{id}-wait"),
        &format!("{}; sleep 60", actionwurm(&c, "task wait --tag t=1")),
    );
    let during = wait_for(LONG, || wait.screen().contains("/s, about")).map(|_| wait.screen());
    let during = during.unwrap_or_else(|_| panic!("no rate shown:\n{}", wait.screen()));
    assert!(during.contains("/8"), "{during}");
    fits(&during);
    wait_for(LONG, || wait.screen().contains("ended in"))
        .unwrap_or_else(|_| panic!("the wait did not end:\n{}", wait.screen()));
    let after = wait.screen();
    assert!(after.contains("8 tasks ended in"), "{after}");
    fits(&after);

    // `task list` and `task show` at 80 columns: long values are cut, never wrapped.
    let list = Pane::run(
        &format!("{id}-list"),
        &format!("{}; sleep 60", actionwurm(&c, "task list --filter all")),
    );
    wait_for(LONG, || list.screen().contains("8 tasks")).unwrap();
    let screen = list.screen();
    assert!(screen.contains("completed"), "{screen}");
    fits(&screen);
    let show = Pane::run(
        &format!("{id}-show"),
        &format!("{}; sleep 60", actionwurm(&c, "task show 1")),
    );
    wait_for(LONG, || show.screen().contains("attempt 1")).unwrap();
    let screen = show.screen();
    assert!(screen.contains("succeeded"), "{screen}");
    fits(&screen);
}
