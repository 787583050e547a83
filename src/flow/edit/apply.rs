//! [`Edit::apply`]: each edit checked against the flow's current state and written as
//! operations into an Automerge transaction.

use super::*;

impl Edit {
    /// Checks the edit against `flow` (the document's current typed state) and writes it.
    /// `flow.comments` may be empty ([`Reader::flow_without_comments`], what `Repo::edit`
    /// passes): no edit may depend on existing comments without changing that.
    pub fn apply<T: Transactable>(
        &self,
        tx: &mut T,
        flow: &Flow,
        author: &NodeId,
        now: i64,
    ) -> Result<Applied, EditError> {
        let r = Reader::now(&*tx);
        let container = |name: &str| {
            r.container(name)
                .ok_or_else(|| EditError::Document(format!("the flow has no {name}")))
        };
        let find_step = |prefix: &str| -> Result<(usize, Step), EditError> {
            let id = resolve_prefix("step", prefix, flow.steps.iter().map(|s| s.id.as_str()))?;
            let (i, s) = flow
                .steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.id == id)
                .expect("resolved step exists");
            Ok((i, s.clone()))
        };
        let find_decision = |prefix: &str| -> Result<Decision, EditError> {
            let id = resolve_prefix(
                "decision",
                prefix,
                flow.decisions.iter().map(|d| d.id.as_str()),
            )?;
            Ok(flow
                .decisions
                .iter()
                .find(|d| d.id == id)
                .expect("resolved decision exists")
                .clone())
        };
        let find_invite = |prefix: &str| -> Result<Invite, EditError> {
            let id = resolve_prefix("invite", prefix, flow.invites.iter().map(|i| i.id.as_str()))?;
            Ok(flow
                .invites
                .iter()
                .find(|i| i.id == id)
                .expect("resolved invite exists")
                .clone())
        };
        let done = |summary: String| {
            Ok(Applied {
                summary,
                created: None,
            })
        };
        match self {
            Edit::SetTitle { title } => {
                let title = non_empty("title", title)?;
                tx.put(ROOT, field::TITLE, title.as_str())?;
                done(format!("set the title to '{title}'"))
            }
            Edit::SetNeed { need } => {
                let need = non_empty("need", need)?;
                tx.put(ROOT, field::NEED, need.as_str())?;
                done("rewrote the need".into())
            }
            Edit::SetStatus { status } => {
                if flow.status == *status {
                    return Err(EditError::Invalid(format!("the flow is already {status}")));
                }
                tx.put(ROOT, field::STATUS, status.as_str())?;
                done(match status {
                    FlowStatus::Fulfilled => "confirmed the need fulfilled".into(),
                    FlowStatus::Closed => "closed the flow".into(),
                    FlowStatus::Open => "reopened the flow".into(),
                })
            }
            Edit::AddMember {
                node_id,
                role,
                name,
            } => {
                let node: NodeId = node_id.trim().parse().map_err(EditError::Invalid)?;
                if flow.role_of(node.as_str()).is_some() {
                    return Err(EditError::Invalid(format!(
                        "{node} is already a member of this flow"
                    )));
                }
                let members = container(field::MEMBERS)?;
                let name = name.clone().unwrap_or_default();
                put_member(tx, &members, node.as_str(), name.trim(), *role, author, now)?;
                let who = if name.trim().is_empty() {
                    short_id(node.as_str())
                } else {
                    name.trim().to_string()
                };
                done(format!("added {who} as {role}"))
            }
            Edit::RemoveMember { member } => {
                let node = resolve_member(flow, member)?;
                // A flow always keeps someone who can manage it. Checked here, where a user
                // leaves by mistake, not by the policy: a last manager set on ending the flow can
                // do that in other ways, and flows made before this check may hold such a change.
                let manages = |m: &Member| !m.removed && m.role.manages();
                let leaving_manager = node == author.as_str()
                    && flow.member(&node).is_some_and(manages);
                if leaving_manager && !flow.members.iter().any(|m| manages(m) && m.node_id != node) {
                    return Err(EditError::Invalid(
                        "you are this flow's last customer or owner, and a flow must keep one: \
                         make someone else an owner first"
                            .into(),
                    ));
                }
                let members = container(field::MEMBERS)?;
                let m = r
                    .obj(&members, node.as_str(), ObjType::Map)
                    .ok_or_else(|| EditError::Document("member object missing".into()))?;
                tx.put(&m, schema::member::REMOVED, true)?;
                done(format!("removed {}", flow.name_of(&node)))
            }
            Edit::AddStep {
                title,
                detail,
                assignee,
                customer_involved,
                due,
            } => {
                let title = non_empty("step title", title)?;
                let assignee = assignee
                    .as_deref()
                    .map(|a| resolve_member(flow, a))
                    .transpose()?;
                let steps = container(field::STEPS)?;
                let id = new_id();
                let at = tx.length(&steps);
                let s = tx.insert_object(&steps, at, ObjType::Map)?;
                tx.put(&s, schema::step::ID, id.as_str())?;
                tx.put(&s, schema::step::TITLE, title.as_str())?;
                tx.put(&s, schema::step::DETAIL, detail.clone().unwrap_or_default())?;
                tx.put(&s, schema::step::STATUS, StepStatus::Todo.as_str())?;
                tx.put(&s, schema::step::ASSIGNEE, opt_str(&assignee))?;
                tx.put(&s, schema::step::CUSTOMER_INVOLVED, *customer_involved)?;
                tx.put(&s, schema::step::DUE, opt_str(due))?;
                tx.put(&s, schema::step::CREATED_BY, author.as_str())?;
                Ok(Applied {
                    summary: format!("added step '{title}'"),
                    created: Some(id),
                })
            }
            Edit::SetStepStatus { step, status } => {
                let (i, s) = find_step(step)?;
                if s.status == *status {
                    return Err(EditError::Invalid(format!(
                        "step '{}' is already {status}",
                        s.title
                    )));
                }
                let steps = container(field::STEPS)?;
                let obj = r
                    .obj(&steps, i, ObjType::Map)
                    .ok_or_else(|| EditError::Document("step object missing".into()))?;
                tx.put(&obj, schema::step::STATUS, status.as_str())?;
                done(format!("marked step '{}' {status}", s.title))
            }
            Edit::AssignStep { step, assignee } => {
                let (i, s) = find_step(step)?;
                let assignee = assignee
                    .as_deref()
                    .map(|a| resolve_member(flow, a))
                    .transpose()?;
                let steps = container(field::STEPS)?;
                let obj = r
                    .obj(&steps, i, ObjType::Map)
                    .ok_or_else(|| EditError::Document("step object missing".into()))?;
                tx.put(&obj, schema::step::ASSIGNEE, opt_str(&assignee))?;
                done(match &assignee {
                    Some(a) => format!("assigned step '{}' to {}", s.title, flow.name_of(a)),
                    None => format!("unassigned step '{}'", s.title),
                })
            }
            Edit::Comment { text, step } => {
                let text = non_empty("comment", text)?;
                let step = step.as_deref().map(&find_step).transpose()?;
                let comments = container(field::COMMENTS)?;
                let id = new_id();
                let at = tx.length(&comments);
                let c = tx.insert_object(&comments, at, ObjType::Map)?;
                tx.put(&c, schema::comment::ID, id.as_str())?;
                tx.put(&c, schema::comment::AUTHOR, author.as_str())?;
                tx.put(&c, schema::comment::AT, now)?;
                tx.put(
                    &c,
                    schema::comment::STEP,
                    opt_str(&step.as_ref().map(|(_, s)| s.id.clone())),
                )?;
                tx.put(&c, schema::comment::TEXT, text.as_str())?;
                let on = step
                    .map(|(_, s)| format!(" on '{}'", s.title))
                    .unwrap_or_default();
                Ok(Applied {
                    summary: format!("commented{on}: {}", one_line(&text, 60)),
                    created: Some(id),
                })
            }
            Edit::NewDecision {
                question,
                options,
                who,
                mode,
                step,
            } => {
                let question = non_empty("question", question)?;
                let mut opts: Vec<String> = Vec::new();
                for o in options {
                    let o = non_empty("option", o)?;
                    if opts.contains(&o) {
                        return Err(EditError::Invalid(format!("option '{o}' is given twice")));
                    }
                    opts.push(o);
                }
                if opts.len() < 2 {
                    return Err(EditError::Invalid(
                        "a decision needs at least two options".into(),
                    ));
                }
                let step = step.as_deref().map(&find_step).transpose()?;
                let decisions = container(field::DECISIONS)?;
                let id = new_id();
                let d = tx.put_object(&decisions, id.as_str(), ObjType::Map)?;
                tx.put(&d, schema::decision::QUESTION, question.as_str())?;
                let list = tx.put_object(&d, schema::decision::OPTIONS, ObjType::List)?;
                for (i, o) in opts.iter().enumerate() {
                    tx.insert(&list, i, o.as_str())?;
                }
                tx.put(&d, schema::decision::STEP, opt_str(&step.map(|(_, s)| s.id)))?;
                tx.put(&d, schema::decision::WHO, who.as_str())?;
                tx.put(&d, schema::decision::MODE, mode.as_str())?;
                tx.put_object(&d, schema::decision::CHOICES, ObjType::Map)?;
                tx.put(&d, schema::decision::OUTCOME, ScalarValue::Null)?;
                tx.put(&d, schema::decision::CLOSED, false)?;
                tx.put(&d, schema::decision::CREATED_BY, author.as_str())?;
                Ok(Applied {
                    summary: format!("opened decision '{question}'"),
                    created: Some(id),
                })
            }
            Edit::Choose { decision, option } => {
                let d = find_decision(decision)?;
                if d.closed {
                    return Err(EditError::Invalid(format!(
                        "decision '{}' is closed",
                        d.question
                    )));
                }
                let option =
                    resolve_prefix("option", option, d.options.iter().map(|o| o.as_str()))?;
                let decisions = container(field::DECISIONS)?;
                let obj = r
                    .obj(&decisions, d.id.as_str(), ObjType::Map)
                    .ok_or_else(|| EditError::Document("decision object missing".into()))?;
                let choices = r
                    .obj(&obj, schema::decision::CHOICES, ObjType::Map)
                    .ok_or_else(|| EditError::Document("decision has no choices".into()))?;
                tx.put(&choices, author.as_str(), option.as_str())?;
                if d.mode == Mode::Choice {
                    tx.put(&obj, schema::decision::OUTCOME, option.as_str())?;
                    tx.put(&obj, schema::decision::CLOSED, true)?;
                    done(format!("chose '{option}' for '{}'", d.question))
                } else {
                    done(format!("voted '{option}' on '{}'", d.question))
                }
            }
            Edit::CloseDecision { decision } => {
                let d = find_decision(decision)?;
                if d.closed {
                    return Err(EditError::Invalid(format!(
                        "decision '{}' is already closed",
                        d.question
                    )));
                }
                let decisions = container(field::DECISIONS)?;
                let obj = r
                    .obj(&decisions, d.id.as_str(), ObjType::Map)
                    .ok_or_else(|| EditError::Document("decision object missing".into()))?;
                let outcome = d.leader();
                tx.put(&obj, schema::decision::OUTCOME, opt_str(&outcome))?;
                tx.put(&obj, schema::decision::CLOSED, true)?;
                done(match outcome {
                    Some(o) => format!("closed '{}' with outcome '{o}'", d.question),
                    None => format!("closed '{}' with no votes", d.question),
                })
            }
            Edit::CreateInvite {
                role,
                public_key,
                expires_at,
                uses,
            } => {
                let key = crate::identity::unhex(public_key)
                    .filter(|k| k.len() == 32)
                    .ok_or_else(|| {
                        EditError::Invalid("the invite's public key must be 32 bytes".into())
                    })?;
                if *uses < 1 {
                    return Err(EditError::Invalid(
                        "an invite needs at least one use".into(),
                    ));
                }
                let invites = container(field::INVITES)?;
                let id = new_id();
                let i = tx.put_object(&invites, id.as_str(), ObjType::Map)?;
                tx.put(&i, schema::invite::ROLE, role.as_str())?;
                tx.put(&i, schema::invite::PUBLIC_KEY, ScalarValue::Bytes(key))?;
                tx.put(&i, schema::invite::EXPIRES_AT, *expires_at)?;
                tx.put(&i, schema::invite::USES_LEFT, *uses)?;
                tx.put(&i, schema::invite::CREATED_BY, author.as_str())?;
                tx.put(&i, schema::invite::REVOKED, false)?;
                Ok(Applied {
                    summary: format!("invited a new {role}"),
                    created: Some(id),
                })
            }
            Edit::RevokeInvite { invite } => {
                let inv = find_invite(invite)?;
                if inv.revoked {
                    return Err(EditError::Invalid(format!(
                        "invite {} is already revoked",
                        inv.id
                    )));
                }
                let invites = container(field::INVITES)?;
                let obj = r
                    .obj(&invites, inv.id.as_str(), ObjType::Map)
                    .ok_or_else(|| EditError::Document("invite object missing".into()))?;
                tx.put(&obj, schema::invite::REVOKED, true)?;
                done(format!("revoked invite {}", inv.id))
            }
            Edit::Redeem {
                invite,
                proof,
                joiner,
                name,
            } => {
                let proof = crate::identity::unhex(proof)
                    .filter(|p| p.len() == 64)
                    .ok_or_else(|| EditError::Invalid("an invite proof must be 64 bytes".into()))?;
                let inv = flow
                    .invites
                    .iter()
                    .find(|i| &i.id == invite)
                    .ok_or_else(|| EditError::NotFound {
                        what: "invite",
                        prefix: invite.clone(),
                    })?
                    .clone();
                if inv.public_key.is_empty() {
                    return Err(EditError::Invalid(format!(
                        "invite {} was made by an older coflow and can no longer be redeemed; \
                         make a new one",
                        inv.id
                    )));
                }
                let node: NodeId = joiner.parse().map_err(EditError::Invalid)?;
                match flow.member(node.as_str()) {
                    Some(m) if m.removed => {
                        return Err(EditError::Invalid(format!(
                            "{node} was removed from this flow; only a manager can restore them"
                        )))
                    }
                    Some(_) => {
                        return Err(EditError::Invalid(format!(
                            "{node} is already a member of this flow"
                        )))
                    }
                    None => {}
                }
                let members = container(field::MEMBERS)?;
                let invites = container(field::INVITES)?;
                let obj = r
                    .obj(&invites, inv.id.as_str(), ObjType::Map)
                    .ok_or_else(|| EditError::Document("invite object missing".into()))?;
                let m = put_member(tx, &members, node.as_str(), name.trim(), inv.role, author, now)?;
                tx.put(&m, schema::member::INVITE, inv.id.as_str())?;
                tx.put(&m, schema::member::INVITE_PROOF, ScalarValue::Bytes(proof))?;
                tx.put(&obj, schema::invite::USES_LEFT, inv.uses_left - 1)?;
                let who = if name.trim().is_empty() {
                    short_id(node.as_str())
                } else {
                    name.trim().to_string()
                };
                done(format!("admitted {who} as {} by invite", inv.role))
            }
        }
    }
}
