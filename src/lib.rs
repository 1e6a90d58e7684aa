//! stepwise: pipeline orchestration with selective execution and step
//! caching. `main.rs` is a thin CLI over this library.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod content;
pub mod domain;
pub mod engine;
pub mod executor;
pub mod ids;
pub mod notify;
pub mod redact;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod worker;
