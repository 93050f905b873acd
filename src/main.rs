//! `studio`: starts Agent Studio on its embedded defaults (`studio up`) and talks to it.
//!
//! Thin by design: argument parsing here, each command in `cli/`.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("studio: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
