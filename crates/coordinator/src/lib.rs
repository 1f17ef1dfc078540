//! The tatzelwurm coordinator: the queue and the broker between actioners and workers.
//!
//! [`core`] owns the tables and applies every input synchronously; [`scheduler`] and [`task`] are
//! its plain-code parts. [`server`] is the network edge and [`store`] the SurrealDB edge; neither
//! is seen by the others.

pub mod auth;
pub mod config;
pub mod core;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod task;

pub use config::Config;
pub use server::{Listeners, run};
