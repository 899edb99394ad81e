//! The Prometheus text exposition (format 0.0.4) of this node's instruments and a
//! snapshot of the store's gauges taken per scrape.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::*;

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(8 * 1024);
        for (name, help, pick) in [
            (
                "runyard_store_statements_total",
                "Statements this node sent in store write transactions, by backend and operation (BEGIN and COMMIT not counted).",
                2usize,
            ),
            (
                "runyard_store_commits_total",
                "Store write transactions this node committed (or tried to), by backend and operation.",
                3,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for t in &snap.store_traffic {
                let value = if pick == 2 { t.2 } else { t.3 };
                let _ = writeln!(out, "{name}{{backend=\"{}\",op=\"{}\"}} {value}", t.0, t.1);
            }
        }
        let _ = writeln!(
            out,
            "# HELP runyard_jobs Jobs in the store by pipeline and state.\n# TYPE runyard_jobs gauge"
        );
        for (p, queued, running) in &snap.pipelines {
            let p = escape(p);
            let _ = writeln!(
                out,
                "runyard_jobs{{pipeline=\"{p}\",state=\"queued\"}} {queued}"
            );
            let _ = writeln!(
                out,
                "runyard_jobs{{pipeline=\"{p}\",state=\"running\"}} {running}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP runyard_queue_depth Queued jobs per pipeline.\n# TYPE runyard_queue_depth gauge"
        );
        for (p, queued, _) in &snap.pipelines {
            let _ = writeln!(
                out,
                "runyard_queue_depth{{pipeline=\"{}\"}} {queued}",
                escape(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP runyard_queue_oldest_seconds Seconds the longest-waiting due job of the pipeline has waited.\n# TYPE runyard_queue_oldest_seconds gauge"
        );
        for (p, oldest, _) in &snap.backlog {
            let _ = writeln!(
                out,
                "runyard_queue_oldest_seconds{{pipeline=\"{}\"}} {oldest:.3}",
                escape(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP runyard_jobs_unplaceable Queued jobs no live node can take (labels miss the pipeline's requires).\n# TYPE runyard_jobs_unplaceable gauge"
        );
        for (p, _, n) in &snap.backlog {
            let _ = writeln!(
                out,
                "runyard_jobs_unplaceable{{pipeline=\"{}\"}} {n}",
                escape(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP runyard_node_info This node's id and name (always 1).\n# TYPE runyard_node_info gauge\nrunyard_node_info{{node=\"{}\",name=\"{}\"}} 1",
            escape(&snap.node.0),
            escape(&snap.node.1)
        );
        let _ = writeln!(
            out,
            "# HELP runyard_pipeline_paused 1 while the pipeline is paused (no node claims its jobs).\n# TYPE runyard_pipeline_paused gauge"
        );
        for (p, _, _) in &snap.pipelines {
            let _ = writeln!(
                out,
                "runyard_pipeline_paused{{pipeline=\"{}\"}} {}",
                escape(p),
                u8::from(snap.paused.contains(p))
            );
        }
        let _ = writeln!(
            out,
            "# HELP runyard_node_slots Slots of this node.\n# TYPE runyard_node_slots gauge\nrunyard_node_slots {}\n# HELP runyard_node_slots_busy Busy slots of this node.\n# TYPE runyard_node_slots_busy gauge\nrunyard_node_slots_busy {}",
            snap.slots.0, snap.slots.1
        );
        // Every pipeline this node has run, and every configured one (zeros until it runs).
        let mut per_pipeline = self
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (p, _, _) in &snap.pipelines {
            per_pipeline.entry(p.clone()).or_default();
        }
        let _ = writeln!(
            out,
            "# HELP runyard_job_ends_total Executions ended on this node, by pipeline and outcome.\n# TYPE runyard_job_ends_total counter"
        );
        for (p, inst) in &per_pipeline {
            let p = escape(p);
            for (name, ending) in OUTCOMES {
                let n = inst.ends[ending as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "runyard_job_ends_total{{pipeline=\"{p}\",outcome=\"{name}\"}} {n}"
                );
            }
        }
        for (name, help, counter) in [
            (
                "runyard_aborts_total",
                "Run aborts accepted by this node.",
                &self.aborts,
            ),
            (
                "runyard_workflow_runs_created_total",
                "Workflow runs created through this node (triggers and re-runs, not replays).",
                &self.workflow_runs_created,
            ),
            (
                "runyard_workflow_aborts_total",
                "Workflow run aborts accepted by this node.",
                &self.workflow_aborts,
            ),
            (
                "runyard_schedule_fires_total",
                "Schedule ticks fired by this node (one node fires each tick; sum over nodes).",
                &self.schedule_fires,
            ),
            (
                "runyard_orphans_recovered_total",
                "Orphaned executions of dead nodes resolved by this node.",
                &self.orphans_recovered,
            ),
            (
                "runyard_nodes_declared_dead_total",
                "Other nodes this node declared dead and removed, winning their rescue.",
                &self.nodes_declared_dead,
            ),
            (
                "runyard_self_fences_total",
                "Times this node stopped its jobs because no heartbeat was accepted within its lease.",
                &self.self_fences,
            ),
            (
                "runyard_bus_aborts_handled_total",
                "Aborts from the bus this node has handled (marked in the store, local shards stopped).",
                &self.bus_aborts_handled,
            ),
            (
                "runyard_webhooks_delivered_total",
                "Completion webhooks delivered by this node.",
                &self.webhooks_delivered,
            ),
            (
                "runyard_webhook_failed_attempts_total",
                "Failed completion webhook attempts made by this node.",
                &self.webhook_failures,
            ),
            (
                "runyard_log_stream_wakeups_total",
                "Times a log stream on this node woke to read the store (its job changed, or a poll).",
                &self.log_stream_wakeups,
            ),
        ] {
            let n = counter.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP runyard_sse_clients Open SSE streams on this node.\n# TYPE runyard_sse_clients gauge\nrunyard_sse_clients {}",
            snap.sse_clients
        );
        if let Some(bus) = &snap.bus {
            render_bus(&mut out, bus);
        }
        self.claim_latency.render(
            &mut out,
            "runyard_claim_latency_seconds",
            "Time from a job being due to its claim.",
        );
        let name = "runyard_job_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Run time of executions on this node, by pipeline.\n# TYPE {name} histogram"
        );
        for (p, inst) in &per_pipeline {
            inst.duration
                .render_series(&mut out, name, &format!("pipeline=\"{}\",", escape(p)));
        }
        self.flush_lag.render(
            &mut out,
            "runyard_output_flush_lag_seconds",
            "Age of the oldest output line of a flush when it was committed.",
        );
        let _ = writeln!(
            out,
            "# HELP runyard_build_info The running build (always 1).\n# TYPE runyard_build_info gauge\nrunyard_build_info{{version=\"{}\"}} 1",
            escape(VERSION)
        );
        out
    }
}

/// The bus's series: `runyard_bus_connected{kind}`, and its message counters.
fn render_bus(out: &mut String, bus: &crate::bus::BusStatus) {
    let _ = writeln!(
        out,
        "# HELP runyard_bus_connected 1 while this node's bus is connected.\n# TYPE runyard_bus_connected gauge\nrunyard_bus_connected{{kind=\"{}\"}} {}",
        bus.kind,
        u8::from(bus.connected)
    );
    for (name, help, n) in [
        (
            "runyard_bus_reconnects_total",
            "Reconnections of the bus after a loss.",
            bus.reconnects,
        ),
        (
            "runyard_bus_messages_published_total",
            "Messages this node published on the bus.",
            bus.published,
        ),
        (
            "runyard_bus_messages_received_total",
            "Messages that arrived on the bus (own echoes included).",
            bus.received,
        ),
        (
            "runyard_bus_messages_dispatched_total",
            "Messages from other origins handed to this node's handlers.",
            bus.dispatched,
        ),
        (
            "runyard_bus_aborts_dispatched_total",
            "run-abort messages from other origins handed to this node's handlers.",
            bus.aborts_dispatched,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
        );
    }
    let name = "runyard_bus_messages_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} Bus messages dropped, by reason (malformed, own_origin, unsent).\n# TYPE {name} counter"
    );
    for (reason, n) in bus.dropped_by_reason {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.claim_latency.observe(Duration::from_micros(300));
        m.claim_latency.observe(Duration::from_millis(20));
        m.claim_latency.observe(Duration::from_secs(1000));
        m.job_ended("a\"b", JobEnd::Completed);
        m.job_ended("ran", JobEnd::Failed);
        m.job_duration("ran", Duration::from_millis(30));
        let text = m.render(&Snapshot {
            pipelines: vec![("a\"b".into(), 3, 1), ("idle".into(), 0, 0)],
            sse_clients: 2,
            slots: (2, 1),
            bus: Some(crate::bus::Bus::status(&crate::bus::LocalBus::default())),
            paused: ["idle".to_string()].into(),
            store_traffic: vec![("postgres", "job_finish", 9, 1)],
            backlog: vec![("gpu".into(), 12.5, 4)],
            node: ("n1".into(), "box:7878".into()),
        });
        assert!(text.contains("runyard_queue_oldest_seconds{pipeline=\"gpu\"} 12.500\n"));
        assert!(text.contains("runyard_jobs_unplaceable{pipeline=\"gpu\"} 4\n"));
        assert!(text.contains("runyard_node_info{node=\"n1\",name=\"box:7878\"} 1\n"));
        assert!(text.contains(
            "runyard_store_statements_total{backend=\"postgres\",op=\"job_finish\"} 9\n"
        ));
        assert!(
            text.contains(
                "runyard_store_commits_total{backend=\"postgres\",op=\"job_finish\"} 1\n"
            )
        );
        assert!(text.contains("runyard_pipeline_paused{pipeline=\"idle\"} 1\n"));
        assert!(text.contains("runyard_pipeline_paused{pipeline=\"a\\\"b\"} 0\n"));
        assert!(text.contains("runyard_claim_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("runyard_claim_latency_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("runyard_claim_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("runyard_claim_latency_seconds_count 3\n"));
        assert!(text.contains("runyard_queue_depth{pipeline=\"a\\\"b\"} 3\n"));
        assert!(
            text.contains("runyard_job_ends_total{pipeline=\"a\\\"b\",outcome=\"completed\"} 1\n")
        );
        assert!(text.contains("runyard_job_ends_total{pipeline=\"ran\",outcome=\"failed\"} 1\n"));
        // A configured pipeline that has not run here yet is there, at zero.
        assert!(
            text.contains("runyard_job_ends_total{pipeline=\"idle\",outcome=\"completed\"} 0\n")
        );
        assert!(
            text.contains("runyard_job_duration_seconds_bucket{pipeline=\"ran\",le=\"0.05\"} 1\n")
        );
        assert!(text.contains("runyard_job_duration_seconds_count{pipeline=\"ran\"} 1\n"));
        assert!(text.contains("runyard_job_duration_seconds_count{pipeline=\"idle\"} 0\n"));
        assert!(text.contains(&format!("runyard_build_info{{version=\"{VERSION}\"}} 1\n")));
        assert!(text.contains("runyard_sse_clients 2\n"));
        assert!(text.contains("runyard_bus_connected{kind=\"local\"} 1\n"));
        assert!(text.contains("runyard_bus_messages_dropped_total{reason=\"unsent\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
        }
    }
}
