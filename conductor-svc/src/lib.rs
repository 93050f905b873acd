//! Stu, the conductor (`conductor-svc`): takes requests, reasons with a [`brain::Brain`], runs
//! workers through the sandbox broker, streams their output back and remembers everything in a
//! [`store::Store`]. It never holds a sandbox-provider or code-host credential.

pub mod brain;
pub mod store;
