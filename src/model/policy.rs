//! The rules a pipeline's policy states, shared by the config that reads them and the
//! store that applies them (so neither imports the other): which failed exit codes are
//! retried, and the range of priorities.

/// The priorities a run may have: higher is claimed first.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;

/// Which failed exit codes are retried (pipeline `retry_exit_codes` / `no_retry_exit_codes`),
/// copied onto each job at trigger time like the rest of its `store::JobPolicy`.
///
/// The rule only looks at executions that exited with a code: a timeout, a kill by a
/// signal or a spawn failure has no code and is always retried while attempts remain (the
/// "infrastructure" failures a test suite wants paid twice; a deterministic test failure
/// exits with a code the pipeline names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RetryOn {
    /// Every failure is retried while attempts remain (the default).
    #[default]
    Any,
    /// Only these exit codes are retried; other codes fail at once.
    Only(Vec<i32>),
    /// These exit codes fail at once; others are retried.
    Except(Vec<i32>),
}

impl RetryOn {
    /// Whether an execution that failed with `exit_code` may be retried.
    pub fn allows(&self, exit_code: Option<i32>) -> bool {
        match (self, exit_code) {
            (RetryOn::Any, _) | (_, None) => true,
            (RetryOn::Only(codes), Some(code)) => codes.contains(&code),
            (RetryOn::Except(codes), Some(code)) => !codes.contains(&code),
        }
    }

    /// The stored form (`jobs.retry_on`): `NULL` for [`RetryOn::Any`], else
    /// `only:1,2` or `except:3`.
    pub fn to_column(&self) -> Option<String> {
        let join = |codes: &[i32]| {
            codes
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            RetryOn::Any => None,
            RetryOn::Only(codes) => Some(format!("only:{}", join(codes))),
            RetryOn::Except(codes) => Some(format!("except:{}", join(codes))),
        }
    }

    /// Reads the stored form back; anything unreadable is [`RetryOn::Any`] (retrying is
    /// the behaviour of every job stored before the column existed).
    pub fn from_column(text: Option<&str>) -> RetryOn {
        let Some(text) = text else {
            return RetryOn::Any;
        };
        let codes = |list: &str| -> Vec<i32> {
            list.split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect()
        };
        if let Some(list) = text.strip_prefix("only:") {
            RetryOn::Only(codes(list))
        } else if let Some(list) = text.strip_prefix("except:") {
            RetryOn::Except(codes(list))
        } else {
            RetryOn::Any
        }
    }
}
