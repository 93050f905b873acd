//! In-process fakes of the external APIs the conductor calls. Each file is self-contained so
//! other test crates can include it alone with `#[path = "…"]`.

pub mod fake_anthropic;
pub mod fake_openai;
