//! The broker's end-to-end suite (`tests/broker`) run again with the `e2b` provider, against
//! `fake_e2b` served in-process (a faithful E2B control plane and envd that runs commands as
//! local processes; a sandbox's `/` is a temporary directory for file APIs and `cwd` only).
//! The modules are the very same files; `common::PROVIDER` is `E2b` here because of this
//! binary's name, and the few tests (or tails of tests) that only hold for `local` say so with
//! `common::local_only`.

#[path = "../common/mod.rs"]
mod common;

// The provider follows the binary's name (see `common::PROVIDER`).
const _: () = assert!(matches!(common::PROVIDER, common::Provider::E2b), "tests/broker_e2b runs `e2b`");

#[path = "../broker/files.rs"]
mod files;
#[path = "../broker/github.rs"]
mod github;
// The fake GitHub of codehost's tests; `github` uses part of it.
#[allow(dead_code)]
#[path = "../../codehost/tests/support/mod.rs"]
mod github_support;
#[path = "../broker/lifecycle.rs"]
mod lifecycle;
#[path = "../broker/limits.rs"]
mod limits;
#[path = "../broker/processes.rs"]
mod processes;
#[path = "../broker/security.rs"]
mod security;
#[path = "../broker/template_repo.rs"]
mod template_repo;
#[path = "../broker/validation.rs"]
mod validation;
