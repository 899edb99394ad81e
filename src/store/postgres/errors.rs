//! PostgreSQL errors as the store's: what is unavailable (retry, fence, wait), what
//! conflicts, and connection failures described so an operator can act on them.

use std::sync::Arc;

use tokio_postgres::error::SqlState;

use super::*;

/// What the driver error says, with the server's own words: tokio-postgres shows only
/// "db error" for every error the server reports, leaving its message and SQLSTATE in
/// the source, which `{e}` in a log line never prints.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Why a connection could not be made, in the server's (or the OS's) own words and with
/// what to do about it — not the pool's wrappers ("error occurred while creating a new
/// object", "db error"): the deepest cause in the chain, and PostgreSQL's message when it
/// answered at all.
pub(crate) fn connect_failure(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e.to_string();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(db) = err
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|pg| pg.as_db_error())
        {
            cause = db.message().to_string();
            if let Some(hint) = db.hint() {
                cause.push_str(&format!(" (hint: {hint})"));
            }
            break;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            cause = io.to_string();
            break;
        }
        cause = err.to_string();
        next = err.source();
    }
    let lower = cause.to_ascii_lowercase();
    let todo = if lower.contains("refused") {
        "is PostgreSQL running and listening on that host and port?"
    } else if lower.contains("does not exist") && lower.contains("database") {
        "create the database (createdb NAME) or fix the URL's path"
    } else if lower.contains("password") || lower.contains("authentication") {
        "check the user and password in the URL"
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "is the host reachable from here (firewall, address)?"
    } else if lower.contains("lookup")
        || lower.contains("resolve")
        || lower.contains("name or service")
    {
        "check the host name in the URL"
    } else {
        "check the URL and that the server accepts connections from this host"
    };
    format!("{cause} — {todo}")
}

/// Maps a driver error onto what the caller should do about it.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    enum Kind {
        Transient,
        Unavailable,
        Conflict,
        Database,
    }
    let kind = match e.code() {
        Some(code) => {
            let transient = [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::QUERY_CANCELED,
            ];
            let unavailable = [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            ];
            if transient.contains(code) {
                Kind::Transient
            } else if unavailable.contains(code) || code.code().starts_with("08") {
                Kind::Unavailable
            } else if *code == SqlState::UNIQUE_VIOLATION {
                Kind::Conflict
            } else {
                Kind::Database
            }
        }
        // No SQLSTATE: the connection broke (closed, I/O, connect) — or this side failed
        // to convert a value, which is a bug, not an outage.
        None => {
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            if e.is_closed() || io {
                Kind::Unavailable
            } else {
                Kind::Database
            }
        }
    };
    let message = describe(&e);
    let source: Option<ErrorSource> = Some(Arc::new(e));
    match kind {
        Kind::Transient => StoreError::Transient { message, source },
        Kind::Unavailable => StoreError::Unavailable { message, source },
        Kind::Conflict => StoreError::Conflict { message },
        Kind::Database => StoreError::Database { message, source },
    }
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::unavailable(other),
    }
}
