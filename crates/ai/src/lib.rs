//! Keel's AI intelligence layer.
//!
//! - [`config`]: `keel.toml`, the models Keel may call, prices, budgets, cache, gateway aliases.
//! - [`provider`]: clients for OpenAI-compatible and Anthropic APIs, with timeouts, retries,
//!   circuit breakers and concurrency limits.
//! - [`learner`]: the built-in local classifier that learns online from labelled outcomes.
//!
//! Architecture invariant: this crate knows HTTP only as a client of model providers, and
//! knows nothing of SQL: what must be persisted (learner weights, spend) goes through plain
//! values that the engine stores.

pub mod budget;
pub mod cache;
pub mod cascade;
pub mod config;
pub mod learner;
pub mod provider;
