//! End-to-end tests of the sandbox broker over gRPC, served in-process with the `local`
//! (bubblewrap) provider. One binary for all of them: linking is the slow part on 2 cores.
//! `tests/broker_e2b` runs the same modules against the `e2b` provider and a fake E2B.

#[path = "../common/mod.rs"]
mod common;

// The provider follows the binary's name (see `common::PROVIDER`).
const _: () = assert!(matches!(common::PROVIDER, common::Provider::Local), "tests/broker runs `local`");

mod files;
mod github;
// The fake GitHub of codehost's tests; this suite uses part of it.
#[allow(dead_code)]
#[path = "../../codehost/tests/support/mod.rs"]
mod github_support;
mod lifecycle;
mod limits;
mod processes;
mod security;
mod template_repo;
mod validation;
