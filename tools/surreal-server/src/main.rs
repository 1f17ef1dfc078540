//! The stock SurrealDB server with its community parts, built from the `surrealdb-server` crate
//! so that the tests of the `ws://` store have a real server to talk to on loopback.

use std::process::ExitCode;

fn main() -> ExitCode {
    surrealdb_server::init(surrealdb_server::core::CommunityComposer())
}
