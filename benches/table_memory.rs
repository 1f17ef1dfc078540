//! How much memory the coordinator's own tables take for a million queued tasks, apart from the
//! store and the network: resident memory before and after building a `Core` from a million
//! ready noop tasks, as the coordinator does at start.
//!
//! `cargo bench --workspace --bench table_memory`

use tatzelwurm_coordinator::core::{Core, CoreConfig};
use tatzelwurm_coordinator::task::Task;
use tatzelwurm_protocol::{Payload, TaskId, TaskInfo, TaskSpec};

const TASKS: usize = 1_000_000;

fn resident_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096.0 / 1e6
}

fn main() {
    let start = resident_mb();
    let tasks: Vec<TaskInfo> = (0..TASKS)
        .map(|_| {
            let spec = TaskSpec::new(Payload::Sleep { duration_ms: 0 });
            Task::new(TaskId::new(), spec, "default".into(), 0, true).info
        })
        .collect();
    let as_vec = resident_mb() - start;
    let core = Core::restore(
        CoreConfig::default(),
        tasks,
        vec![],
        vec![],
        Default::default(),
        0,
    );
    let in_core = resident_mb() - start;
    println!(
        "{TASKS} ready noop tasks: {as_vec:.0} MB as a Vec<TaskInfo> ({} bytes each inline); \
         {in_core:.0} MB in the coordinator's tables",
        std::mem::size_of::<TaskInfo>()
    );
    drop(core);
}
