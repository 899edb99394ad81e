//! runyard: a durable run-execution service.
//!
//! # Layout
//!
//! Data flows one way: `api`/`cli` → `scheduler` → `store`/`bus`/`executor`;
//! `model` is the only module everyone imports.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | `runyard.toml` + env → validated [`config::Settings`] |
//! | [`model`] | ids, statuses, event names; pure |
//! | [`store`] | the [`store::Store`] trait, the rules above its backends, SQLite and PostgreSQL |
//! | [`bus`] | the [`bus::Bus`] trait and the in-process bus |
//! | [`executor`] | spawning, output capture, progress, timeouts, killing |
//! | [`metrics`] | this node's counters and histograms, Prometheus text |
//! | [`scheduler`] | triggers, claims, slots and caps, aborts, heartbeats, rescue |
//! | [`api`] | HTTP routes and SSE |
//! | [`cli`] | the command-line client and `serve` |
//! | [`serve`] | composition root: builds everything, runs, drains |
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
