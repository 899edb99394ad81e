//! Completions that know the server: pipeline and workflow names after `trigger`,
//! pipeline names after `pause` and `resume`, recent run and workflow run ids after
//! `abort`, `logs`, `show`, `wait` and `rerun`.
//!
//! The static script clap generates is extended with a little shell that asks
//! `runyard __complete pipelines|runs` (a hidden command) for the words; that command
//! asks the server at `RUNYARD_URL` (or `--server`) with a one-second limit and prints
//! nothing when none answers, so completion never hangs or errors on an absent server.
//! bash and fish get the dynamic words; other shells keep the static completions.

use std::time::Duration;

use serde_json::Value;

use super::client::Client;
use super::output::short_id;
use super::term;

/// How long a completion waits for the server.
const LIMIT: Duration = Duration::from_secs(1);
/// Recent runs offered.
const RECENT: usize = 20;

/// The words for `what` (`pipelines`, `targets`: pipelines and workflows, or `runs`:
/// runs and workflow runs), one per line; nothing on any failure.
pub(super) async fn words(client: &Client, what: &str) -> anyhow::Result<u8> {
    // (path, list key, field) of each answer the words come from.
    let sources: &[(&str, &str, &str)] = match what {
        "pipelines" => &[("/api/pipelines", "pipelines", "id")],
        "targets" => &[
            ("/api/pipelines", "pipelines", "id"),
            ("/api/workflows", "workflows", "id"),
        ],
        "runs" => &[
            ("/api/runs", "runs", "runId"),
            ("/api/workflow-runs", "workflowRuns", "workflowRunId"),
        ],
        _ => return Ok(super::exit::OK),
    };
    let mut words: Vec<String> = Vec::new();
    for (path, key, field) in sources {
        let path = if what == "runs" {
            format!("{path}?limit={RECENT}")
        } else {
            path.to_string()
        };
        // A server without workflows (an older one) still completes the rest.
        let Ok(Ok(answer)) = tokio::time::timeout(LIMIT, client.get(&path)).await else {
            continue;
        };
        let found = answer[*key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v: &Value| v[*field].as_str().map(str::to_string));
        if what == "runs" {
            words.extend(found.map(|r| short_id(&r)));
        } else {
            words.extend(found);
        }
    }
    if !words.is_empty() {
        term::out(words.join("\n"))?;
    }
    Ok(super::exit::OK)
}

/// The shell added after clap's script for `shell`, if it gets dynamic words.
pub(super) fn dynamic(shell: clap_complete::Shell) -> Option<&'static str> {
    match shell {
        clap_complete::Shell::Bash => Some(BASH),
        clap_complete::Shell::Fish => Some(FISH),
        _ => None,
    }
}

const BASH: &str = r#"
# Dynamic words from the server (runyard __complete), then clap's static completion.
_runyard_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" what=""
    case "$prev" in
        trigger) what=targets ;;
        pause|resume) what=pipelines ;;
        abort|logs|show|wait|rerun) what=runs ;;
    esac
    if [[ -n $what && $cur != -* ]]; then
        COMPREPLY=($(compgen -W "$(runyard __complete "$what" 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _runyard "$@"
}
complete -F _runyard_dynamic -o nosort -o bashdefault -o default runyard
"#;

const FISH: &str = r#"
# Dynamic words from the server (runyard __complete).
complete -c runyard -n '__fish_seen_subcommand_from trigger' -f -a '(runyard __complete targets 2>/dev/null)'
complete -c runyard -n '__fish_seen_subcommand_from pause resume' -f -a '(runyard __complete pipelines 2>/dev/null)'
complete -c runyard -n '__fish_seen_subcommand_from abort logs show wait rerun' -f -a '(runyard __complete runs 2>/dev/null)'
"#;
