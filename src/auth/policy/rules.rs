//! The rules: what each role may do at each place of the schema, one function per place, and
//! the checks across a change's operations once they are all seen.

use super::*;

impl<'a> Judge<'a> {
    pub(super) fn op(&mut self, counter: u64, op: &legacy::Op) -> Result<(), Forbidden> {
        if matches!(
            op.action,
            OpType::Increment(_) | OpType::MarkBegin(_) | OpType::MarkEnd(_)
        ) {
            return deny("counters and marks have no place in a flow");
        }
        if let OpType::Put(ScalarValue::Str(text)) = &op.action {
            let key = match &op.key {
                Key::Map(k) => k.as_str(),
                Key::Seq(_) => "",
            };
            let max = crate::flow::limit::text_for(key);
            let len = text.chars().count();
            if len > max {
                let what = if key.is_empty() {
                    "a list element"
                } else {
                    key
                };
                return deny(format!(
                    "{what} of {len} characters is over the limit of {max}"
                ));
            }
        }
        let t = self.target(&op.obj)?;
        self.touched_members |= matches!(t.place, Place::Members | Place::Member { .. });
        if let OpType::Make(typ) = op.action {
            let place = self.create(&t, op, typ)?;
            let obj = self.exid(&legacy::OpId(counter, self.actor.clone()))?;
            self.targets.insert(
                (counter, self.actor.clone()),
                Target {
                    place,
                    obj,
                    new: true,
                },
            );
            return Ok(());
        }
        match t.place.clone() {
            Place::Root => self.root(op),
            Place::Member { node } => self.member(&t, &node, op),
            Place::Invite { id } => self.invite(&t, &id, op),
            Place::Steps => self.steps_list(op),
            Place::Step => self.step(&t, op),
            Place::Decision => self.decision(&t, op),
            Place::Options => {
                if t.new && op.insert && str_value(op).is_some() {
                    Ok(())
                } else {
                    deny("a decision's options cannot change once it is open")
                }
            }
            Place::Choices { decision } => self.choice(&decision, op),
            Place::Comments => deny("comments cannot be deleted or replaced"),
            Place::Comment => self.comment(&t, op),
            Place::Members | Place::Invites | Place::Decisions => {
                deny("members, invites and decisions are added whole, never replaced or deleted")
            }
        }
    }

    /// An operation that makes an object: where may it go?
    pub(super) fn create(
        &mut self,
        parent: &Target,
        op: &legacy::Op,
        typ: ObjType,
    ) -> Result<Place, Forbidden> {
        let place = match (&parent.place, &op.key, typ) {
            (Place::Root, Key::Map(k), _) if self.genesis => match (k.as_str(), typ) {
                (field::MEMBERS, ObjType::Map) => Place::Members,
                (field::INVITES, ObjType::Map) => Place::Invites,
                (field::STEPS, ObjType::List) => Place::Steps,
                (field::DECISIONS, ObjType::Map) => Place::Decisions,
                (field::COMMENTS, ObjType::List) => Place::Comments,
                _ => return deny("a new flow has no such container"),
            },
            (Place::Members, Key::Map(k), ObjType::Map) => {
                let node = k.to_string();
                node.parse::<NodeId>().map_err(Forbidden)?;
                if self.genesis {
                    if node != self.me || !self.members_created.is_empty() {
                        return deny("a new flow's only member is its creator");
                    }
                } else if self.before().role_of(&node).is_some() {
                    return deny(format!("{node} is already a member"));
                } else if self.members_created.contains(&node) {
                    return deny(format!("the change adds {node} twice"));
                }
                // Who may add this member (a manager, or anyone redeeming an invite) is decided
                // in `finish`, once the member's fields are known.
                self.members_created.push(node.clone());
                Place::Member { node }
            }
            (Place::Invites, Key::Map(k), ObjType::Map) => {
                self.needs(self.role.manages(), "cannot manage invites")?;
                Place::Invite { id: k.to_string() }
            }
            (Place::Steps, Key::Seq(_), ObjType::Map) if op.insert => {
                self.needs(self.role.edits_steps(), "cannot add steps")?;
                Place::Step
            }
            (Place::Decisions, Key::Map(_), ObjType::Map) => {
                self.needs(self.role.edits_steps(), "cannot open decisions")?;
                Place::Decision
            }
            (Place::Decision, Key::Map(k), ObjType::List) if parent.new && k == schema::decision::OPTIONS => {
                Place::Options
            }
            (Place::Decision, Key::Map(k), ObjType::Map) if parent.new && k == schema::decision::CHOICES => {
                Place::Choices {
                    decision: parent.obj.clone(),
                }
            }
            (Place::Comments, Key::Seq(_), ObjType::Map) if op.insert => Place::Comment,
            _ => return deny("the change creates an object where the flow schema has none"),
        };
        Ok(place)
    }

    pub(super) fn root(&mut self, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if self.genesis {
            return match key {
                field::SCHEMA | field::CREATED_AT => expect_int(op, key).map(|_| ()),
                field::TITLE | field::NEED => non_empty(op, key),
                field::STATUS => match expect_parse::<FlowStatus>(op, key)? {
                    FlowStatus::Open => Ok(()),
                    _ => deny("a new flow starts open"),
                },
                _ => deny(format!("a new flow has no field '{key}'")),
            };
        }
        match key {
            field::TITLE | field::NEED => {
                self.needs(self.role.manages(), &format!("cannot edit the {key}"))?;
                non_empty(op, key)
            }
            field::STATUS => {
                let status = expect_parse::<FlowStatus>(op, key)?;
                let was = self.before().parse::<FlowStatus>(&ROOT, field::STATUS);
                if status == FlowStatus::Fulfilled {
                    self.needs(
                        self.role == Role::Customer,
                        "cannot confirm the need fulfilled: only a customer can",
                    )
                } else if was == Some(FlowStatus::Fulfilled) {
                    self.needs(
                        self.role == Role::Customer,
                        "cannot overrule the customer's confirmation that the need is fulfilled",
                    )
                } else {
                    self.needs(self.role.manages(), "cannot close or reopen the flow")
                }
            }
            _ => deny(format!("the field '{key}' cannot be changed")),
        }
    }

    pub(super) fn member(
        &mut self,
        t: &Target,
        node: &str,
        op: &legacy::Op,
    ) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if t.new {
            let entry = self.new_members.entry(node.to_string()).or_default();
            return match key {
                schema::member::NAME => expect_str(op, key).map(|_| ()),
                schema::member::ROLE => {
                    entry.role = Some(expect_parse::<Role>(op, key)?);
                    Ok(())
                }
                schema::member::INVITE => {
                    entry.invite = Some(expect_str(op, key)?.to_string());
                    Ok(())
                }
                schema::member::INVITE_PROOF => match &op.action {
                    OpType::Put(ScalarValue::Bytes(b)) if b.len() == 64 => {
                        entry.proof = Some(b.clone());
                        Ok(())
                    }
                    _ => deny("an invite proof must be 64 bytes"),
                },
                schema::member::INVITE_SECRET => {
                    entry.legacy_secret = Some(expect_str(op, key)?.to_string());
                    Ok(())
                }
                schema::member::ADDED_BY => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("added_by must name the change's author"),
                },
                schema::member::ADDED_AT => expect_int(op, key).map(|_| ()),
                schema::member::REMOVED => match expect_bool(op, key)? {
                    false => Ok(()),
                    true => deny("a new member cannot start removed"),
                },
                _ => deny(format!("a member has no field '{key}'")),
            };
        }
        let target = self
            .before()
            .member(node)
            .ok_or_else(|| Forbidden(format!("{node} is not a member")))?;
        let is_self = node == self.me;
        let on_customer = target.role == Role::Customer;
        match key {
            schema::member::REMOVED => {
                if expect_bool(op, key)? {
                    if is_self {
                        return Ok(());
                    }
                    if on_customer {
                        return deny("a customer can only be removed by themself");
                    }
                    self.needs(self.role.manages(), "cannot remove other members")
                } else {
                    self.needs(self.role.manages(), "cannot restore members")?;
                    self.needs(
                        !on_customer || self.role == Role::Customer,
                        "cannot restore a customer: only a customer can",
                    )
                }
            }
            schema::member::ROLE => {
                let role = expect_parse::<Role>(op, key)?;
                if on_customer && !is_self {
                    return deny("a customer's role can only be changed by themself");
                }
                self.needs(is_self || self.role.manages(), "cannot change roles")?;
                if is_self && !self.role.manages() && role != Role::Observer {
                    // Contributors and observers may step down, never up.
                    return deny(format!(
                        "{} cannot raise their own role",
                        article(self.role)
                    ));
                }
                self.needs(
                    role != Role::Customer || self.role == Role::Customer,
                    "cannot make anyone a customer: only a customer can",
                )
            }
            schema::member::NAME => {
                expect_str(op, key)?;
                if is_self {
                    return Ok(());
                }
                self.needs(self.role.manages(), "cannot rename other members")?;
                self.needs(
                    !on_customer || self.role == Role::Customer,
                    "cannot rename a customer",
                )
            }
            _ => deny(format!("a member's '{key}' cannot be changed")),
        }
    }

    pub(super) fn invite(
        &mut self,
        t: &Target,
        id: &str,
        op: &legacy::Op,
    ) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if !t.new {
            self.invite_edits.push(id.to_string());
            if key == schema::invite::USES_LEFT {
                // Managers set it; anyone else only by redeeming the invite (`finish` decides).
                let left = expect_int(op, key)?;
                self.uses_left_puts.push((id.to_string(), left));
                return Ok(());
            }
        }
        self.needs(self.role.manages(), "cannot manage invites")?;
        if t.new {
            return match key {
                schema::invite::ROLE => {
                    let role = expect_parse::<Role>(op, key)?;
                    self.needs(
                        role != Role::Customer || self.may_bring_a_customer(),
                        "cannot invite a customer: only a customer can",
                    )
                }
                schema::invite::PUBLIC_KEY => match &op.action {
                    OpType::Put(ScalarValue::Bytes(b)) if b.len() == 32 => Ok(()),
                    _ => deny("an invite's public key must be 32 bytes"),
                },
                // Invites made by earlier versions; kept so their history still verifies.
                schema::invite::SECRET_HASH => match &op.action {
                    OpType::Put(ScalarValue::Bytes(b)) if b.len() == 32 => Ok(()),
                    _ => deny("secret_hash must be 32 bytes"),
                },
                schema::invite::EXPIRES_AT | schema::invite::USES_LEFT => expect_int(op, key).map(|_| ()),
                schema::invite::CREATED_BY => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("created_by must name the change's author"),
                },
                schema::invite::REVOKED => expect_bool(op, key).map(|_| ()),
                _ => deny(format!("an invite has no field '{key}'")),
            };
        }
        match key {
            schema::invite::REVOKED => expect_bool(op, key).map(|_| ()),
            _ => deny(format!("an invite's '{key}' cannot be changed")),
        }
    }

    pub(super) fn steps_list(&mut self, op: &legacy::Op) -> Result<(), Forbidden> {
        match (&op.action, &op.key) {
            (OpType::Delete, Key::Seq(ElementId::Id(_))) => {
                self.needs(self.role.manages(), "cannot delete steps")
            }
            _ => deny("steps are maps inserted whole"),
        }
    }

    pub(super) fn step(&mut self, t: &Target, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        self.needs(self.role.edits_steps(), "cannot edit steps")?;
        if t.new {
            return match key {
                schema::step::ID | schema::step::TITLE => non_empty(op, key),
                schema::step::DETAIL => expect_str(op, key).map(|_| ()),
                schema::step::STATUS => expect_parse::<StepStatus>(op, key).map(|_| ()),
                schema::step::ASSIGNEE => expect_node(op, key),
                schema::step::CUSTOMER_INVOLVED => expect_bool(op, key).map(|_| ()),
                schema::step::DUE => expect_opt_str(op, key).map(|_| ()),
                schema::step::CREATED_BY => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("created_by must name the change's author"),
                },
                _ => deny(format!("a step has no field '{key}'")),
            };
        }
        let assignee = self.before().str(&t.obj, schema::step::ASSIGNEE);
        let mine_or_free = assignee.as_deref().is_none_or(|a| a == self.me);
        match key {
            schema::step::STATUS => {
                expect_parse::<StepStatus>(op, key)?;
                self.needs(
                    self.role.manages() || mine_or_free,
                    "cannot move a step assigned to someone else",
                )
            }
            schema::step::ASSIGNEE => {
                expect_node(op, key)?;
                self.needs(
                    self.role.manages() || mine_or_free,
                    "cannot reassign a step assigned to someone else",
                )
            }
            schema::step::TITLE => non_empty(op, key),
            schema::step::DETAIL | schema::step::DUE => expect_opt_str(op, key).map(|_| ()),
            schema::step::CUSTOMER_INVOLVED => expect_bool(op, key).map(|_| ()),
            _ => deny(format!("a step's '{key}' cannot be changed")),
        }
    }

    pub(super) fn decision(&mut self, t: &Target, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if t.new {
            return match key {
                schema::decision::QUESTION => non_empty(op, key),
                schema::decision::STEP => expect_opt_str(op, key).map(|_| ()),
                schema::decision::WHO => expect_parse::<Who>(op, key).map(|_| ()),
                schema::decision::MODE => expect_parse::<Mode>(op, key).map(|_| ()),
                schema::decision::OUTCOME => match expect_opt_str(op, key)? {
                    None => Ok(()),
                    Some(_) => deny("a new decision has no outcome yet"),
                },
                schema::decision::CLOSED => match expect_bool(op, key)? {
                    false => Ok(()),
                    true => deny("a new decision starts open"),
                },
                schema::decision::CREATED_BY => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("created_by must name the change's author"),
                },
                _ => deny(format!("a decision has no field '{key}'")),
            };
        }
        let before = self.before();
        let d = before.read_decision("", &t.obj);
        if d.closed {
            return deny(format!("the decision '{}' is closed", d.question));
        }
        match key {
            schema::decision::OUTCOME => {
                let outcome = expect_opt_str(op, key)?;
                if let Some(o) = outcome {
                    if !d.options.iter().any(|x| x == o) {
                        return deny(format!("'{o}' is not an option of '{}'", d.question));
                    }
                }
                self.may_settle(&d)?;
                if d.mode == Mode::Choice {
                    match outcome {
                        Some(o) => self.choice_outcomes.push((t.obj.clone(), o.to_string())),
                        None => return deny("a choice is settled by choosing an option"),
                    }
                }
                Ok(())
            }
            schema::decision::CLOSED => {
                if !expect_bool(op, key)? {
                    return deny("a closed decision cannot be reopened");
                }
                self.may_settle(&d)
            }
            _ => deny(format!("a decision's '{key}' cannot be changed")),
        }
    }

    /// May the author settle (set the outcome of, close) this decision?
    pub(super) fn may_settle(&self, d: &crate::flow::Decision) -> Result<(), Forbidden> {
        match (d.who, d.mode) {
            (Who::Customer, _) => self.needs(
                self.role == Role::Customer,
                "cannot settle a decision that is the customer's to make",
            ),
            (Who::Members, Mode::Choice) => Ok(()),
            (Who::Members, Mode::Vote) => {
                self.needs(self.role.manages(), "cannot close a members' vote")
            }
        }
    }

    pub(super) fn choice(&mut self, decision: &ObjId, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if key != self.me {
            return deny("members choose only for themselves");
        }
        let before = self.before();
        let d = before.read_decision("", decision);
        if d.question.is_empty() {
            return deny("choices are made on decisions that already exist");
        }
        if d.closed {
            return deny(format!("the decision '{}' is closed", d.question));
        }
        if d.who == Who::Customer {
            self.needs(
                self.role == Role::Customer,
                &format!(
                    "cannot choose in '{}': it is the customer's decision",
                    d.question
                ),
            )?;
        }
        match &op.action {
            OpType::Delete => Ok(()),
            _ => {
                let option = expect_str(op, "a choice")?;
                if !d.options.iter().any(|o| o == option) {
                    return deny(format!("'{option}' is not an option of '{}'", d.question));
                }
                self.my_choices.insert(decision.clone(), option.to_string());
                Ok(())
            }
        }
    }

    pub(super) fn comment(&mut self, t: &Target, op: &legacy::Op) -> Result<(), Forbidden> {
        let key = map_key(op)?;
        if t.new {
            return match key {
                schema::comment::ID => non_empty(op, key),
                schema::comment::AUTHOR => match expect_str(op, key)? {
                    s if s == self.me => Ok(()),
                    _ => deny("a comment's author must be the change's author"),
                },
                schema::comment::AT => expect_int(op, key).map(|_| ()),
                schema::comment::STEP => expect_opt_str(op, key).map(|_| ()),
                schema::comment::TEXT => non_empty(op, key),
                _ => deny(format!("a comment has no field '{key}'")),
            };
        }
        match key {
            schema::comment::TEXT => {
                let author = self.before().str(&t.obj, schema::comment::AUTHOR);
                if author.as_deref() != Some(self.me) {
                    return deny("only a comment's author can edit it");
                }
                non_empty(op, key)
            }
            _ => deny(format!("a comment's '{key}' cannot be changed")),
        }
    }

    pub(super) fn finish(self) -> Result<(), Forbidden> {
        if self.genesis {
            if self.members_created != [self.me.to_string()] {
                return deny("a new flow's only member is its creator");
            }
            for c in [
                field::MEMBERS,
                field::INVITES,
                field::STEPS,
                field::DECISIONS,
                field::COMMENTS,
            ] {
                if !self
                    .targets
                    .values()
                    .any(|t| place_name(&t.place) == Some(c))
                {
                    return deny(format!("a new flow must create its {c}"));
                }
            }
        }
        if !self.genesis {
            self.check_new_members()?;
        }
        for (decision, outcome) in &self.choice_outcomes {
            if self.my_choices.get(decision) != Some(outcome) {
                return deny("a choice's outcome must be the option its chooser picks");
            }
        }
        Ok(())
    }
}
