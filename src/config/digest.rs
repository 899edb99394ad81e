//! The config digest: a short hash of what every replica must agree on, so a node can
//! notice that it runs a different config than its live peers (a rolling restart half
//! done) and say so in `/api/workers`, `runyard workers` and its log.

use sha2::Digest;

use super::Settings;

impl Settings {
    /// A short digest of what every replica must agree on: the pipelines as they run
    /// (commands, environment names, limits, caps, requirements, parameters), the
    /// workflows (steps, their pipelines, parameters, needs and rules) and the global cap. Replicas whose digests differ run different configs (a rolling restart
    /// half done); secrets' values and per-node keys (name, labels, slots) are left out.
    pub fn config_digest(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(format!("global={}\n", self.server.max_workers_global));
        for (name, p) in &self.pipelines {
            h.update(format!(
                "{name}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}\n",
                p.command,
                p.cwd,
                p.env,
                p.timeout,
                p.max_attempts,
                p.retry_backoff,
                p.retry_on,
                p.concurrency,
                p.priority,
                p.shards,
                p.on_orphan,
                p.max_orphan_requeues,
                p.secret_env.keys().collect::<Vec<_>>(),
                p.params.keys().collect::<Vec<_>>(),
                p.finalizer.as_ref().map(|f| &f.command),
                p.requires,
                p.resources,
            ));
            if let Some(key) = &p.concurrency_key {
                h.update(format!("{name}|key={key}|{}\n", p.concurrency_per_key));
            }
        }
        // Workflows add lines only when there are some: a config without any keeps its digest.
        for (name, w) in &self.workflows {
            h.update(format!(
                "workflow={name}|{:?}\n",
                w.params.keys().collect::<Vec<_>>()
            ));
            for s in &w.steps {
                let params: Vec<String> =
                    s.params.iter().map(|(k, t)| format!("{k}={t}")).collect();
                h.update(format!(
                    "workflow={name}|step={}|{}|{params:?}|{:?}|{}\n",
                    s.name,
                    s.pipeline,
                    s.needs,
                    s.when.as_str()
                ));
            }
        }
        let digest = h.finalize();
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[server]
node_name = "gpu-1"
labels = { gpu = "a100" }

[pipelines.train]
command = ["/bin/true"]
requires = { gpu = "*" }

[pipelines.any]
command = ["/bin/true"]
"#;

    fn load(
        text: &str,
        env: super::super::EnvLookup<'_>,
    ) -> Result<Settings, super::super::ConfigError> {
        Settings::from_toml(text, Path::new("/tmp/runyard.toml"), env)
    }

    #[test]
    fn the_digest_changes_with_a_pipeline_and_not_with_node_keys() {
        let a = load(CONFIG, &|_| None).unwrap();
        let renamed = CONFIG.replace(r#"node_name = "gpu-1""#, r#"node_name = "gpu-2""#);
        assert_eq!(
            a.config_digest(),
            load(&renamed, &|_| None).unwrap().config_digest()
        );
        let changed = CONFIG.replace(
            "[pipelines.any]\ncommand = [\"/bin/true\"]",
            "[pipelines.any]\ncommand = [\"/bin/false\"]",
        );
        assert_ne!(
            a.config_digest(),
            load(&changed, &|_| None).unwrap().config_digest()
        );
        let flow = format!(
            "{CONFIG}[workflows.ship.steps.a]\npipeline = \"any\"\n[workflows.ship.steps.b]\npipeline = \"train\"\nneeds = [\"a\"]\n"
        );
        let with_flow = load(&flow, &|_| None).unwrap().config_digest();
        assert_ne!(a.config_digest(), with_flow);
        let always = flow.replace("needs = [\"a\"]", "needs = [\"a\"]\nwhen = \"always\"");
        assert_ne!(with_flow, load(&always, &|_| None).unwrap().config_digest());
    }
}
