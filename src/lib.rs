//! runyard: a durable run-execution service.
//!
//! # Layout
//!
//! Data flows one way: `api`/`cli` → `scheduler` → `store`/`bus`/`executor`;
//! `model` is the only module everyone imports.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | `runyard.toml` + env → validated [`config::Settings`], one file per table |
//! | [`model`] | ids, statuses, event names, parameters and templates, placement rules; pure |
//! | [`store`] | the [`store::Store`] trait and its types, the rules above its backends, SQLite and PostgreSQL |
//! | [`bus`] | the [`bus::Bus`] trait, the in-process bus and the Redis bus |
//! | [`executor`] | spawning, output capture, secret masking, progress, killing, the subreaper |
//! | [`metrics`] | this node's counters and histograms, Prometheus text |
//! | [`scheduler`] | triggers, claims (slots, caps, labels, resources), aborts, heartbeats, names, rescue |
//! | [`api`] | HTTP routes, SSE (`api::sse`), the fleet view, the dashboard |
//! | [`cli`] | the command-line client, one function per command, and `serve` |
//! | [`serve`] | composition root: builds everything, runs, drains |
//! | [`schedule`] | cron schedules: parsing and next fire times |
//! | [`clock`] | wall-clock time and RFC 3339 |
//! | [`webhook`] | callback-URL policy (SSRF), pinned and signed webhook delivery |
//!
//! See `ARCHITECTURE.md` for the life of a run and the invariants.

pub mod api;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod executor;
pub mod metrics;
pub mod model;
pub mod schedule;
pub mod scheduler;
pub mod serve;
pub mod store;
pub mod webhook;
