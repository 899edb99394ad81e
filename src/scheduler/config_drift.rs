//! Config drift: which live nodes run a config digest other than the fleet's (shown in
//! `/api/workers` and `runyard workers`), and this node's log line when it starts or
//! stops being one of them (a rolling restart half done, or a replica left behind).

use super::Inner;
use crate::store::NodeRow;

/// The ids of the nodes whose config digest is not the fleet's: not the one most live
/// nodes run (when no digest has a majority of its own, every node whose digest some
/// other node does not share). Nodes from before digests are left out.
pub fn config_outliers(nodes: &[NodeRow]) -> std::collections::HashSet<String> {
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    for n in nodes.iter().filter(|n| !n.config_digest.is_empty()) {
        *counts.entry(n.config_digest.as_str()).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    let leaders: Vec<&str> = counts
        .iter()
        .filter(|(_, c)| **c == most)
        .map(|(d, _)| *d)
        .collect();
    nodes
        .iter()
        .filter(|n| !n.config_digest.is_empty() && counts.len() > 1)
        .filter(|n| leaders.len() > 1 || n.config_digest != leaders[0])
        .map(|n| n.id.clone())
        .collect()
}

/// Logs when this node's config starts or stops differing from its live peers' (a
/// rolling restart half done, or a replica left behind), once per change.
pub(super) fn note_config_drift(inner: &Inner, nodes: &[NodeRow]) {
    let differs = config_outliers(nodes).contains(&inner.node.id);
    let before = inner
        .config_differs
        .swap(differs, std::sync::atomic::Ordering::Relaxed);
    if differs && !before {
        let peers: Vec<String> = nodes
            .iter()
            .filter(|n| n.id != inner.node.id && n.config_digest != inner.node.config_digest)
            .map(|n| format!("{} ({})", n.name, n.config_digest))
            .collect();
        tracing::warn!(
            digest = %inner.node.config_digest,
            "this node's config differs from its live peers': {}",
            peers.join(", ")
        );
    } else if !differs && before {
        tracing::info!(digest = %inner.node.config_digest, "this node's config matches its peers' again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, digest: &str) -> NodeRow {
        NodeRow {
            id: id.into(),
            config_digest: digest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_odd_one_out_is_flagged_and_a_tie_flags_both() {
        let fleet = [
            node("a", "x"),
            node("b", "x"),
            node("c", "y"),
            node("old", ""),
        ];
        assert_eq!(config_outliers(&fleet), ["c".to_string()].into());
        let tie = [node("a", "x"), node("b", "y")];
        assert_eq!(config_outliers(&tie).len(), 2);
        assert!(config_outliers(&[node("a", "x"), node("b", "x")]).is_empty());
    }
}
