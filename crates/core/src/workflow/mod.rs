//! Workflows: the model the engine runs ([`model`]) and the parser/checker that produces it
//! (the file format is documented in [`parser`]).

pub(crate) mod diagnostic;
mod duration;
mod graph;
pub(crate) mod influence;
pub mod model;
pub mod parser;
mod steps;
mod template;
mod values;
pub(crate) mod yaml;

pub use diagnostic::{Diagnostic, Severity};
pub use duration::parse_duration;
pub use model::*;
pub use parser::{check_file, check_str, parse_file, parse_stored, parse_str, Checked, CODES};

/// The reference workflow of the benchmark: validate → decide → switch → set → action → end.
/// Its action posts to `${input.callback}`, so the benchmark points it at its own server.
pub const BENCH_WORKFLOW_YAML: &str = include_str!("bench_workflow.yaml");
