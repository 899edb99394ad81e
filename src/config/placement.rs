//! The placement keys of a config: who this node is (`[server] node_name`,
//! `advertise_url`, `labels`) and where a pipeline may run (`requires`), plus a
//! node name's rules and default.
//!
//! A node's default name is `{host}:{port}`: nothing to set on one host, unique among
//! replicas that share a host (they listen on different ports), and the same after a
//! restart, so a node that comes back takes its name back.

use std::collections::BTreeMap;

use super::{ConfigError, Loader};
use crate::model::{Labels, Requirement, Requirements, Resources, check_label_name, parse_labels};

/// Node names: letters, digits, `.`, `_`, `-`, `:`; 1–128 characters.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?} (letters, digits, . _ - :, at most 128)"
        ))
    }
}

/// The name a node takes when none is set: `{host}:{port}` (`{host}:{pid}` when it
/// listens on an ephemeral port, which no restart can reuse anyway).
pub fn default_node_name(host: &str, port: u16) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    match port {
        0 => format!("{host}:{}", std::process::id()),
        p => format!("{host}:{p}"),
    }
}

impl Loader<'_> {
    /// `[server] node_name` (env `RUNYARD_NODE_NAME`), or `None` for the default.
    pub(super) fn node_name(&self, file: Option<&str>) -> Result<Option<String>, ConfigError> {
        let t = "server";
        let ev = self.env_override("NODE_NAME", false);
        self.note(
            t,
            "node_name",
            ev.as_ref().map(|e| e.var.as_str()),
            file.is_some(),
        );
        match ev {
            Some(ev) => {
                let name = ev.value.trim().to_string();
                check_node_name(&name).map_err(|m| self.env_invalid(&ev, "server.node_name", m))?;
                Ok(Some(name))
            }
            None => match file {
                None => Ok(None),
                Some(name) => {
                    check_node_name(name).map_err(|m| self.invalid(t, Some("node_name"), m))?;
                    Ok(Some(name.to_string()))
                }
            },
        }
    }

    /// `[server] advertise_url` (env `RUNYARD_ADVERTISE_URL`): how peers and people reach
    /// this node's API.
    pub(super) fn advertise_url(&self, file: Option<&str>) -> Result<Option<String>, ConfigError> {
        let t = "server";
        let ev = self.env_override("ADVERTISE_URL", false);
        self.note(
            t,
            "advertise_url",
            ev.as_ref().map(|e| e.var.as_str()),
            file.is_some(),
        );
        let check = |u: &str| match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                Ok(u.trim_end_matches('/').to_string())
            }
            _ => Err(format!("{u:?} is not an http(s) URL")),
        };
        match ev {
            Some(ev) => check(ev.value.trim())
                .map(Some)
                .map_err(|m| self.env_invalid(&ev, "server.advertise_url", m)),
            None => file
                .map(|u| check(u).map_err(|m| self.invalid(t, Some("advertise_url"), m)))
                .transpose(),
        }
    }

    /// `[server] labels = { gpu = "a100" }`; env `RUNYARD_LABELS=gpu=a100,zone=eu-1`
    /// replaces them as a whole.
    pub(super) fn labels(
        &self,
        file: Option<&BTreeMap<String, toml::Value>>,
    ) -> Result<Labels, ConfigError> {
        let t = "server";
        let ev = self.env_override("LABELS", false);
        self.note(
            t,
            "labels",
            ev.as_ref().map(|e| e.var.as_str()),
            file.is_some(),
        );
        if let Some(ev) = ev {
            return parse_labels(&ev.value).map_err(|m| self.env_invalid(&ev, "server.labels", m));
        }
        let mut labels = Labels::new();
        for (k, v) in file.into_iter().flatten() {
            check_label_name(k).map_err(|m| self.invalid(t, Some("labels"), m))?;
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(self.invalid(
                        t,
                        Some("labels"),
                        format!("label {k}: expected a string value"),
                    ));
                }
            };
            labels.insert(k.clone(), value);
        }
        Ok(labels)
    }

    /// A pipeline's `requires = { gpu = "*", zone = ["eu-1", "eu-2"] }`.
    pub(super) fn requires(
        &self,
        table: &str,
        file: Option<&BTreeMap<String, toml::Value>>,
    ) -> Result<Requirements, ConfigError> {
        let bad = |m: String| self.invalid(table, Some("requires"), m);
        let mut reqs = Requirements::new();
        for (k, v) in file.into_iter().flatten() {
            check_label_name(k).map_err(&bad)?;
            let req = match v {
                toml::Value::String(s) if s == "*" => Requirement::Present,
                toml::Value::String(s) => Requirement::Equals(s.clone()),
                toml::Value::Integer(n) => Requirement::Equals(n.to_string()),
                toml::Value::Array(items) if !items.is_empty() => Requirement::OneOf(
                    items
                        .iter()
                        .map(|i| match i {
                            toml::Value::String(s) if s != "*" => Ok(s.clone()),
                            toml::Value::Integer(n) => Ok(n.to_string()),
                            _ => Err(bad(format!("{k}: list items are label values (strings)"))),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                _ => {
                    return Err(bad(format!(
                        "{k}: expected \"*\" (present), a value, or a list of values"
                    )));
                }
            };
            reqs.insert(k.clone(), req);
        }
        Ok(reqs)
    }
}

impl Loader<'_> {
    /// `resources = { cpu = 2, memory = "4GiB", gpu = 1 }` (`[server]`: what the node has;
    /// a pipeline: what one of its jobs needs). `None` when not written.
    pub(super) fn resources(
        &self,
        table: &str,
        file: Option<&BTreeMap<String, toml::Value>>,
    ) -> Result<Option<Resources>, ConfigError> {
        let Some(file) = file else { return Ok(None) };
        let bad = |m: String| self.invalid(table, Some("resources"), m);
        let mut r = Resources::default();
        for (k, v) in file {
            match (k.as_str(), v) {
                ("cpu", toml::Value::Integer(n)) if *n >= 0 => r.cpu_milli = *n as u64 * 1000,
                ("cpu", toml::Value::Float(f)) if *f >= 0.0 && f.is_finite() => {
                    r.cpu_milli = (f * 1000.0).round() as u64
                }
                ("memory", toml::Value::Integer(n)) if *n >= 0 => r.memory = *n as u64,
                ("memory", toml::Value::String(text)) => {
                    r.memory = super::parse_size(text).map_err(|m| bad(format!("memory: {m}")))?
                }
                ("gpu", toml::Value::Integer(n)) if (0..=64).contains(n) => r.gpu = *n as u32,
                ("cpu" | "memory" | "gpu", _) => {
                    return Err(bad(format!(
                        "{k}: expected {}",
                        match k.as_str() {
                            "cpu" => "a number of cores, e.g. 2 or 0.5",
                            "memory" => "a size such as \"4GiB\"",
                            _ => "a whole number of GPUs from 0 to 64",
                        }
                    )));
                }
                _ => return Err(bad(format!("unknown resource {k:?} (cpu, memory, gpu)"))),
            }
        }
        Ok(Some(r))
    }
}

impl Loader<'_> {
    /// `concurrency_key = "{tenant}"` (placeholders: the pipeline's declared parameters
    /// only, so every run has a value) and `concurrency_per_key = N` (needs a key).
    pub(super) fn concurrency_key(
        &self,
        table: &str,
        key: Option<&str>,
        per_key: Option<u32>,
        params: &BTreeMap<String, super::ParamSpec>,
    ) -> Result<(Option<super::Template>, u32), ConfigError> {
        let Some(text) = key else {
            if per_key.is_some() {
                return Err(self.invalid(
                    table,
                    Some("concurrency_per_key"),
                    "needs concurrency_key (the template, e.g. \"{tenant}\", whose value is capped)",
                ));
            }
            return Ok((None, 0));
        };
        let tpl = super::Template::parse(text)
            .map_err(|m| self.invalid(table, Some("concurrency_key"), m))?;
        let vars: Vec<&str> = tpl.vars().collect();
        if vars.is_empty() {
            return Err(self.invalid(
                table,
                Some("concurrency_key"),
                "must name at least one parameter, e.g. \"{tenant}\" (a constant key is the pipeline's `concurrency`)",
            ));
        }
        if let Some(var) = vars.iter().find(|v| !params.contains_key(**v)) {
            return Err(self.invalid(
                table,
                Some("concurrency_key"),
                format!("unknown parameter {{{var}}}: declare [{table}.params.{var}]"),
            ));
        }
        Ok((Some(tpl), per_key.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use super::super::Settings;

    fn load(text: &str, env: super::super::EnvLookup<'_>) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("/tmp/runyard.toml"), env)
    }

    const CONFIG: &str = r#"
[server]
node_name = "gpu-1"
advertise_url = "http://gpu-1.internal:7878/"
labels = { gpu = "a100", zone = "eu-1", rack = 4 }

[pipelines.train]
command = ["/bin/true"]
requires = { gpu = "*", zone = ["eu-1", "eu-2"] }

[pipelines.any]
command = ["/bin/true"]
"#;

    #[test]
    fn names_labels_and_requirements_load_and_the_environment_wins() {
        let s = load(CONFIG, &|_| None).unwrap();
        assert_eq!(s.server.node_name.as_deref(), Some("gpu-1"));
        assert_eq!(
            s.server.advertise_url.as_deref(),
            Some("http://gpu-1.internal:7878")
        );
        assert_eq!(s.server.labels["rack"], "4");
        let train = &s.pipelines["train"];
        assert_eq!(train.requires["gpu"], Requirement::Present);
        assert!(crate::model::satisfies(&train.requires, &s.server.labels));
        assert!(s.pipelines["any"].requires.is_empty());
        let env = |k: &str| match k {
            "RUNYARD_NODE_NAME" => Some("cpu-7".to_string()),
            "RUNYARD_LABELS" => Some("zone=us-1".to_string()),
            _ => None,
        };
        let s = load(CONFIG, &env).unwrap();
        assert_eq!(s.server.node_name.as_deref(), Some("cpu-7"));
        assert_eq!(
            s.server.labels,
            [("zone".to_string(), "us-1".to_string())].into()
        );
        assert!(!crate::model::satisfies(
            &s.pipelines["train"].requires,
            &s.server.labels
        ));
    }

    #[test]
    fn bad_placement_keys_fail_at_start_with_their_line() {
        let bad = CONFIG.replace(r#"zone = ["eu-1", "eu-2"]"#, "zone = []");
        let err = load(&bad, &|_| None).unwrap_err().to_string();
        assert!(
            err.contains("pipelines.train.requires") && err.contains(":9:"),
            "{err}"
        );
        let bad = CONFIG.replace(r#"node_name = "gpu-1""#, r#"node_name = "gpu 1""#);
        let err = load(&bad, &|_| None).unwrap_err().to_string();
        assert!(
            err.contains("server.node_name") && err.contains(":3:"),
            "{err}"
        );
        let bad = CONFIG.replace("http://gpu-1.internal:7878/", "gpu-1:7878");
        let err = load(&bad, &|_| None).unwrap_err().to_string();
        assert!(err.contains("server.advertise_url"), "{err}");
        let env = |k: &str| (k == "RUNYARD_LABELS").then(|| "gpu".to_string());
        let err = load(CONFIG, &env).unwrap_err().to_string();
        assert!(
            err.contains("RUNYARD_LABELS") && err.contains("name=value"),
            "{err}"
        );
    }

    #[test]
    fn concurrency_keys_need_declared_parameters_and_resources_parse() {
        let base = "[pipelines.t]\ncommand = [\"/bin/true\"]\n";
        let ok = format!(
            "{base}concurrency_key = \"{{tenant}}-{{region}}\"\nconcurrency_per_key = 2\n\
             resources = {{ cpu = 0.5, memory = \"1GiB\", gpu = 1 }}\n\
             [pipelines.t.params.tenant]\n[pipelines.t.params.region]\ndefault = \"eu\"\n"
        );
        let s = load(&ok, &|_| None).unwrap();
        let t = &s.pipelines["t"];
        assert_eq!(t.concurrency_per_key, 2);
        assert_eq!(
            t.concurrency_key.as_ref().unwrap().to_string(),
            "{tenant}-{region}"
        );
        assert_eq!(
            (t.resources.cpu_milli, t.resources.memory, t.resources.gpu),
            (500, 1 << 30, 1)
        );
        for (bad, want) in [
            (
                format!("{base}concurrency_per_key = 2\n"),
                "needs concurrency_key",
            ),
            (
                format!("{base}concurrency_key = \"{{who}}\"\n"),
                "unknown parameter {who}",
            ),
            (
                format!("{base}concurrency_key = \"all\"\n"),
                "at least one parameter",
            ),
            (
                format!("{base}resources = {{ disk = 1 }}\n"),
                "unknown resource \"disk\"",
            ),
            (
                format!("{base}resources = {{ gpu = 1.5 }}\n"),
                "whole number of GPUs",
            ),
        ] {
            let err = load(&bad, &|_| None).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("pipelines.t."),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn default_names_are_host_and_port_and_stay_valid() {
        assert_eq!(default_node_name("box", 7878), "box:7878");
        assert_eq!(default_node_name("my box/1", 80), "my-box-1:80");
        assert!(check_node_name(&default_node_name("my box/1", 80)).is_ok());
        assert!(default_node_name("box", 0).starts_with("box:"));
        assert!(check_node_name("").is_err() && check_node_name("a b").is_err());
    }
}
