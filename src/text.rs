//! Text from peers, made safe to show a person.
//!
//! Titles, needs, comments, step titles, decision questions and options, member names and
//! anything else another member wrote reach this node as arbitrary Unicode. Printed raw, such
//! text can clear the screen, set the terminal's title, plant hidden links (ANSI CSI and OSC
//! sequences), reorder what is shown (bidi overrides and isolates), hide characters (zero-width
//! and other invisible format characters) or fake lines of this program's own output (newlines).
//! Every human printer passes peer text through this module:
//!
//! - [`one_line`]: for a field shown on one line. Control characters (C0 incl. ESC, DEL, C1),
//!   bidi controls and invisible characters are shown as `\u{1b}`-style escapes, so the reader
//!   sees that something was there; a line break is shown as `⏎`; a long run of blanks (which
//!   could push text onto a line of its own in the terminal) is shown as `␣×N`.
//! - [`lines`]: for text that may keep its line breaks (the need, a comment): each line escaped
//!   as above and indented behind a `│` margin, so no line can pass for the program's own.
//! - [`name`] and [`member`]: a member's self-chosen name, always with what no member can choose:
//!   the role and the node id's suffix, `Carol (customer, …x7Kq2B)`; names that a reader could
//!   take for another member's are marked (see [`crate::flow::name_key`]).
//!
//! `--json` output is not escaped: it carries the raw values, and JSON's own escaping keeps
//! them from acting on a terminal.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::flow::{short_id, Did, Flow, FlowStatus, Member};

/// The mark after a name that another member's name could be taken for.
pub const SAME_NAME: &str = "⚠ same name as another member";

/// Runs of more blanks than this are shown counted.
const MAX_BLANKS: usize = 3;

/// Combining marks in a row beyond this are shown escaped (stacked marks can cover other lines).
const MAX_MARKS: usize = 3;

fn combining(c: char) -> bool {
    matches!(c,
        '\u{300}'..='\u{36f}' | '\u{483}'..='\u{489}' | '\u{1ab0}'..='\u{1aff}'
        | '\u{1dc0}'..='\u{1dff}' | '\u{20d0}'..='\u{20ff}' | '\u{fe20}'..='\u{fe2f}')
}

fn emoji(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27bf}' | '\u{fe0f}' | '\u{1f000}'..='\u{1faff}')
}

fn blank(c: char) -> bool {
    c.is_whitespace() || c == '\u{2800}'
}

/// Whether `c` may not be shown as itself. A zero-width joiner between two emoji is allowed
/// (it joins them into one picture); variation selectors after emoji likewise.
fn hidden(c: char, prev: Option<char>, next: Option<char>) -> bool {
    if c.is_control() {
        return true;
    }
    match c {
        '\u{200d}' => !(prev.is_some_and(emoji) && next.is_some_and(emoji)),
        '\u{fe00}'..='\u{fe0f}' => !prev.is_some_and(emoji),
        _ => crate::flow::invisible(c),
    }
}

fn escape_into(out: &mut String, c: char) {
    out.push_str(&format!("\\u{{{:x}}}", c as u32));
}

/// Escapes one line (no line breaks in `s`, or they are shown as `⏎`).
fn escape(s: &str, out: &mut String) {
    let chars: Vec<char> = s.chars().collect();
    let mut marks = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        if c == '\r' && next == Some('\n') {
            i += 1;
            continue;
        }
        if c == '\n' {
            out.push('⏎');
            marks = 0;
            i += 1;
            continue;
        }
        if blank(c) && !c.is_control() {
            // Unusual blanks (no-break space…) read as spaces; a long run is counted.
            let run = chars[i..]
                .iter()
                .take_while(|c| blank(**c) && !c.is_control())
                .count();
            if run > MAX_BLANKS {
                out.push_str(&format!(" ␣×{run} "));
            } else {
                out.extend(std::iter::repeat_n(' ', run));
            }
            marks = 0;
            i += run;
            continue;
        }
        if combining(c) {
            marks += 1;
            if marks > MAX_MARKS {
                escape_into(out, c);
            } else {
                out.push(c);
            }
            i += 1;
            continue;
        }
        marks = 0;
        if hidden(c, prev, next) {
            escape_into(out, c);
        } else {
            out.push(c);
        }
        i += 1;
    }
}

fn needs_work(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control() || !c.is_ascii() && (blank(c) || combining(c) || crate::flow::invisible(c))
    }) || s.contains("    ")
}

/// Peer text for one line of output: escaped, line breaks shown as `⏎`.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !needs_work(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    escape(s, &mut out);
    Cow::Owned(out)
}

/// Like [`one_line`], cut to `max` characters (of the original text) with `…`.
pub fn clip(s: &str, max: usize) -> String {
    let cut: String = s.chars().take(max).collect();
    let more = cut.len() < s.len();
    let mut out = one_line(&cut).into_owned();
    if more {
        out.push('…');
    }
    out
}

/// Peer text that may keep its line breaks: every line escaped, lines after the first on their
/// own line behind `indent` and a `│ ` margin. Empty trailing lines are dropped.
pub fn lines(s: &str, indent: &str) -> String {
    let mut out = String::new();
    let all: Vec<&str> = s.trim_end_matches(['\n', '\r']).split('\n').collect();
    for (i, line) in all.iter().enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(indent);
            out.push_str("│ ");
        }
        escape(line.strip_suffix('\r').unwrap_or(line), &mut out);
    }
    out
}

/// Text this program generated around peer text (a diagram): its line breaks are its own, so
/// they are kept as they are, with no margin; each line is escaped.
pub fn block(s: &str) -> String {
    s.split('\n')
        .map(|l| one_line(l.strip_suffix('\r').unwrap_or(l)).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A self-chosen name for one line: escaped like [`one_line`], and with `…` escaped too (the
/// node id suffix after a name starts with one, so a name cannot bring a suffix of its own).
pub fn name(s: &str) -> String {
    if s.trim().is_empty() {
        return "(no name)".into();
    }
    let cut: String = s.chars().take(48).collect();
    let mut out = one_line(&cut).replace('…', "\\u{2026}");
    if cut.len() < s.len() {
        out.push('…');
    }
    out
}

/// A member as a reader must see them: `Name (role, …suffix)`, `removed` if they are.
pub fn member(m: &Member) -> String {
    format!(
        "{} ({}{}, {})",
        name(&m.name),
        m.role,
        if m.removed { ", removed" } else { "" },
        short_id(&m.node_id)
    )
}

/// [`member`] without saying whether they were removed since (for the removal itself).
fn member_as_was(flow: &Flow, node_id: &str) -> String {
    match flow.member(node_id) {
        Some(m) => format!("{} ({}, {})", name(&m.name), m.role, short_id(&m.node_id)),
        None => person(flow, node_id),
    }
}

/// Whoever `node_id` is in `flow`: [`member`], or the node id's suffix and "not a member".
pub fn person(flow: &Flow, node_id: &str) -> String {
    match flow.member(node_id) {
        Some(m) => member(m),
        None => format!("{} (not a member)", short_id(node_id)),
    }
}

/// [`person`], marked if another member's name could be taken for theirs (`clashing`: from
/// [`Flow::clashing_names`]).
pub fn person_marked(flow: &Flow, clashing: &HashSet<String>, node_id: &str) -> String {
    let p = person(flow, node_id);
    if clashing.contains(node_id) {
        format!("{p} {SAME_NAME}")
    } else {
        p
    }
}

/// Quoted peer text inside a sentence of ours.
fn quoted(s: &str) -> String {
    format!("'{}'", clip(s, 60))
}

/// One thing a change did, as a sentence (peer text in it escaped).
pub fn did(flow: &Flow, d: &Did) -> String {
    let step_title = |id: &str| {
        flow.steps
            .iter()
            .find(|s| s.id == id)
            .map(|s| quoted(&s.title))
            .unwrap_or_else(|| "a step no longer in the flow".into())
    };
    match d {
        Did::Started { title } => format!("started the flow {}", quoted(title)),
        Did::SetTitle { title } => format!("set the title to {}", quoted(title)),
        Did::SetNeed => "rewrote the need".into(),
        Did::SetStatus { status } => match status.parse() {
            Ok(FlowStatus::Fulfilled) => "confirmed the need fulfilled".into(),
            Ok(FlowStatus::Closed) => "closed the flow".into(),
            Ok(FlowStatus::Open) => "reopened the flow".into(),
            Err(_) => format!("set status {}", quoted(status)),
        },
        Did::AddedMember {
            node,
            name: n,
            role,
            by_invite,
        } => format!(
            "{} {} ({}, {}){}",
            if *by_invite {
                "admitted"
            } else {
                "added member"
            },
            name(n),
            one_line(role),
            short_id(node),
            if *by_invite { " by invite" } else { "" }
        ),
        Did::RemovedMember { node } => {
            format!("removed member {}", member_as_was(flow, node))
        }
        Did::RestoredMember { node } => {
            format!("restored member {}", member_as_was(flow, node))
        }
        Did::ChangedRole { node, role } => {
            format!("made {} {}", person(flow, node), one_line(role))
        }
        Did::Renamed { node, name: n } => {
            format!("renamed member {} to {}", short_id(node), quoted(n))
        }
        Did::Invited { role } => format!("invited a new {}", one_line(role)),
        Did::RevokedInvite { id } => format!("revoked invite {}", one_line(id)),
        Did::AddedStep { title } => format!("added step {}", quoted(title)),
        Did::DeletedStep => "deleted a step".into(),
        Did::MarkedStep { title, status } => {
            format!("marked step {} {}", quoted(title), one_line(status))
        }
        Did::Assigned {
            title,
            to: Some(to),
        } => {
            format!("assigned step {} to {}", quoted(title), person(flow, to))
        }
        Did::Assigned { title, to: None } => format!("unassigned step {}", quoted(title)),
        Did::RetitledStep { title } => format!("retitled a step to {}", quoted(title)),
        Did::EditedStep { title, field } => {
            format!("changed '{}' of step {}", one_line(field), quoted(title))
        }
        Did::Commented { step, text } => match step {
            Some(id) => format!("commented on step {}: {}", step_title(id), clip(text, 60)),
            None => format!("commented: {}", clip(text, 60)),
        },
        Did::EditedComment { text } => format!("edited a comment: {}", clip(text, 60)),
        Did::OpenedDecision { question } => format!("opened decision {}", quoted(question)),
        Did::Chose { question, option } => {
            format!("chose {} for {}", quoted(option), quoted(question))
        }
        Did::Voted { question, option } => {
            format!("voted {} on {}", quoted(option), quoted(question))
        }
        Did::ClosedDecision {
            question,
            outcome: Some(o),
        } => format!("closed {} with outcome {}", quoted(question), quoted(o)),
        Did::ClosedDecision {
            question,
            outcome: None,
        } => format!("closed {} with no outcome", quoted(question)),
        Did::Other { what } => one_line(what).into_owned(),
    }
}

/// What a change did, in one line: its first few deeds, and how many more.
pub fn summary(flow: &Flow, dids: &[Did]) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = dids.iter().take(SHOWN).map(|d| did(flow, d)).collect();
    if dids.len() > SHOWN {
        parts.push(format!("and {} more", dids.len() - SHOWN));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        for s in [
            "Navy suit",
            "Größe 52 — très bien",
            "👨‍👩‍👧 family",
            "❤️ ok",
            "a  b",
        ] {
            assert!(
                matches!(one_line(s), Cow::Borrowed(_)) || one_line(s) == s,
                "{s}"
            );
            assert_eq!(one_line(s), s);
        }
    }

    #[test]
    fn controls_are_shown_escaped() {
        assert_eq!(one_line("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(one_line("\u{1b}]0;x\u{7}"), "\\u{1b}]0;x\\u{7}");
        assert_eq!(one_line("x\u{7f}\u{9b}y"), "x\\u{7f}\\u{9b}y");
        assert_eq!(one_line("a\tb"), "a\\u{9}b");
        assert_eq!(one_line("\u{202e}abc\u{2066}"), "\\u{202e}abc\\u{2066}");
        assert_eq!(one_line("a\u{200b}b\u{feff}"), "a\\u{200b}b\\u{feff}");
        // A joiner outside an emoji sequence hides nothing of its own and is shown.
        assert_eq!(one_line("a\u{200d}b"), "a\\u{200d}b");
        assert_eq!(one_line("x\u{fe0f}"), "x\\u{fe0f}");
    }

    #[test]
    fn line_breaks_and_blank_runs() {
        assert_eq!(one_line("a\nb\r\nc"), "a⏎b⏎c");
        assert_eq!(one_line("a\rb"), "a\\u{d}b");
        assert_eq!(one_line("a        b"), "a ␣×8 b");
        assert_eq!(one_line("a\u{a0}b"), "a b");
        assert_eq!(one_line("a\u{2800}\u{2800}\u{2800}\u{2800}b"), "a ␣×4 b");
        assert_eq!(
            lines("one\nMembers:\n\u{1b}[31mtwo\n", "    "),
            "one\n    │ Members:\n    │ \\u{1b}[31mtwo"
        );
    }

    #[test]
    fn stacked_marks_are_cut() {
        let zalgo = format!("a{}", "\u{301}".repeat(6));
        assert_eq!(
            one_line(&zalgo),
            format!("a{}{}", "\u{301}".repeat(3), "\\u{301}".repeat(3))
        );
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = one_line("\u{1b}[2J\u{202e}x\ny");
        assert_eq!(one_line(&once), once);
    }

    #[test]
    fn names_cannot_bring_a_suffix() {
        assert_eq!(
            name("Carol (customer, …gkBm)"),
            "Carol (customer, \\u{2026}gkBm)"
        );
        assert_eq!(name("  "), "(no name)");
        assert_eq!(name(&"x".repeat(60)), format!("{}…", "x".repeat(48)));
    }
}
