//! `actionwurm`, the command line of tatzelwurm, and [`client::Client`], the async Rust client it
//! is built on (usable by any Rust program that drives the queue).

pub mod cli;
pub mod client;
pub mod config;
pub mod output;
pub mod spec;

pub use client::{Client, ClientError};
