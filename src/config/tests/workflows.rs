//! Workflows: a valid graph in the order its steps can start, its parameters rendered
//! per step, and every mistake in one blamed on its key and line at start.

use super::*;
use crate::model::AfterWhen;

/// Three pipelines (lines 1–10): `build` requires `sha`, `test` has `suite` with a
/// default, `report` has no parameters. Workflows follow from line 11.
const PIPELINES: &str = r#"[pipelines.build]
command = ["true", "{sha}"]
[pipelines.build.params.sha]
pattern = "[0-9a-f]{7,40}"
[pipelines.test]
command = ["true", "{suite}"]
[pipelines.test.params.suite]
default = "unit"
[pipelines.report]
command = ["true"]
"#;

const RELEASE: &str = r#"[workflows.release.params.sha]
pattern = "[0-9a-f]{7,40}"
[workflows.release.steps.report]
pipeline = "report"
needs = ["test"]
when = "always"
[workflows.release.steps.test]
pipeline = "test"
needs = ["build"]
params = { suite = "e2e-{sha}" }
[workflows.release.steps.build]
pipeline = "build"
params = { sha = "{sha}" }
"#;

/// The error of `PIPELINES` followed by `workflows`.
fn error(workflows: &str) -> String {
    load(&format!("{PIPELINES}{workflows}"))
        .expect_err("the config should be refused")
        .to_string()
}

#[track_caller]
fn assert_blames(workflows: &str, at: &str, says: &str) {
    let err = error(workflows);
    assert!(
        err.contains(&format!("/tmp/runyard.toml:{at}: ")) && err.contains(says),
        "expected {at:?} and {says:?} in: {err}"
    );
}

#[test]
fn a_valid_workflow_loads_in_the_order_its_steps_can_start() {
    let s = load(&format!("{PIPELINES}{RELEASE}")).unwrap();
    let w = &s.workflows["release"];
    assert_eq!(w.name, "release");
    assert!(w.params["sha"].default.is_none());
    let names: Vec<&str> = w.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["build", "test", "report"],
        "needs first, not by name"
    );
    let report = w.step("report").unwrap();
    assert_eq!(
        (report.pipeline.as_str(), report.when),
        ("report", AfterWhen::Always)
    );
    assert_eq!(report.needs, ["test"]);
    assert_eq!(w.step("build").unwrap().when, AfterWhen::Success);
    assert!(w.step("deploy").is_none());

    let values = BTreeMap::from([("sha".to_string(), "abc1234".to_string())]);
    let build = w.step_params(w.step("build").unwrap(), &values);
    assert_eq!(build, BTreeMap::from([("sha".into(), "abc1234".into())]));
    let test = w.step_params(w.step("test").unwrap(), &values);
    assert_eq!(test["suite"], "e2e-abc1234");
    assert!(w.step_params(report, &values).is_empty());
    assert!(s.pipelines.contains_key("build") && !s.workflows.contains_key("build"));
}

#[test]
fn steps_are_ordered_by_layers_then_name_and_params_may_be_their_own_table() {
    let s = load(&format!(
        "{PIPELINES}[workflows.ci.steps.zeta]\npipeline = \"report\"\n\
         [workflows.ci.steps.y]\npipeline = \"report\"\n\
         [workflows.ci.steps.b]\npipeline = \"test\"\nneeds = [\"zeta\"]\n\
         [workflows.ci.steps.a]\npipeline = \"test\"\nneeds = [\"zeta\"]\n\
         [workflows.ci.steps.c]\npipeline = \"build\"\nneeds = [\"a\", \"b\"]\nwhen = \"failure\"\n\
         [workflows.ci.steps.c.params]\nsha = \"deadbeef\"\n"
    ))
    .unwrap();
    let w = &s.workflows["ci"];
    let names: Vec<&str> = w.steps.iter().map(|s| s.name.as_str()).collect();
    // As the store orders them (`model::topological`): by layers, each by name.
    assert_eq!(names, ["y", "zeta", "a", "b", "c"]);
    assert_eq!(w.step("c").unwrap().when, AfterWhen::Failure);
    let c = w.step_params(w.step("c").unwrap(), &BTreeMap::new());
    assert_eq!(c["sha"], "deadbeef");
    assert!(w.params.is_empty());
}

#[test]
fn workflow_names_share_the_pipelines_namespace_and_rule() {
    assert_blames(
        "[workflows.build.steps.a]\npipeline = \"test\"\n",
        "11: workflows.build",
        "is also a pipeline",
    );
    assert_blames(
        "\n[workflows.\"bad name\".steps.a]\npipeline = \"test\"\n",
        "12: workflows.bad name",
        "workflow names use letters, digits",
    );
    assert_blames(
        "[workflows.w.steps.\"a b\"]\npipeline = \"test\"\n",
        "11: workflows.w.steps.a b",
        "step names use letters, digits",
    );
}

#[test]
fn a_workflow_has_steps() {
    assert_blames(
        "[workflows.empty]\n",
        "11: workflows.empty.steps",
        "at least one step",
    );
    // Only its parameters written: blamed on their table.
    assert_blames(
        "[workflows.empty.params.x]\ndefault = \"1\"\n",
        "11: workflows.empty.steps",
        "at least one step",
    );
}

#[test]
fn a_step_runs_a_known_pipeline() {
    assert_blames(
        "[workflows.w.steps.a]\npipeline = \"buld\"\n",
        "12: workflows.w.steps.a.pipeline",
        "unknown pipeline `buld`: did you mean `build`?",
    );
    assert_blames(
        "[workflows.w.steps.a]\npipeline = \"other\"\n[workflows.other.steps.b]\npipeline = \"report\"\n",
        "12: workflows.w.steps.a.pipeline",
        "`other` is a workflow; a step runs a pipeline",
    );
}

#[test]
fn needs_name_other_steps_once() {
    let two = "[workflows.w.steps.a]\npipeline = \"report\"\n[workflows.w.steps.b]\npipeline = \"report\"\n";
    assert_blames(
        &format!("{two}needs = [\"aa\"]\n"),
        "15: workflows.w.steps.b.needs",
        "unknown step `aa`: did you mean `a`? steps of workflows.w: a",
    );
    assert_blames(
        &format!("{two}needs = [\"a\", \"b\"]\n"),
        "15: workflows.w.steps.b.needs",
        "a step cannot need itself (`b`)",
    );
    assert_blames(
        &format!("{two}needs = [\"a\", \"a\"]\n"),
        "15: workflows.w.steps.b.needs",
        "`a` is listed twice",
    );
}

#[test]
fn a_cycle_in_needs_is_named() {
    let text = "[workflows.w.steps.start]\npipeline = \"report\"\n\
                [workflows.w.steps.b]\npipeline = \"report\"\nneeds = [\"a\"]\n\
                [workflows.w.steps.c]\npipeline = \"report\"\nneeds = [\"b\"]\n\
                [workflows.w.steps.a]\npipeline = \"report\"\nneeds = [\"start\", \"c\"]\n\
                [workflows.w.steps.after]\npipeline = \"report\"\nneeds = [\"a\"]\n";
    assert_blames(
        text,
        "21: workflows.w.steps.a.needs",
        "cycle in needs: a → c → b → a",
    );
}

#[test]
fn when_is_success_failure_or_always_and_needs_needs() {
    let base = "[workflows.w.steps.a]\npipeline = \"report\"\n[workflows.w.steps.b]\npipeline = \"report\"\nneeds = [\"a\"]\n";
    assert_blames(
        &format!("{base}when = \"alway\"\n"),
        "16: workflows.w.steps.b.when",
        "must be success, failure or always, not `alway`: did you mean `always`?",
    );
    assert_blames(
        &format!("{base}when = \"sometimes\"\n"),
        "16: workflows.w.steps.b.when",
        "not `sometimes`",
    );
    assert_blames(
        "[workflows.w.steps.a]\npipeline = \"report\"\nwhen = \"failure\"\n",
        "13: workflows.w.steps.a.when",
        "there are none",
    );
}

#[test]
fn step_params_are_declared_by_the_pipeline_and_fill_its_required_ones() {
    let step = "[workflows.w.params.sha]\n[workflows.w.steps.build]\npipeline = \"build\"\n";
    assert_blames(
        &format!("{step}params = {{ shaa = \"{{sha}}\" }}\n"),
        "14: workflows.w.steps.build.params.shaa",
        "pipeline `build` declares no parameter `shaa`: did you mean `sha`?",
    );
    assert_blames(
        step,
        "12: workflows.w.steps.build.params",
        "step build does not pass required parameter sha of pipeline build",
    );
    // A constant is checked against the pipeline's rules now.
    assert_blames(
        &format!("{step}params = {{ sha = \"XYZ\" }}\n"),
        "14: workflows.w.steps.build.params.sha",
        "refused by parameter `sha` of pipeline `build`: value does not match pattern",
    );
    // Written as its own table: blamed on the parameter's line.
    assert_blames(
        &format!("{step}[workflows.w.steps.build.params]\nsha = \"{{{{sha}}\"\n"),
        "15: workflows.w.steps.build.params.sha",
        "unmatched '}'",
    );
}

#[test]
fn step_params_use_only_workflow_params() {
    let step = "[workflows.w.params.sha]\n[workflows.w.steps.build]\npipeline = \"build\"\n";
    assert_blames(
        &format!("{step}params = {{ sha = \"{{shaa}}\" }}\n"),
        "14: workflows.w.steps.build.params.sha",
        "unknown placeholder {shaa}: did you mean {sha}? declare [workflows.w.params.shaa]",
    );
    // Built-in placeholders belong to a job, not to a workflow.
    assert_blames(
        &format!("{step}params = {{ sha = \"{{run_id}}\" }}\n"),
        "14: workflows.w.steps.build.params.sha",
        "unknown placeholder {run_id}",
    );
}

#[test]
fn workflow_params_are_checked_like_a_pipeline_s() {
    let steps = "[workflows.w.steps.a]\npipeline = \"report\"\n";
    assert_blames(
        &format!("[workflows.w.params.sha]\npattern = \"(\"\n{steps}"),
        "12: workflows.w.params.sha.pattern",
        "invalid regex",
    );
    assert_blames(
        &format!("[workflows.w.params.n]\ntype = \"integer\"\ndefault = \"x\"\n{steps}"),
        "13: workflows.w.params.n.default",
        "expected integer value",
    );
    assert_blames(
        &format!("[workflows.w.params.shard_count]\n{steps}"),
        "11: workflows.w.params.shard_count",
        "built-in placeholder",
    );
}

#[test]
fn unknown_keys_in_a_step_are_parse_errors_with_a_hint() {
    let err = error("[workflows.w.steps.a]\npipeline = \"report\"\nneed = [\"b\"]\n");
    assert!(
        err.contains("line 13") && err.ends_with("did you mean `needs`?"),
        "{err}"
    );
}
