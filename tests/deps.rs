//! The worker and the actioner must stay quick to build: surrealdb (about 25 minutes from cold)
//! must not be in their dependency trees.

use std::process::Command;

fn tree(package: &str) -> String {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(tatzelwurm_tests::checkout())
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn worker_and_actioner_do_not_depend_on_surrealdb() {
    for package in [
        "tatzelwurm-worker",
        "tatzelwurm-actioner",
        "tatzelwurm-protocol",
    ] {
        let t = tree(package);
        assert!(
            t.contains("tokio"),
            "{package}: the tree was not listed: {t}"
        );
        assert!(!t.contains("surreal"), "{package} pulls in surrealdb:\n{t}");
    }
    assert!(
        tree("tatzelwurm-coordinator").contains("surrealdb"),
        "the check itself must be able to see surrealdb"
    );
}
