//! What a node has (`[server] resources`) and what one job of a pipeline needs
//! (pipeline `resources`): CPU (in thousandths of a core), memory (bytes), and GPUs.
//!
//! Invariant: on a node, the needs of its running jobs never add up past its
//! capacity in any dimension. Tests: the unit tests below and
//! `placement::resources_bound_what_runs_at_once_and_gpus_are_never_shared`.

/// An amount of every resource.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", default)]
pub struct Resources {
    /// CPU in thousandths of a core (`cpu = 1.5` → 1500).
    pub cpu_milli: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Whole GPUs.
    pub gpu: u32,
}

impl Resources {
    /// True when nothing is needed.
    pub fn is_zero(&self) -> bool {
        *self == Resources::default()
    }

    /// Whether `self` fits within `free`.
    pub fn fits(&self, free: &Resources) -> bool {
        self.cpu_milli <= free.cpu_milli && self.memory <= free.memory && self.gpu <= free.gpu
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli + other.cpu_milli,
            memory: self.memory + other.memory,
            gpu: self.gpu + other.gpu,
        }
    }

    /// `self - other`, never below zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.saturating_sub(other.cpu_milli),
            memory: self.memory.saturating_sub(other.memory),
            gpu: self.gpu.saturating_sub(other.gpu),
        }
    }

    /// `self × n`.
    pub fn times(&self, n: u64) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli * n,
            memory: self.memory * n,
            gpu: self.gpu * n as u32,
        }
    }

    /// The larger of each dimension.
    pub fn max(&self, other: &Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.max(other.cpu_milli),
            memory: self.memory.max(other.memory),
            gpu: self.gpu.max(other.gpu),
        }
    }

    /// How many jobs each needing at most `each` fit in `self` (`u64::MAX` when `each`
    /// is zero).
    pub fn how_many(&self, each: &Resources) -> u64 {
        let per = |have: u64, want: u64| have.checked_div(want).unwrap_or(u64::MAX);
        per(self.cpu_milli, each.cpu_milli)
            .min(per(self.memory, each.memory))
            .min(per(u64::from(self.gpu), u64::from(each.gpu)))
    }

    /// `cpu=2, memory=4.0GiB, gpu=1` (zero dimensions left out).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.cpu_milli > 0 {
            parts.push(format!("cpu={}", self.cpu_milli as f64 / 1000.0));
        }
        if self.memory > 0 {
            parts.push(format!(
                "memory={:.1}GiB",
                self.memory as f64 / (1u64 << 30) as f64
            ));
        }
        if self.gpu > 0 {
            parts.push(format!("gpu={}", self.gpu));
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu: u64, mem: u64, gpu: u32) -> Resources {
        Resources {
            cpu_milli: cpu,
            memory: mem,
            gpu,
        }
    }

    #[test]
    fn arithmetic_fit_and_counts() {
        let cap = r(8000, 16, 2);
        assert!(r(2000, 4, 1).fits(&cap) && !r(2000, 4, 3).fits(&cap));
        assert_eq!(cap.how_many(&r(2000, 4, 1)), 2);
        assert_eq!(cap.how_many(&r(3000, 0, 0)), 2);
        assert_eq!(cap.how_many(&Resources::default()), u64::MAX);
        assert_eq!(cap.minus(&r(9000, 1, 0)), r(0, 15, 2));
        assert_eq!(r(1, 2, 0).max(&r(0, 3, 1)), r(1, 3, 1));
        assert_eq!(r(1500, 0, 1).describe(), "cpu=1.5, gpu=1");
    }
}
