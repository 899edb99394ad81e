//! What a store failure means to its caller.
//!
//! Callers do not care which database said no; they care what to do next:
//! run the same transaction again ([`StoreError::Transient`]: a lock held too
//! long, a serialization failure, a deadlock victim), tell the client to come
//! back later ([`StoreError::Unavailable`]: the database cannot be reached —
//! the API answers 503), read back what it wrote ([`StoreError::Ambiguous`]:
//! the connection was lost after COMMIT was sent), report a conflict ([`StoreError::Conflict`]), or
//! treat it as a bug ([`StoreError::Database`]). Each backend maps its own
//! error codes onto these kinds in its module; the driver's error is kept as
//! the source, so logs still show what the database said.

use std::sync::Arc;

use thiserror::Error;

/// The underlying driver error, shareable (store results are cloned into several waiters).
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync>;

/// A store failure, by what the caller should do about it.
#[derive(Debug, Error, Clone)]
pub enum StoreError {
    /// Lost a race with another writer (busy lock, serialization failure, deadlock):
    /// running the same operation again may succeed.
    #[error("store busy: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<ErrorSource>,
    },
    /// The database cannot be reached (connection refused or lost, server shutting
    /// down, pool exhausted): answer 503 and try again later. Nothing was written.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<ErrorSource>,
    },
    /// The connection was lost after COMMIT was sent: the transaction may or may not
    /// have committed. Running it again could apply it twice; a caller that must know
    /// reads back what it wrote (a run by its id, a claim by its time).
    #[error("store outcome unknown: {message}")]
    Ambiguous {
        /// What happened.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<ErrorSource>,
    },
    /// The request contradicts what is stored (a unique key held by another row).
    #[error("store conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// Any other database error: a bug or a damaged store; not worth retrying.
    #[error("database error: {message}")]
    Database {
        /// What happened.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<ErrorSource>,
    },
    /// The store is closed (shutting down).
    #[error("store is closed")]
    Closed,
    /// Migration or open failure.
    #[error("cannot open store at {path}: {message}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
}

impl StoreError {
    /// A [`StoreError::Transient`] with its source.
    pub fn transient(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Transient {
            message: e.to_string(),
            source: Some(Arc::new(e)),
        }
    }

    /// A [`StoreError::Unavailable`] with its source.
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable {
            message: e.to_string(),
            source: Some(Arc::new(e)),
        }
    }

    /// A [`StoreError::Database`] with its source.
    pub fn database(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Database {
            message: e.to_string(),
            source: Some(Arc::new(e)),
        }
    }

    /// A [`StoreError::Database`] from a message alone.
    pub fn internal(message: impl Into<String>) -> Self {
        StoreError::Database {
            message: message.into(),
            source: None,
        }
    }

    /// True when running the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    /// True when the client should be told to come back later (HTTP 503) unless the
    /// caller resolves it (an ambiguous commit is read back where it matters).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Transient { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Ambiguous { .. }
                | StoreError::Closed
        )
    }

    /// True when the operation may have been applied although it failed.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, StoreError::Ambiguous { .. })
    }

    /// A lost connection at COMMIT becomes [`StoreError::Ambiguous`]; anything else is
    /// kept (a COMMIT refused by the server rolled back).
    pub fn at_commit(self) -> Self {
        match self {
            StoreError::Unavailable { message, source } => StoreError::Ambiguous {
                message: format!("connection lost at COMMIT: {message}"),
                source,
            },
            other => other,
        }
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;
