//! The integration tests: one binary, the real server on 127.0.0.1:0, a
//! fresh PostgreSQL database per test (`#[sqlx::test]`), and every response
//! checked against `openapi.yaml`.

mod adversarial11;
mod adversarial13;
mod auth;
mod cache;
mod callbacks;
mod cleanup;
mod cli;
mod connections;
mod definition_docs;
mod errors;
mod exact;
mod executions;
mod fan_in;
mod fences;
mod for_each;
mod hardening;
mod hashing;
mod helpers;
mod layers;
mod limits;
mod markdown;
mod oas30;
mod openapi;
mod pipelines;
mod plan_property;
mod procs;
mod races;
mod readme;
mod redaction;
mod retention;
mod sdk_definitions;
mod secrets;
mod selection_cache;
mod selective;
mod shutdown;
mod step_env;
mod step_processes;
mod triggers;
mod ui;
mod webhooks;
mod workers;
