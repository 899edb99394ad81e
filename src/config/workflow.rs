//! `[workflows.NAME]`: a named graph of steps, each a run of a pipeline, started
//! together by one trigger.
//!
//! Why here: a workflow is only as good as the pipelines and parameters it names, and
//! a step that would fail to start in the middle of a workflow run (an unknown pipeline,
//! a parameter the pipeline does not declare or a required one left out, a placeholder
//! with no value, a cycle in `needs`) would leave the run half done. So the whole graph
//! is checked at start against the validated pipelines, each error blamed on its file,
//! line and dotted key like every other setting, and what the scheduler gets is the
//! steps in an order it can start them in.

use std::collections::{BTreeMap, BTreeSet};

use super::pipeline_parts::valid_name;
use super::raw::{RawWorkflow, RawWorkflowStep};
use super::*;
use crate::model::AfterWhen;
use crate::model::template::brace_hint;

/// A validated workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Its name (the table key; pipelines and workflows share one namespace).
    pub name: String,
    /// Its own parameters (`[workflows.NAME.params.P]`), what a trigger of it gives.
    pub params: BTreeMap<String, ParamSpec>,
    /// Its steps in topological order, as the store creates their runs
    /// ([`crate::model::topological`]): every step after all the steps it needs, the
    /// steps that become ready together by name.
    pub steps: Vec<WorkflowStep>,
}

/// One step of a workflow: a run of a pipeline.
#[derive(Debug, Clone)]
pub struct WorkflowStep {
    /// Its name (the table key under `steps`).
    pub name: String,
    /// The pipeline it runs (one declared under `[pipelines]`).
    pub pipeline: String,
    /// The parameters it passes, each one the pipeline declares, as templates over the
    /// workflow's parameters; every required one (no default) is among them.
    pub params: BTreeMap<String, Template>,
    /// The steps that end before it starts (as written; duplicates are refused).
    pub needs: Vec<String>,
    /// When it starts once they have all ended (`success` by default).
    pub when: AfterWhen,
}

impl Workflow {
    /// Renders each step's parameters from the workflow run's validated parameters.
    pub fn step_params(
        &self,
        step: &WorkflowStep,
        values: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        step.params
            .iter()
            .map(|(name, tpl)| (name.clone(), tpl.render(|v| values.get(v).cloned())))
            .collect()
    }

    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&WorkflowStep> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// `did you mean `x`? ` when one candidate is close to `got`, else nothing.
fn hint<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match nearest(got, candidates) {
        Some(n) => format!("did you mean `{n}`? "),
        None => String::new(),
    }
}

impl Loader<'_> {
    /// The line of the first table header that is `table` or inside it, 0 if none
    /// (spaces and quotes aside: `[workflows."bad name"]` is found too).
    fn first_header(&self, table: &str) -> usize {
        let bare = |s: &str| s.replace([' ', '"', '\''], "");
        let exact = format!("[{}]", bare(table));
        let inside = format!("[{}.", bare(table));
        self.text
            .lines()
            .position(|line| {
                let t = bare(line.trim());
                t == exact || t.starts_with(&inside)
            })
            .map_or(0, |i| i + 1)
    }

    /// The line where `key` of `table` is written, else that of the nearest enclosing
    /// table written in the file (a workflow may be written only as its sub-tables).
    fn line_in(&self, table: &str, key: Option<&str>) -> usize {
        let mut line = self.line_of(table, key);
        let mut scope = table;
        while line == 0 && !scope.is_empty() {
            line = self.first_header(scope);
            scope = scope.rsplit_once('.').map_or("", |(parent, _)| parent);
        }
        line
    }

    /// An error at `table.key`, on `line`.
    fn error_at(
        &self,
        line: usize,
        table: &str,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key: match key {
                Some(k) => format!("{table}.{k}"),
                None => table.to_string(),
            },
            message: message.into(),
        }
    }

    /// An error at `table.key`, on the line [`Self::line_in`] finds.
    fn workflow_error(
        &self,
        table: &str,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error_at(self.line_in(table, key), table, key, message)
    }

    pub(super) fn workflow(
        &self,
        name: &str,
        rw: &RawWorkflow,
        pipelines: &BTreeMap<String, Arc<Pipeline>>,
        workflows: &BTreeMap<String, RawWorkflow>,
    ) -> Result<Workflow, ConfigError> {
        let t = format!("workflows.{name}");
        let t = t.as_str();
        if !valid_name(name) {
            return Err(self.workflow_error(
                t,
                None,
                "workflow names use letters, digits, '-' and '_' (at most 64)",
            ));
        }
        if pipelines.contains_key(name) {
            return Err(self.workflow_error(
                t,
                None,
                format!(
                    "`{name}` is also a pipeline: pipelines and workflows share one namespace (a trigger names either)"
                ),
            ));
        }
        let params = self.param_specs(t, &rw.params)?;
        if rw.steps.is_empty() {
            return Err(self.workflow_error(
                t,
                Some("steps"),
                format!("a workflow has at least one step: add [{t}.steps.NAME] with its pipeline"),
            ));
        }
        let mut steps = BTreeMap::new();
        for (sname, rs) in &rw.steps {
            let step = self.workflow_step(t, sname, rs, &params, pipelines, workflows)?;
            steps.insert(sname.clone(), step);
        }
        for (sname, step) in &steps {
            self.check_needs(t, sname, &step.needs, &steps)?;
        }
        let steps = self.topological(t, steps)?;
        Ok(Workflow {
            name: name.to_string(),
            params,
            steps,
        })
    }

    fn workflow_step(
        &self,
        t: &str,
        name: &str,
        rs: &RawWorkflowStep,
        wf_params: &BTreeMap<String, ParamSpec>,
        pipelines: &BTreeMap<String, Arc<Pipeline>>,
        workflows: &BTreeMap<String, RawWorkflow>,
    ) -> Result<WorkflowStep, ConfigError> {
        let st = format!("{t}.steps.{name}");
        let st = st.as_str();
        if !valid_name(name) {
            return Err(self.workflow_error(
                st,
                None,
                "step names use letters, digits, '-' and '_' (at most 64)",
            ));
        }
        let Some(pipeline) = pipelines.get(&rs.pipeline) else {
            let pname = &rs.pipeline;
            let message = if workflows.contains_key(pname) {
                format!("`{pname}` is a workflow; a step runs a pipeline")
            } else {
                format!(
                    "unknown pipeline `{pname}`: {}declare [pipelines.{pname}]",
                    hint(pname, pipelines.keys().map(String::as_str))
                )
            };
            return Err(self.workflow_error(st, Some("pipeline"), message));
        };
        let when = match &rs.when {
            None => AfterWhen::default(),
            Some(w) => AfterWhen::from_name(w).ok_or_else(|| {
                let close = match nearest(w, ["success", "failure", "always"]) {
                    Some(n) => format!(": did you mean `{n}`?"),
                    None => String::new(),
                };
                self.workflow_error(
                    st,
                    Some("when"),
                    format!("must be success, failure or always, not `{w}`{close}"),
                )
            })?,
        };
        if rs.when.is_some() && rs.needs.is_empty() {
            return Err(self.workflow_error(
                st,
                Some("when"),
                "applies to the steps in `needs`, and there are none (a step without needs starts with the workflow)",
            ));
        }
        let mut params = BTreeMap::new();
        for (pname, text) in &rs.params {
            // Written in `params = { .. }` (blamed on that line) or in its own table.
            let blame = |message: String| {
                let line = match self.line_of(&format!("{st}.params"), Some(pname)) {
                    0 => self.line_in(st, Some("params")),
                    n => n,
                };
                self.error_at(line, st, Some(&format!("params.{pname}")), message)
            };
            let Some(spec) = pipeline.params.get(pname) else {
                return Err(blame(format!(
                    "pipeline `{}` declares no parameter `{pname}`: {}declare [pipelines.{}.params.{pname}]",
                    pipeline.name,
                    hint(pname, pipeline.params.keys().map(String::as_str)),
                    pipeline.name
                )));
            };
            let tpl = Template::parse(text).map_err(blame)?;
            if let Some(var) = tpl.vars().find(|v| !wf_params.contains_key(*v)) {
                let known = wf_params.keys().map(String::as_str);
                return Err(blame(format!(
                    "unknown placeholder {{{var}}}: {}declare [{t}.params.{var}] (a step's values are templates over the workflow's parameters){}",
                    match nearest(var, known) {
                        Some(n) => format!("did you mean {{{n}}}? "),
                        None => String::new(),
                    },
                    brace_hint(text)
                )));
            }
            // A constant is checked now against the pipeline's rules; a rendered value
            // is checked when the step's run is created, like a trigger's.
            if tpl.vars().next().is_none() {
                let value = serde_json::Value::String(tpl.render(|_| None));
                spec.accept(&value).map_err(|m| {
                    blame(format!(
                        "refused by parameter `{pname}` of pipeline `{}`: {m}",
                        pipeline.name
                    ))
                })?;
            }
            params.insert(pname.clone(), tpl);
        }
        if let Some((missing, _)) = pipeline
            .params
            .iter()
            .find(|(p, spec)| spec.default.is_none() && !params.contains_key(*p))
        {
            return Err(self.workflow_error(
                st,
                Some("params"),
                format!(
                    "step {name} does not pass required parameter {missing} of pipeline {} (it has no default): add it to params, e.g. {missing} = \"{{{missing}}}\"",
                    pipeline.name
                ),
            ));
        }
        Ok(WorkflowStep {
            name: name.to_string(),
            pipeline: pipeline.name.clone(),
            params,
            needs: rs.needs.clone(),
            when,
        })
    }

    /// `needs`: other steps of the same workflow, each once.
    fn check_needs(
        &self,
        t: &str,
        name: &str,
        needs: &[String],
        steps: &BTreeMap<String, WorkflowStep>,
    ) -> Result<(), ConfigError> {
        let st = format!("{t}.steps.{name}");
        let mut seen = BTreeSet::new();
        for need in needs {
            let message = if need == name {
                format!("a step cannot need itself (`{name}`)")
            } else if !steps.contains_key(need) {
                let others = steps.keys().map(String::as_str).filter(|s| *s != name);
                format!(
                    "unknown step `{need}`: {}steps of {t}: {}",
                    hint(need, others.clone()),
                    others.collect::<Vec<_>>().join(", ")
                )
            } else if !seen.insert(need.as_str()) {
                format!("`{need}` is listed twice")
            } else {
                continue;
            };
            return Err(self.workflow_error(&st, Some("needs"), message));
        }
        Ok(())
    }

    /// The steps in the order the store creates them ([`crate::model::topological`]:
    /// each after all it needs, ties by name); a cycle is an error naming it, blamed on
    /// the `needs` of its first step by name.
    fn topological(
        &self,
        t: &str,
        mut steps: BTreeMap<String, WorkflowStep>,
    ) -> Result<Vec<WorkflowStep>, ConfigError> {
        let graph: Vec<(String, Vec<String>)> = steps
            .values()
            .map(|s| (s.name.clone(), s.needs.clone()))
            .collect();
        if let Some(order) = crate::model::topological(&graph) {
            return Ok(order
                .into_iter()
                .map(|name| steps.remove(name).expect("a step of the graph"))
                .collect());
        }
        // Take away the steps that can start; every step left needs another one left.
        while let Some(free) = steps
            .values()
            .find(|s| s.needs.iter().all(|n| !steps.contains_key(n)))
            .map(|s| s.name.clone())
        {
            steps.remove(&free);
        }
        // Every step left needs another one left: walk from the first until a step
        // repeats; the walk from its first visit is a cycle.
        let mut path: Vec<&str> = Vec::new();
        let mut at = steps.keys().next().expect("not empty").as_str();
        while !path.contains(&at) {
            path.push(at);
            at = steps[at]
                .needs
                .iter()
                .find(|n| steps.contains_key(*n))
                .expect("a step left needs a step left");
        }
        let start = path.iter().position(|s| *s == at).expect("repeated");
        let mut cycle = path.split_off(start);
        let first = (0..cycle.len()).min_by_key(|i| cycle[*i]).unwrap_or(0);
        cycle.rotate_left(first);
        cycle.push(cycle[0]);
        Err(self.workflow_error(
            &format!("{t}.steps.{}", cycle[0]),
            Some("needs"),
            format!(
                "cycle in needs: {} (each step needs the next)",
                cycle.join(" → ")
            ),
        ))
    }
}
