//! Where a job may run: a node's labels (`[server] labels`) and a pipeline's
//! requirements (`requires`), and the one rule that joins them.
//!
//! Invariant: a job is claimed only by a node whose labels satisfy its pipeline's
//! requirements. The rule is applied inside the claim — a node leaves the pipelines it
//! does not satisfy out of the set it claims from — so nothing is claimed and handed
//! back. Requirements are per pipeline, so filtering that set is exact. Tests:
//! the unit tests below, and `placement::a_labelled_pipeline_runs_only_on_matching_hosts_and_waits_unplaceable`
//! (real hosts).

use std::collections::BTreeMap;

/// A node's labels: name → value.
pub type Labels = BTreeMap<String, String>;

/// What a pipeline needs of one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `"*"`: the label is present, whatever its value.
    Present,
    /// A string: the label equals it.
    Equals(String),
    /// A list: the label is one of them.
    OneOf(Vec<String>),
}

impl Requirement {
    /// Whether a label value (or its absence) meets this requirement.
    pub fn accepts(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (Requirement::Present, Some(_)) => true,
            (Requirement::Equals(want), Some(v)) => want == v,
            (Requirement::OneOf(any), Some(v)) => any.iter().any(|w| w == v),
        }
    }

    /// As written in the config: `*`, `a100`, or `eu-1|eu-2`.
    pub fn describe(&self) -> String {
        match self {
            Requirement::Present => "*".into(),
            Requirement::Equals(v) => v.clone(),
            Requirement::OneOf(any) => any.join("|"),
        }
    }
}

impl serde::Serialize for Requirement {
    /// As the config writes it: `"*"`, a string, or a list.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Requirement::Present => s.serialize_str("*"),
            Requirement::Equals(v) => s.serialize_str(v),
            Requirement::OneOf(any) => serde::Serialize::serialize(any, s),
        }
    }
}

/// A pipeline's requirements: label → what it needs. Empty: any node.
pub type Requirements = BTreeMap<String, Requirement>;

/// The first requirement `labels` does not meet, as a one-line reason, or `None` when
/// they satisfy every one.
pub fn unmet(requirements: &Requirements, labels: &Labels) -> Option<String> {
    requirements.iter().find_map(|(label, req)| {
        let have = labels.get(label).map(String::as_str);
        (!req.accepts(have)).then(|| match have {
            None => format!("needs label {label}={}", req.describe()),
            Some(v) => format!("needs label {label}={} (has {v})", req.describe()),
        })
    })
}

/// Whether `labels` satisfy every requirement.
pub fn satisfies(requirements: &Requirements, labels: &Labels) -> bool {
    unmet(requirements, labels).is_none()
}

/// Why no node of `fleet` can take a job with `requirements`, or `None` when one can.
/// The reason names the requirement and how many live nodes there are.
pub fn unplaceable<'a>(
    requirements: &Requirements,
    fleet: impl IntoIterator<Item = &'a Labels>,
) -> Option<String> {
    if requirements.is_empty() {
        return None;
    }
    let mut nodes = 0;
    for labels in fleet {
        if satisfies(requirements, labels) {
            return None;
        }
        nodes += 1;
    }
    let wanted: Vec<String> = requirements
        .iter()
        .map(|(k, r)| format!("{k}={}", r.describe()))
        .collect();
    Some(format!(
        "no live node has labels {} ({nodes} live node{} checked)",
        wanted.join(", "),
        if nodes == 1 { "" } else { "s" }
    ))
}

/// Parses `RUNYARD_LABELS`: `gpu=a100,zone=eu-1` (spaces around items allowed).
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not name=value"))?;
        check_label_name(k.trim())?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

/// Label names: letters, digits, `_`, `-`, `.`, `/`; 1–63 characters.
pub fn check_label_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label name {name:?} (letters, digits, _ - . /, at most 63)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reqs() -> Requirements {
        [
            ("gpu".to_string(), Requirement::Present),
            (
                "zone".to_string(),
                Requirement::OneOf(vec!["eu-1".into(), "eu-2".into()]),
            ),
        ]
        .into()
    }

    #[test]
    fn present_equal_and_one_of_are_matched() {
        assert!(satisfies(
            &reqs(),
            &labels(&[("gpu", "a100"), ("zone", "eu-2")])
        ));
        assert_eq!(
            unmet(&reqs(), &labels(&[("zone", "eu-1")])).as_deref(),
            Some("needs label gpu=*")
        );
        assert_eq!(
            unmet(&reqs(), &labels(&[("gpu", "t4"), ("zone", "us-1")])).as_deref(),
            Some("needs label zone=eu-1|eu-2 (has us-1)")
        );
        let eq: Requirements = [("gpu".to_string(), Requirement::Equals("a100".into()))].into();
        assert!(!satisfies(&eq, &labels(&[("gpu", "t4")])));
        assert!(satisfies(&Requirements::new(), &Labels::new()));
    }

    #[test]
    fn unplaceable_only_when_no_node_matches() {
        let gpu = labels(&[("gpu", "a100"), ("zone", "eu-1")]);
        let cpu = labels(&[("zone", "eu-1")]);
        assert_eq!(unplaceable(&reqs(), [&cpu, &gpu]), None);
        let why = unplaceable(&reqs(), [&cpu]).unwrap();
        assert!(
            why.contains("gpu=*") && why.contains("1 live node checked"),
            "{why}"
        );
        assert_eq!(unplaceable(&Requirements::new(), []), None);
    }

    #[test]
    fn env_labels_parse_and_bad_names_are_refused() {
        assert_eq!(
            parse_labels(" gpu=a100 , zone=eu-1,").unwrap(),
            labels(&[("gpu", "a100"), ("zone", "eu-1")])
        );
        assert!(parse_labels("gpu").unwrap_err().contains("name=value"));
        assert!(
            parse_labels("a b=1")
                .unwrap_err()
                .contains("invalid label name")
        );
    }
}
