//! How much memory the coordinator's own tables take for a million queued tasks, apart from the
//! store and the network: resident memory before and after building a `Core` from a million
//! ready noop tasks' records, as the coordinator does at start (each record decoded once, the
//! task packed again with it: the records are what the table keeps).
//!
//! `cargo bench --workspace --bench table_memory`

use tatzelwurm_coordinator::core::{Core, CoreConfig};
use tatzelwurm_coordinator::store::{Record, decode_record, encode_task};
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
    let records: Vec<Record> = (1..=TASKS as u64)
        .map(|n| {
            let spec = TaskSpec::new(Payload::Sleep { duration_ms: 0 });
            let mut info = Task::new(TaskId::new(), spec, "default".into(), 0, true).info;
            info.number = n;
            info.batch = 1;
            encode_task(&info)
        })
        .collect();
    let as_records = resident_mb() - start;
    let core = Core::restore(
        CoreConfig::default(),
        records
            .iter()
            .map(|r| (decode_record(r).expect("just encoded"), r.clone())),
        vec![],
        vec![],
        Default::default(),
        0,
    );
    drop(records);
    let in_core = resident_mb() - start;
    println!(
        "{TASKS} ready noop tasks: {as_records:.0} MB as their records; {in_core:.0} MB in the \
         coordinator's tables with the records ({} packed; a decoded task is {} bytes inline)",
        core.packed_tasks(),
        std::mem::size_of::<TaskInfo>()
    );
    drop(core);
}
