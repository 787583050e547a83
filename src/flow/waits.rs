//! What a flow waits on one member for: the decisions that are theirs to take, the steps they
//! do (or, for the customer, take part in) that are not finished, and — for the customer, once
//! every step is finished — confirming the need fulfilled. The page lists these first.

use serde::{Deserialize, Serialize};

use super::{Flow, FlowStatus, Mode, Role, StepStatus, WaitKind, Who};

/// One thing a flow waits on a member for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// `decision`, `step` or `fulfil`.
    pub kind: WaitKind,
    /// The decision's or step's id (the flow's for `fulfil`).
    pub id: String,
    /// What to do, in a few words (peer text as it was written: render it as text).
    pub text: String,
}

impl Flow {
    /// What the flow waits on `node` for, decisions first; nothing once the flow is fulfilled
    /// or closed, or for someone who is not a current member.
    pub fn waiting_on(&self, node: &str) -> Vec<Waiting> {
        let Some(role) = self.role_of(node) else {
            return Vec::new();
        };
        if self.status != FlowStatus::Open {
            return Vec::new();
        }
        let mut out = Vec::new();
        for d in &self.decisions {
            let open = !d.closed && (d.mode == Mode::Vote || d.outcome.is_none());
            let eligible = match d.who {
                Who::Customer => role == Role::Customer,
                Who::Members => role != Role::Observer,
            };
            if open && eligible && !d.choices.contains_key(node) {
                out.push(Waiting {
                    kind: WaitKind::Decision,
                    id: d.id.clone(),
                    text: format!("Decide: {}", d.question),
                });
            }
        }
        let unfinished = |s: &super::Step| !matches!(s.status, StepStatus::Done | StepStatus::Skipped);
        for s in self.steps.iter().filter(|s| unfinished(s)) {
            let theirs = s.assignee.as_deref() == Some(node)
                || (s.customer_involved && role == Role::Customer);
            if theirs {
                out.push(Waiting {
                    kind: WaitKind::Step,
                    id: s.id.clone(),
                    text: format!("Step: {}", s.title),
                });
            }
        }
        let settled = self
            .decisions
            .iter()
            .all(|d| d.closed || (d.mode == Mode::Choice && d.outcome.is_some()));
        if role == Role::Customer
            && !self.steps.is_empty()
            && !self.steps.iter().any(unfinished)
            && settled
        {
            out.push(Waiting {
                kind: WaitKind::Fulfil,
                id: self.id.clone(),
                text: "Confirm your need fulfilled".into(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decision, Member, Step};
    use super::*;

    fn member(id: &str, role: Role) -> Member {
        Member {
            node_id: id.into(),
            name: id.into(),
            role,
            added_by: String::new(),
            added_at: 0,
            removed: false,
        }
    }

    fn step(id: &str, assignee: Option<&str>, customer: bool, status: StepStatus) -> Step {
        Step {
            id: id.into(),
            title: format!("step {id}"),
            detail: String::new(),
            status,
            assignee: assignee.map(Into::into),
            customer_involved: customer,
            due: None,
            created_by: String::new(),
        }
    }

    fn decision(id: &str, who: Who, mode: Mode) -> Decision {
        Decision {
            id: id.into(),
            question: format!("question {id}"),
            options: vec!["Wool".into(), "Linen".into()],
            step: None,
            who,
            mode,
            choices: Default::default(),
            outcome: None,
            closed: false,
            created_by: String::new(),
        }
    }

    fn flow() -> Flow {
        Flow {
            id: "f".into(),
            schema: 1,
            title: "Suit".into(),
            need: "A suit".into(),
            status: FlowStatus::Open,
            created_at: 0,
            members: vec![
                member("alice", Role::Customer),
                member("tom", Role::Owner),
                member("olga", Role::Observer),
            ],
            invites: Vec::new(),
            steps: vec![
                step("cut", Some("tom"), false, StepStatus::Active),
                step("fit", Some("tom"), true, StepStatus::Todo),
                step("old", Some("tom"), true, StepStatus::Done),
            ],
            decisions: vec![
                decision("cloth", Who::Customer, Mode::Choice),
                decision("date", Who::Members, Mode::Vote),
            ],
            comments: Vec::new(),
        }
    }

    fn ids(w: &[Waiting]) -> Vec<(&str, &str)> {
        w.iter().map(|x| (x.kind.as_str(), x.id.as_str())).collect()
    }

    #[test]
    fn decisions_then_steps_for_whoever_they_wait_on() {
        let f = flow();
        assert_eq!(
            ids(&f.waiting_on("alice")),
            [("decision", "cloth"), ("decision", "date"), ("step", "fit")]
        );
        assert_eq!(
            ids(&f.waiting_on("tom")),
            [("decision", "date"), ("step", "cut"), ("step", "fit")]
        );
        // An observer takes no decision and does no step; a stranger is waited on for nothing.
        assert!(f.waiting_on("olga").is_empty());
        assert!(f.waiting_on("mallory").is_empty());
    }

    #[test]
    fn a_choice_made_or_a_vote_cast_waits_no_more() {
        let mut f = flow();
        f.decisions[0].choices.insert("alice".into(), "Wool".into());
        f.decisions[0].outcome = Some("Wool".into());
        f.decisions[1].choices.insert("tom".into(), "Linen".into());
        assert_eq!(
            ids(&f.waiting_on("alice")),
            [("decision", "date"), ("step", "fit")]
        );
        assert_eq!(ids(&f.waiting_on("tom")), [("step", "cut"), ("step", "fit")]);
    }

    #[test]
    fn the_customer_is_asked_to_confirm_once_every_step_is_finished_and_decided() {
        let mut f = flow();
        for s in &mut f.steps {
            s.status = StepStatus::Done;
        }
        // The decisions are still open: nothing to confirm yet.
        assert!(!ids(&f.waiting_on("alice")).contains(&("fulfil", "f")));
        f.decisions[0].outcome = Some("Wool".into());
        f.decisions[0].choices.insert("alice".into(), "Wool".into());
        f.decisions[1].closed = true;
        assert_eq!(ids(&f.waiting_on("alice")), [("fulfil", "f")]);
        assert!(f.waiting_on("tom").is_empty());
        // Once fulfilled (or closed), the flow waits on nobody.
        f.status = FlowStatus::Fulfilled;
        assert!(f.waiting_on("alice").is_empty());
        f.status = FlowStatus::Open;
        f.members[0].removed = true;
        assert!(f.waiting_on("alice").is_empty());
    }
}
