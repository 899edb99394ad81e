//! Fast signals between nodes. Never the source of truth: every signal here is
//! also durable in the store (an abort mark, a queued row), and nodes poll the
//! store as a backstop, so a lost message only delays, never loses, work.
//!
//! The in-process [`LocalBus`] serves a single node; a Redis implementation
//! plugs in behind the same trait for multi-machine deployments.

mod local;

pub use local::LocalBus;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Signal {
    /// `runyard:run-abort`: cancel every local job of the run.
    #[serde(rename_all = "camelCase")]
    RunAbort {
        /// The aborted run.
        run_id: String,
        /// The node that published it; that node drops its own echo.
        origin: String,
    },
}

/// The signalling seam.
pub trait Bus: Send + Sync {
    /// Publishes best effort: failure is logged, never returned (DESIGN decision 17).
    fn publish(&self, signal: Signal);
    /// A receiver of every signal published after this call.
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
}
