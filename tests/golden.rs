//! Golden files of what people read where the words are the point: the help of `actionwurm`
//! and of its everyday commands (the choices each flag takes, the defaults, no jargon).
//! `TATZELWURM_UPDATE_GOLDEN=1 cargo test --test golden` writes the files anew; review the diff.

use std::process::Command;

use tatzelwurm_tests::{bin, checkout};

fn golden(name: &str, args: &[&str]) {
    // A clean environment: no TATZELWURM_* variable shows up as a value, and a fixed width.
    let out = Command::new(bin("actionwurm"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("COLUMNS", "100")
        .output()
        .expect("actionwurm runs");
    assert!(out.status.success(), "{args:?}");
    let got = String::from_utf8(out.stdout).expect("UTF-8");
    let path = checkout().join("tests/golden").join(format!("{name}.txt"));
    if std::env::var_os("TATZELWURM_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with TATZELWURM_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        got == want,
        "{} changed (TATZELWURM_UPDATE_GOLDEN=1 rewrites it):\n--- now\n{got}\n--- golden\n{want}",
        path.display()
    );
}

#[test]
fn the_help_texts_read_as_recorded() {
    golden("actionwurm", &["--help"]);
    golden("actionwurm-task", &["task", "--help"]);
    golden("actionwurm-task-add", &["task", "add", "--help"]);
    golden("actionwurm-task-list", &["task", "list", "--help"]);
    golden("actionwurm-task-wait", &["task", "wait", "--help"]);
    golden("actionwurm-queue-set", &["queue", "set", "--help"]);
}
