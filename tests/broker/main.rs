//! End-to-end tests of the sandbox broker over gRPC, served in-process with the `local`
//! (bubblewrap) provider. One binary for all of them: linking is the slow part on 2 cores.

#[path = "../common/mod.rs"]
mod common;

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
