//! Stu, the conductor (`conductor-svc`): takes requests, reasons with a [`brain::Brain`], runs
//! workers through the sandbox broker, streams their output back and remembers everything in a
//! [`store::Store`]. It never holds a sandbox-provider or code-host credential.

pub mod brain;
pub mod broker_client;
pub mod changes;
pub mod chat;
pub mod config;
pub mod grpc;
mod server;
pub mod store;
pub mod workers;

pub use config::ConductorConfig;
pub use server::{GENERATED_TOKEN_FILE, Ready, run, serve_with_ready};
pub use service_kit::{shutdown_signal, telemetry};
