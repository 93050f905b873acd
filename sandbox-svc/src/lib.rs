//! The sandbox broker (`sandbox-svc`): the only component that holds sandbox-provider and
//! code-host credentials. It creates sandboxes, runs processes in them, spools and streams
//! their output (masked, durable by seq) and serves `agentstudio.sandbox.v1.SandboxService`.
//!
//! Used as a binary (`sandbox-svc`), in-process by `studio up`, and by the tests, all through
//! [`serve`].

pub mod broker;
pub mod config;
pub mod grpc;
pub mod provider;
pub mod redact;
mod server;
pub mod spool;
pub mod template;
pub mod template_repo;
pub mod workspace_path;

pub use config::BrokerConfig;
pub use server::{GENERATED_TOKEN_FILE, Ready, run, serve, serve_with_ready};
pub use service_kit::{secret, shutdown_signal, telemetry};
