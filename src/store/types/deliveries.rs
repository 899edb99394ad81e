//! Completion webhooks as the store keeps them: due deliveries leased to a node,
//! attempts and their outcomes.

/// A completion webhook due for delivery, leased to one node.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// The `webhook-id`: stable over retries, so receivers can deduplicate.
    pub id: String,
    /// Run it reports.
    pub run_id: String,
    /// Target.
    pub url: String,
    /// JSON body.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What one delivery attempt decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryNext {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again at this time (epoch ms).
    RetryAt(i64),
    /// Attempts exhausted (or not retryable): give up.
    GiveUp,
}

/// `delivery_record` input.
#[derive(Debug, Clone)]
pub struct DeliveryRecordParams {
    /// Delivery id.
    pub id: String,
    /// The node that made the attempt (must hold the lease).
    pub node_id: String,
    /// Attempt start (epoch ms).
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: u64,
    /// HTTP status, when a response came.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// What happens next.
    pub next: DeliveryNext,
}

/// One delivery attempt as stored.
#[derive(Debug, Clone)]
pub struct DeliveryAttemptRecord {
    /// 1-based.
    pub attempt: u32,
    /// Node that made it.
    pub node: String,
    /// Epoch ms.
    pub started_at: i64,
    /// Milliseconds.
    pub duration_ms: u64,
    /// HTTP status, when a response came.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A run's completion webhook as stored, with its attempts.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// The `webhook-id`.
    pub id: String,
    /// Run.
    pub run_id: String,
    /// Target.
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Epoch ms of the next attempt, when pending.
    pub next_attempt_at: Option<i64>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms, when delivered or given up.
    pub finished_at: Option<i64>,
    /// Every attempt, oldest first.
    pub history: Vec<DeliveryAttemptRecord>,
}
