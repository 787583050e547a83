//! Commands that read one part of a flow: `step show`, `decision show`, `flow invite list`; and
//! the check `flow fulfil` makes before a customer confirms a flow with work still open.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use super::print::{emit, emit_json, time};
use crate::api::{self, Call, Reply};
use crate::error::{Error, Result};
use crate::flow::{resolve_prefix, Decision, Flow, Invite, Mode, Step, StepStatus};
use crate::repo::FlowView;
use crate::text::{self, clip, lines, one_line};

/// The flow a prefix names, as this node holds it.
fn view(handle: &mut dyn api::Handle, flow: &str) -> Result<FlowView> {
    match handle.call(Call::FlowShow { flow: flow.into() })? {
        Reply::Flow(view) => Ok(*view),
        _ => Err(Error::Invalid("unexpected answer to a flow show".into())),
    }
}

fn step<'a>(f: &'a Flow, prefix: &str) -> Result<&'a Step> {
    let id = resolve_prefix("step", prefix, f.steps.iter().map(|s| s.id.as_str()))?;
    Ok(f.steps.iter().find(|s| s.id == id).expect("resolved"))
}

fn decision<'a>(f: &'a Flow, prefix: &str) -> Result<&'a Decision> {
    let id = resolve_prefix(
        "decision",
        prefix,
        f.decisions.iter().map(|d| d.id.as_str()),
    )?;
    Ok(f.decisions.iter().find(|d| d.id == id).expect("resolved"))
}

/// `coflow step show FLOW STEP`: the step, its comments and its decisions.
pub(super) fn step_show(
    handle: &mut dyn api::Handle,
    json: bool,
    flow: &str,
    prefix: &str,
) -> Result<()> {
    let v = view(handle, flow)?;
    let f = &v.flow;
    let st = step(f, prefix)?;
    let comments: Vec<_> = f
        .comments
        .iter()
        .filter(|c| c.step.as_deref() == Some(&st.id))
        .collect();
    let decisions: Vec<_> = (f.decisions.iter())
        .filter(|d| d.step.as_deref() == Some(&st.id))
        .collect();
    if json {
        let mut out = serde_json::to_value(st).expect("a step serializes");
        out["flow"] = json!(f.id);
        out["comments"] = json!(comments);
        out["decisions"] = json!(decisions);
        emit_json(&out);
        return Ok(());
    }
    let clashing = f.clashing_names();
    let mut s = format!(
        "{}  [{}]\n{}  in {}\n",
        clip(&st.title, 200),
        st.status,
        one_line(&st.id),
        clip(&f.title, 200)
    );
    let assignee = match &st.assignee {
        Some(a) => text::person_marked(f, &clashing, a),
        None => "nobody".into(),
    };
    s.push_str(&format!("Assigned to: {assignee}\n"));
    if st.customer_involved {
        s.push_str("The customer takes part.\n");
    }
    if let Some(due) = &st.due {
        s.push_str(&format!("Due: {}\n", one_line(due)));
    }
    s.push_str(&format!(
        "Added by: {}\n",
        text::person_marked(f, &clashing, &st.created_by)
    ));
    if !st.detail.is_empty() {
        s.push_str(&format!("\n{}\n", lines(&st.detail, "")));
    }
    for d in &decisions {
        s.push_str(&format!(
            "\nDecision {}  {}\n",
            one_line(&d.id),
            clip(&d.question, 200)
        ));
    }
    if !comments.is_empty() {
        s.push_str("\nComments:\n");
        for c in comments {
            s.push_str(&format!(
                "  {} {}: {}\n",
                time(c.at),
                text::person_marked(f, &clashing, &c.author),
                lines(&c.text, "      ")
            ));
        }
    }
    emit(&s);
    Ok(())
}

/// `coflow decision show FLOW DECISION`: the question, who chooses, the options with their
/// votes, who chose what, and the outcome.
pub(super) fn decision_show(
    handle: &mut dyn api::Handle,
    json: bool,
    flow: &str,
    prefix: &str,
) -> Result<()> {
    let v = view(handle, flow)?;
    let f = &v.flow;
    let d = decision(f, prefix)?;
    if json {
        let mut out = serde_json::to_value(d).expect("a decision serializes");
        out["flow"] = json!(f.id);
        emit_json(&out);
        return Ok(());
    }
    let clashing = f.clashing_names();
    let state = match (&d.outcome, d.closed) {
        (Some(o), _) => format!("decided: {}", clip(o, 200)),
        (None, true) => "closed with no outcome".into(),
        (None, false) => "open".into(),
    };
    let mut s = format!(
        "{}\n{}  in {}\n{} ({}, {} decides)\n",
        clip(&d.question, 200),
        one_line(&d.id),
        clip(&f.title, 200),
        state,
        d.mode,
        d.who
    );
    if let Some(step) = d
        .step
        .as_deref()
        .and_then(|id| f.steps.iter().find(|s| s.id == id))
    {
        s.push_str(&format!("For step: {}\n", clip(&step.title, 200)));
    }
    s.push_str("\nOptions:\n");
    for (option, votes) in d.tally() {
        let count = if d.mode == Mode::Vote {
            format!("{votes:>4}  ")
        } else {
            String::new()
        };
        s.push_str(&format!("  {count}{}\n", clip(&option, 200)));
    }
    if !d.choices.is_empty() {
        s.push_str("\nChosen:\n");
        for (who, option) in &d.choices {
            s.push_str(&format!(
                "  {}: {}\n",
                text::person_marked(f, &clashing, who),
                clip(option, 200)
            ));
        }
    }
    emit(&s);
    Ok(())
}

/// What became of an invite, at `now`.
fn invite_state(i: &Invite, now: i64) -> &'static str {
    if i.revoked {
        "revoked"
    } else if i.uses_left <= 0 {
        "used up"
    } else if i.expires_at > 0 && i.expires_at <= now {
        "expired"
    } else {
        "open"
    }
}

/// `coflow flow invite list FLOW`: every invite of the flow, and what became of it.
pub(super) fn invite_list(handle: &mut dyn api::Handle, json: bool, flow: &str) -> Result<()> {
    let v = view(handle, flow)?;
    let f = &v.flow;
    let now = crate::clock::system_clock();
    if json {
        let rows: Vec<_> = (f.invites.iter())
            .map(|i| {
                let mut row = serde_json::to_value(i).expect("an invite serializes");
                row["state"] = json!(invite_state(i, now));
                row
            })
            .collect();
        emit_json(&rows);
        return Ok(());
    }
    if f.invites.is_empty() {
        emit("no invites (`coflow flow invite FLOW --role ROLE` makes one)\n");
        return Ok(());
    }
    let clashing = f.clashing_names();
    let mut s = String::new();
    for i in &f.invites {
        s.push_str(&format!(
            "{}  {:<11} {:<8} {} use(s) left, {}, by {}\n",
            one_line(&i.id),
            i.role.as_str(),
            invite_state(i, now),
            i.uses_left.max(0),
            match i.expires_at {
                t if t > 0 => format!("expires {}", time(t)),
                _ => "never expires".into(),
            },
            text::person_marked(f, &clashing, &i.created_by)
        ));
    }
    emit(&s);
    Ok(())
}

/// Before `flow fulfil`: steps not done or skipped and decisions not settled mean the flow is
/// not yet what the customer asked for. Without `force`, a terminal is asked to confirm, and
/// anything else (a script, `--json`) is refused with what is still open.
pub(super) fn confirm_fulfil(
    home: &std::path::Path,
    json: bool,
    flow: &str,
    force: bool,
) -> Result<()> {
    if force {
        return Ok(());
    }
    // The store is closed again before anyone is asked: opened without the node, it holds the
    // data dir's lock.
    let v = view(&mut *api::open(home)?, flow)?;
    let f = &v.flow;
    if v.my_role != Some(crate::flow::Role::Customer) {
        // Not a customer's to confirm: the flow refuses it as such.
        return Ok(());
    }
    let steps: Vec<&Step> = (f.steps.iter())
        .filter(|s| !matches!(s.status, StepStatus::Done | StepStatus::Skipped))
        .collect();
    let decisions: Vec<&Decision> = (f.decisions.iter())
        .filter(|d| d.outcome.is_none() && !d.closed)
        .collect();
    if steps.is_empty() && decisions.is_empty() {
        return Ok(());
    }
    let mut open: Vec<String> = Vec::new();
    if !steps.is_empty() {
        let titles: Vec<String> = steps
            .iter()
            .map(|s| format!("'{}'", clip(&s.title, 60)))
            .collect();
        open.push(format!(
            "{} step(s) not done ({})",
            steps.len(),
            titles.join(", ")
        ));
    }
    if !decisions.is_empty() {
        let questions: Vec<String> = (decisions.iter())
            .map(|d| format!("'{}'", clip(&d.question, 60)))
            .collect();
        open.push(format!(
            "{} decision(s) open ({})",
            decisions.len(),
            questions.join(", ")
        ));
    }
    let open = open.join(" and ");
    let stdin = std::io::stdin();
    if !json && stdin.is_terminal() && std::io::stderr().is_terminal() {
        eprint!("{open}. Confirm the need fulfilled anyway? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| Error::Invalid(format!("cannot read the answer: {e}")))?;
        if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
            return Ok(());
        }
        return Err(Error::Invalid("not confirmed: the flow stays open".into()));
    }
    Err(Error::Invalid(format!(
        "{open}: finish them first, or confirm with `coflow flow fulfil {} --force`",
        &f.id[..8.min(f.id.len())]
    )))
}
