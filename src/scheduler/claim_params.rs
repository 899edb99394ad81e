//! What a claim of this node asks the store for: its time, its slots, the caps, and the
//! pipelines it may take — those whose `requires` its labels meet, whose one-job need
//! its capacity holds, whose setup circuit is closed here, and (under resources) that
//! fit what is free now. Used by the claim loop and by a finish's claim of the next job.

use super::Inner;
use crate::store::NodeRow;

/// A claim of up to `max` jobs for this node, at a time no other claim of this node has
/// (so a claim whose commit answer was lost can be found again by its `claimed_at`).
/// Pipelines whose setup circuit is open on this node are left out.
pub(super) fn claim_params(
    inner: &Inner,
    max: usize,
    allowed: Option<&[String]>,
) -> crate::store::JobClaimParams {
    use std::sync::atomic::Ordering;
    let clock = inner.store.clock_ms();
    let mut last = inner.last_claim_at.load(Ordering::Acquire);
    let now = loop {
        let now = clock.max(last + 1);
        match inner.last_claim_at.compare_exchange_weak(
            last,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => break now,
            Err(seen) => last = seen,
        }
    };
    crate::store::JobClaimParams {
        node_id: inner.node.id.clone(),
        max,
        global_cap: inner.settings.server.max_workers_global,
        pipelines: inner
            .claimable
            .iter()
            .filter(|(name, _)| inner.setups.claimable(name, now))
            .filter(|(name, _)| allowed.is_none_or(|a| a.contains(name)))
            .map(|(name, cap)| (name.clone(), *cap))
            .collect(),
        keyed: inner
            .keyed
            .iter()
            .filter(|(name, _)| inner.claimable.contains_key(*name))
            .map(|(name, cap)| (name.clone(), *cap))
            .collect(),
        now,
    }
}

/// Why this node never claims `pipeline`'s jobs (its labels miss a requirement, or one
/// job needs more than the node has), or `None`.
pub(super) fn placement_refusal(
    pipeline: &crate::config::Pipeline,
    node: &NodeRow,
) -> Option<String> {
    crate::model::unmet(&pipeline.requires, &node.labels).or_else(|| {
        (!pipeline.resources.fits(&node.capacity)).then(|| {
            format!(
                "one job needs {}, more than this node has ({})",
                pipeline.resources.describe(),
                node.capacity.describe()
            )
        })
    })
}

/// Each claimable pipeline with what one of its jobs needs.
pub(super) fn claimable_needs(
    inner: &Inner,
) -> impl Iterator<Item = (&str, &crate::model::Resources)> {
    inner
        .claimable
        .keys()
        .map(|name| (name.as_str(), &inner.settings.pipelines[name].resources))
}

/// What one job of `pipeline` needs (nothing for a pipeline not configured here).
pub(super) fn need_of<'a>(inner: &'a Inner, pipeline: &str) -> &'a crate::model::Resources {
    static NOTHING: crate::model::Resources = crate::model::Resources {
        cpu_milli: 0,
        memory: 0,
        gpu: 0,
    };
    inner
        .settings
        .pipelines
        .get(pipeline)
        .map_or(&NOTHING, |p| &p.resources)
}
