//! Keel's pure domain: the workflow language (model, parser, checker), CEL expressions and
//! JSON Schema, and the case state machine (`case`). No IO except reading a workflow file and its schema files, no clock, no
//! randomness: time and data are passed in.

pub mod calendar;
pub mod case;
pub mod desk;
pub mod expr;
pub mod fingerprint;
pub mod gate;
pub mod monitor;
pub mod prompt;
pub mod schema;
pub mod trust;
pub mod workflow;
