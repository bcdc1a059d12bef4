//! `coalmine`, the operator CLI: the controller's REST API as commands,
//! printed as tables or JSON, through the typed client.
//!
//! - [`args`]: what each command takes (clap);
//! - [`run`]: runs a command through the client;
//! - [`feedback`]: JSON lines in, feedback calls out;
//! - [`render`]: the tables;
//! - [`error`]: failures as one sentence and a distinct exit code.

pub mod args;
pub mod error;
pub mod feedback;
pub mod render;
pub mod run;

pub use args::Cli;
pub use error::CliError;
pub use run::run;
