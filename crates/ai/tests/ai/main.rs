//! The AI crate's one integration-test binary: provider clients against local servers that
//! speak each provider's wire format, the learner on real data, the router end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cascade;
mod learner;
mod providers;
