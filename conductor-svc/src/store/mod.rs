//! Durable state (conversations, messages, workers, memories, capabilities, audit log) over
//! SQLite (a file in the data dir, the default) or PostgreSQL (`postgres://…`, shared by replicas).

pub mod model;

pub use model::*;
