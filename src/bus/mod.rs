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

/// Which bus a node uses and whether it is connected (`GET /api/workers`, the nodes page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusStatus {
    /// `local` (in-process: this node only) or `redis`.
    pub kind: &'static str,
    /// Connected now (always true for the in-process bus). While false, signals are
    /// late, never lost: nodes poll the store.
    pub connected: bool,
}

/// The signalling seam.
pub trait Bus: Send + Sync {
    /// Publishes best effort: failure is logged, never returned (DESIGN decision 17).
    fn publish(&self, signal: Signal);
    /// A receiver of every signal published after this call.
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
    /// Which bus this is and whether it is connected.
    fn status(&self) -> BusStatus {
        BusStatus {
            kind: "local",
            connected: true,
        }
    }
}
