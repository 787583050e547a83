//! Exports of a flow: process diagrams (Graphviz dot, Mermaid).
//!
//! Steps are drawn in order as a process, each with its status and who is involved (assignee,
//! and the customer where a step involves them); decisions hang off the step they belong to.

use crate::flow::{Decision, Flow, FlowStatus, Step, StepStatus};

fn who(flow: &Flow, s: &Step) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &s.assignee {
        parts.push(flow.name_of(a));
    }
    if s.customer_involved {
        parts.push("with the customer".to_string());
    }
    parts.join(", ")
}

fn decision_label(d: &Decision) -> String {
    match &d.outcome {
        Some(o) => format!("{} → {}", d.question, o),
        None => format!("{} ({})", d.question, d.options.join(" / ")),
    }
}

/// What the diagram's last node says.
fn end_label(status: FlowStatus) -> &'static str {
    match status {
        FlowStatus::Fulfilled => "Fulfilled (confirmed by the customer)",
        FlowStatus::Closed => "Closed",
        FlowStatus::Open => "Open",
    }
}

/// The node a decision hangs off: its step if it names one that exists, else the need.
fn decision_anchor(flow: &Flow, d: &Decision) -> String {
    d.step
        .as_ref()
        .filter(|id| flow.steps.iter().any(|s| &s.id == *id))
        .map(|id| format!("s_{id}"))
        .unwrap_or_else(|| "need".to_string())
}

fn step_colour(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Done => "palegreen",
        StepStatus::Active => "lightskyblue",
        StepStatus::Waiting => "khaki",
        StepStatus::Skipped => "lightgrey",
        StepStatus::Todo => "white",
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

/// Graphviz dot.
pub fn dot(flow: &Flow) -> String {
    let mut out = String::new();
    out.push_str("digraph flow {\n  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
    out.push_str(&format!(
        "  need [shape=ellipse, fillcolor=lightyellow, label=\"Need: {}\"];\n",
        dot_escape(&flow.need)
    ));
    let mut prev = "need".to_string();
    for s in &flow.steps {
        let node = format!("s_{}", s.id);
        let who = who(flow, s);
        let label = if who.is_empty() {
            format!("{}\\n[{}]", dot_escape(&s.title), s.status)
        } else {
            format!(
                "{}\\n[{}] {}",
                dot_escape(&s.title),
                s.status,
                dot_escape(&who)
            )
        };
        out.push_str(&format!(
            "  {node} [label=\"{label}\", fillcolor={}];\n  {prev} -> {node};\n",
            step_colour(s.status)
        ));
        prev = node;
    }
    out.push_str(&format!(
        "  end [shape=ellipse, fillcolor={}, label=\"{}\"];\n  {prev} -> end;\n",
        if flow.status == FlowStatus::Fulfilled {
            "palegreen"
        } else {
            "white"
        },
        end_label(flow.status)
    ));
    for d in &flow.decisions {
        let node = format!("d_{}", d.id);
        out.push_str(&format!(
            "  {node} [shape=diamond, style=filled, fillcolor={}, label=\"{}\\n({})\"];\n",
            if d.closed { "palegreen" } else { "white" },
            dot_escape(&decision_label(d)),
            d.who
        ));
        let anchor = decision_anchor(flow, d);
        out.push_str(&format!("  {anchor} -> {node} [style=dashed];\n"));
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', " ")
}

/// Mermaid flowchart.
pub fn mermaid(flow: &Flow) -> String {
    let mut out = String::from("flowchart TD\n");
    out.push_str(&format!(
        "  need([\"Need: {}\"])\n",
        mermaid_escape(&flow.need)
    ));
    let mut prev = "need".to_string();
    for s in &flow.steps {
        let node = format!("s_{}", s.id);
        let who = who(flow, s);
        let label = if who.is_empty() {
            format!("{}<br/>[{}]", mermaid_escape(&s.title), s.status)
        } else {
            format!(
                "{}<br/>[{}] {}",
                mermaid_escape(&s.title),
                s.status,
                mermaid_escape(&who)
            )
        };
        out.push_str(&format!("  {node}[\"{label}\"]\n  {prev} --> {node}\n"));
        out.push_str(&format!("  class {node} {}\n", s.status));
        prev = node;
    }
    let end = end_label(flow.status);
    out.push_str(&format!("  flow_end([\"{end}\"])\n  {prev} --> flow_end\n"));
    for d in &flow.decisions {
        let node = format!("d_{}", d.id);
        out.push_str(&format!(
            "  {node}{{\"{} ({})\"}}\n",
            mermaid_escape(&decision_label(d)),
            d.who
        ));
        let anchor = decision_anchor(flow, d);
        out.push_str(&format!("  {anchor} -.- {node}\n"));
    }
    out.push_str("  classDef done fill:#cfc\n  classDef active fill:#cdf\n  classDef waiting fill:#ffc\n  classDef skipped fill:#ddd\n  classDef todo fill:#fff\n");
    out
}
