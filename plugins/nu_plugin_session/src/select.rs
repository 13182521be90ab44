//! Choosing sessions: positional ids, `--name` / `--instance-id` / `--computer-name`, and pipeline
//! input by value (session records, plain ints) or by property name (records with `instance_id`,
//! `computer_name` + `name`, `id`, or `name` columns, matched in that order of preference).
//!
//! [`select`] is the one call every command makes: it reads the criteria, asks the hosts named
//! by computer (for the commands that find sessions made elsewhere: get, connect, receive), and
//! picks the sessions.
//!
//! - A literal id, name or instance id that matches nothing is an error naming it; a glob that
//!   matches nothing selects nothing. A session matched several times is selected once.
//! - Pipeline input that is empty selects nothing, without an error; only a command given no
//!   selection at all (no arguments, no flags, no input) is an error, for those that need one.
//! - A computer that was asked answers for itself: its sessions are the ones it reported (under
//!   whatever name this process first knew them).

use nu_plugin::EvaluatedCall;
use nu_protocol::{LabeledError, PipelineData, Signature, Spanned, SyntaxShape, Value};
use uuid::Uuid;

use crate::Cx;
use crate::errors::not_found;
use crate::sessions::{Session, SessionTable};

/// More criteria than any session table holds: an endless range or stream is a mistake, not a
/// selection, and must not hang the plugin.
const MAX_CRITERIA: usize = 100_000;

#[derive(Debug, Default)]
pub struct Criteria {
    ids: Vec<Spanned<i64>>,
    names: Vec<Spanned<String>>,
    instance_ids: Vec<Spanned<String>>,
    computer_names: Vec<Spanned<String>>,
    /// `computer_name` + `name` from records bound by property name, or both flags.
    pairs: Vec<(Spanned<String>, Spanned<String>)>,
    /// Something was given (arguments, flags, pipeline input), even if it names no session.
    given: bool,
}

/// Declares the arguments [`Criteria::from_call`] reads: the sessions as rest positionals
/// (ids, records, tables) and the selection flags.
pub fn selection_signature(signature: Signature) -> Signature {
    selection_flags(signature.rest(
        "session",
        SyntaxShape::Any,
        "Sessions: ids, session records or tables of them.",
    ))
}

/// The selection flags alone: `--name`, `--instance-id`, `--computer-name`.
pub fn selection_flags(signature: Signature) -> Signature {
    naming_flags(
        signature,
        "Sessions whose name matches this glob (case-insensitive).",
    )
    .named(
        "computer-name",
        // The list first: tried the other way round, `[web1 web2]` parses as one string.
        SyntaxShape::OneOf(vec![
            SyntaxShape::List(Box::new(SyntaxShape::String)),
            SyntaxShape::String,
        ]),
        "Sessions on these computers (names or globs).",
        Some('c'),
    )
}

/// `--name` (described by `name_help`) and `--instance-id`: the flags that name a session.
pub fn naming_flags(signature: Signature, name_help: &str) -> Signature {
    signature
        .named("name", SyntaxShape::String, name_help, Some('n'))
        .named(
            "instance-id",
            SyntaxShape::String,
            "The session with this instance id.",
            None,
        )
}

/// What a command needs: whether to ask the hosts it names for their sessions (the commands
/// that reach sessions made elsewhere), and what to do when given no selection at all.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    discover: bool,
    /// `None`: every session (get-session); else an error, `nothing` (`no sessions to remove`)
    /// with `help`.
    otherwise: Option<(&'static str, &'static str)>,
}

impl Need {
    /// Every session when nothing is selected, the hosts asked (get-session).
    pub const EVERYTHING: Need = Need {
        discover: true,
        otherwise: None,
    };

    /// An error, `nothing` with `help`, when nothing is selected.
    pub const fn sessions(nothing: &'static str, help: &'static str) -> Need {
        Need {
            discover: false,
            otherwise: Some((nothing, help)),
        }
    }

    /// The hosts named are asked for their sessions first.
    pub const fn discovering(self) -> Need {
        Need {
            discover: true,
            ..self
        }
    }
}

/// The help of a command that can reach sessions made elsewhere, when given nothing.
pub const ASK_A_HOST: &str = "`get-session --computer-name <host>` lists a host's sessions";

/// The sessions a command acts on, and the computers that could not be asked.
pub struct Selected {
    /// Local ids, each once, in the order first matched (id order for everything).
    pub ids: Vec<i64>,
    /// The computers that did not answer, with why.
    pub unreachable: Vec<(String, LabeledError)>,
    /// How many computers were asked.
    pub asked: usize,
}

impl Selected {
    /// The selection, or, when a single computer was asked, it did not answer and nothing else
    /// was selected, its error (a lone target's failure is the command's failure).
    pub fn or_lone_failure(mut self) -> Result<Selected, LabeledError> {
        if self.asked == 1 && self.unreachable.len() == 1 && self.ids.is_empty() {
            return Err(self.unreachable.remove(0).1);
        }
        Ok(self)
    }

    /// The computers that did not answer, as errors named after them.
    pub fn failures(&self) -> Vec<LabeledError> {
        self.unreachable
            .iter()
            .map(|(computer, error)| crate::errors::named(error.clone(), computer))
            .collect()
    }
}

/// What hosts said they have: the computer as asked, and the instance ids there.
#[derive(Debug, Default)]
pub struct Reported {
    computers: Vec<(String, Vec<Uuid>)>,
}

impl Reported {
    pub fn add(&mut self, computer: &str, sessions: Vec<Uuid>) {
        self.computers.push((computer.to_string(), sessions));
    }

    fn of(&self, computer: &str) -> Option<&[Uuid]> {
        self.computers
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(computer))
            .map(|(_, ids)| ids.as_slice())
    }
}

/// Reads the selection of the call and `input`, asks the hosts it names when the command
/// discovers, and picks the sessions.
pub fn select(cx: &Cx, input: PipelineData, need: Need) -> Result<Selected, LabeledError> {
    let Cx {
        plugin,
        engine,
        call,
        ..
    } = *cx;
    let mut criteria = Criteria::from_call(call, Some(0))?;
    criteria.add_pipeline(input)?;
    if !criteria.given {
        return match need.otherwise {
            None => Ok(Selected {
                ids: plugin.sessions().listed().map(|s| s.id).collect(),
                unreachable: Vec::new(),
                asked: 0,
            }),
            Some((nothing, help)) => Err(LabeledError::new(nothing)
                .with_label(
                    "needs session ids, --name, --instance-id, --computer-name or piped sessions",
                    call.head,
                )
                .with_help(help)),
        };
    }
    let (reported, unreachable, asked) = if need.discover {
        let computers = criteria.computers_to_ask();
        let asked = computers.len();
        let (reported, unreachable) =
            crate::operations::discover(plugin, engine, call, &computers)?;
        (reported, unreachable, asked)
    } else {
        (Reported::default(), Vec::new(), 0)
    };
    let ids = criteria.select(&plugin.sessions(), &reported)?;
    Ok(Selected {
        ids,
        unreachable,
        asked,
    })
}

impl Criteria {
    /// The criteria given as arguments: sessions from the rest positionals starting at
    /// `sessions_from` (ids, records or tables, as by value), and the selection flags the command
    /// declares.
    pub fn from_call(
        call: &EvaluatedCall,
        sessions_from: Option<usize>,
    ) -> Result<Self, LabeledError> {
        let mut criteria = Criteria::default();
        if let Some(start) = sessions_from {
            for value in call.rest::<Value>(start)? {
                criteria.given = true;
                criteria.add_value(value)?;
            }
        }
        let name = call.get_flag::<Spanned<String>>("name")?;
        criteria
            .instance_ids
            .extend(call.get_flag::<Spanned<String>>("instance-id")?);
        let computers = crate::flags::computer_names(call)?;
        criteria.given |=
            name.is_some() || !criteria.instance_ids.is_empty() || !computers.is_empty();
        // `--computer-name` with `--name`: sessions of that name on those computers (both must
        // hold). With `--instance-id`, the instance id alone says which session.
        match name {
            Some(name) if !computers.is_empty() => {
                for computer in computers {
                    criteria.pairs.push((computer, name.clone()));
                }
            }
            Some(name) => criteria.names.push(name),
            None if criteria.instance_ids.is_empty() => criteria.computer_names.extend(computers),
            None => {}
        }
        Ok(criteria)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether anything was given (arguments, flags or input), even if it names no session.
    pub fn given(&self) -> bool {
        self.given
    }

    /// Adds pipeline input (by value or by property name). Input that is there but empty (an
    /// empty table) counts as given.
    pub fn add_pipeline(&mut self, input: PipelineData) -> Result<(), LabeledError> {
        match input {
            PipelineData::Empty => Ok(()),
            PipelineData::Value(Value::Nothing { .. }, _) => Ok(()),
            PipelineData::Value(value, _) => {
                self.given = true;
                self.add_value(value)
            }
            PipelineData::ListStream(stream, _) => {
                self.given = true;
                stream
                    .into_iter()
                    .try_for_each(|value| self.add_value(value))
            }
            PipelineData::ByteStream(stream, _) => {
                Err(LabeledError::new("expected sessions, got a byte stream")
                    .with_label("this input", stream.span()))
            }
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
            + self.names.len()
            + self.instance_ids.len()
            + self.computer_names.len()
            + self.pairs.len()
    }

    /// The literal computer names (not globs) the criteria name: the hosts to ask.
    pub fn computers_to_ask(&self) -> Vec<Spanned<String>> {
        let mut computers: Vec<Spanned<String>> = Vec::new();
        let named = self
            .computer_names
            .iter()
            .chain(self.pairs.iter().map(|(computer, _)| computer));
        for computer in named {
            if !is_glob(&computer.item)
                && !computers
                    .iter()
                    .any(|c| c.item.eq_ignore_ascii_case(&computer.item))
            {
                computers.push(computer.clone());
            }
        }
        computers
    }

    /// Adds one value given by value: an id, a session record, a record by property name, or a
    /// list of those.
    pub fn add_value(&mut self, value: Value) -> Result<(), LabeledError> {
        let span = value.span();
        if self.len() >= MAX_CRITERIA {
            return Err(LabeledError::new("too many sessions named")
                .with_label(format!("more than {MAX_CRITERIA} ids or names"), span)
                .with_help("an endless range or stream cannot select sessions"));
        }
        match value {
            Value::Int { val, .. } => self.ids.push(Spanned { item: val, span }),
            Value::Nothing { .. } => {}
            Value::List { vals, .. } => {
                for value in vals {
                    self.add_value(value)?;
                }
            }
            Value::Range { val, .. } => {
                for value in val.into_range_iter(span, nu_protocol::Signals::empty()) {
                    self.add_value(value)?;
                }
            }
            Value::Record { val, .. } => {
                let text = |column: &str| -> Result<Option<Spanned<String>>, LabeledError> {
                    match val.get(column) {
                        None | Some(Value::Nothing { .. }) => Ok(None),
                        Some(v) => Ok(Some(Spanned {
                            item: v.coerce_string()?,
                            span: v.span(),
                        })),
                    }
                };
                if let Some(instance_id) = text("instance_id")? {
                    self.instance_ids.push(instance_id);
                } else if let (Some(computer), Some(name)) = (text("computer_name")?, text("name")?)
                {
                    self.pairs.push((computer, name));
                } else if let Some(id) = val.get("id") {
                    self.ids.push(Spanned {
                        item: id.as_int()?,
                        span: id.span(),
                    });
                } else if let Some(name) = text("name")? {
                    self.names.push(name);
                } else if let Some(computer) = text("computer_name")? {
                    self.computer_names.push(computer);
                } else {
                    return Err(LabeledError::new("this record names no session")
                        .with_label("no instance_id, id, name or computer_name column", span)
                        .with_help("pipe session records (from get-session), ids, or records with those columns"));
                }
            }
            other => {
                return Err(LabeledError::new(format!(
                    "expected a session, got {}",
                    other.get_type()
                ))
                .with_label("not a session id, record or table", span)
                .with_help("pass session ids, session records, or use --name"));
            }
        }
        Ok(())
    }

    /// The local ids of the selected sessions, each once, in the order first matched. On the
    /// computers in `reported`, the sessions are the ones they reported.
    pub fn select(
        &self,
        table: &SessionTable,
        reported: &Reported,
    ) -> Result<Vec<i64>, LabeledError> {
        let mut selected: Vec<i64> = Vec::new();
        let mut add = |id: i64| {
            if !selected.contains(&id) {
                selected.push(id);
            }
        };
        for id in &self.ids {
            match table.get(id.item) {
                Some(session) => add(session.id),
                None => return Err(crate::errors::no_session(id.item, id.span)),
            }
        }
        for instance_id in &self.instance_ids {
            let wanted: Uuid = instance_id.item.trim().parse().map_err(|_| {
                LabeledError::new(format!("`{}` is not an instance id", instance_id.item))
                    .with_label("expected a UUID like 5f0c6f1e-…", instance_id.span)
            })?;
            match table.all().find(|s| s.instance_id == wanted) {
                Some(session) => add(session.id),
                None => {
                    return Err(not_found(
                        format!("no session with instance id {wanted}"),
                        instance_id.span,
                    ));
                }
            }
        }
        for name in &self.names {
            let matched = matching(table, |s| matches(&name.item, &s.name));
            if matched.is_empty() && !is_glob(&name.item) {
                return Err(not_found(
                    format!("no session named {}", name.item),
                    name.span,
                ));
            }
            matched.into_iter().for_each(&mut add);
        }
        let on = |computer: &str, session: &Session| match reported.of(computer) {
            Some(there) => there.contains(&session.instance_id),
            None => matches(computer, &session.computer_name),
        };
        // A computer with no sessions is not an error: it simply has none.
        for computer in &self.computer_names {
            matching(table, |s| on(&computer.item, s))
                .into_iter()
                .for_each(&mut add);
        }
        for (computer, name) in &self.pairs {
            let matched = matching(table, |s| {
                on(&computer.item, s) && matches(&name.item, &s.name)
            });
            if matched.is_empty() && !is_glob(&name.item) && !is_glob(&computer.item) {
                return Err(not_found(
                    format!(
                        "no session named {} on computer {}",
                        name.item, computer.item
                    ),
                    name.span,
                ));
            }
            matched.into_iter().for_each(&mut add);
        }
        Ok(selected)
    }
}

fn matching(table: &SessionTable, predicate: impl Fn(&Session) -> bool) -> Vec<i64> {
    table
        .listed()
        .filter(|s| predicate(s))
        .map(|s| s.id)
        .collect()
}

/// Whether a name pattern has wildcards (`*`, `?`, `[...]`).
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Case-insensitive wildcard match, as PowerShell's `-Name` does.
pub fn matches(pattern: &str, text: &str) -> bool {
    if !is_glob(pattern) {
        return pattern.to_lowercase() == text.to_lowercase();
    }
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    wildcard(&pattern, &text)
}

fn wildcard(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|skip| wildcard(rest, &text[skip..])),
        Some(('?', rest)) => !text.is_empty() && wildcard(rest, &text[1..]),
        Some(('[', rest)) => match (rest.iter().position(|c| *c == ']'), text.split_first()) {
            (Some(close), Some((c, text_rest))) => {
                class_matches(&rest[..close], *c) && wildcard(&rest[close + 1..], text_rest)
            }
            // An unclosed `[` is a literal character.
            (None, Some(('[', text_rest))) => wildcard(rest, text_rest),
            _ => false,
        },
        Some((p, rest)) => text.first() == Some(p) && wildcard(rest, &text[1..]),
    }
}

fn class_matches(class: &[char], c: char) -> bool {
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == '-' {
            if class[i] <= c && c <= class[i + 2] {
                return true;
            }
            i += 3;
        } else {
            if class[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_protocol::Span;

    #[test]
    fn wildcards_are_case_insensitive() {
        assert!(matches("web*", "WEB1"));
        assert!(matches("w?b1", "web1"));
        assert!(matches("web[1-3]", "Web2"));
        assert!(!matches("web[1-3]", "web4"));
        assert!(matches("Session1", "session1"));
        assert!(!matches("Session1", "Session10"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXbY"));
    }

    #[test]
    fn literal_patterns_are_not_globs() {
        assert!(!is_glob("web1"));
        assert!(is_glob("web*"));
        assert!(is_glob("web[12]"));
    }

    #[test]
    fn empty_input_is_given_but_names_nothing() {
        let span = Span::test_data();
        let mut c = Criteria::default();
        c.add_pipeline(PipelineData::empty()).unwrap();
        assert!(!c.given());
        c.add_pipeline(PipelineData::value(Value::list(vec![], span), None))
            .unwrap();
        assert!(c.given());
        assert!(c.is_empty());
    }

    #[test]
    fn literal_computers_are_asked_once_and_globs_never() {
        let span = Span::test_data();
        let s = |x: &str| Spanned {
            item: x.to_string(),
            span,
        };
        let c = Criteria {
            computer_names: vec![s("web1"), s("WEB1"), s("web*")],
            pairs: vec![(s("web2"), s("job"))],
            ..Default::default()
        };
        let asked: Vec<String> = c.computers_to_ask().into_iter().map(|c| c.item).collect();
        assert_eq!(asked, ["web1", "web2"]);
    }

    #[test]
    fn records_bind_by_the_preferred_property() {
        let span = Span::test_data();
        let mut c = Criteria::default();
        let record = |cols: &[(&str, Value)]| {
            let mut r = nu_protocol::Record::new();
            for (k, v) in cols {
                r.push(*k, v.clone());
            }
            Value::record(r, span)
        };
        let s = |x: &str| Value::string(x, span);
        c.add_value(record(&[
            ("id", Value::int(4, span)),
            ("name", s("a")),
            ("computer_name", s("h")),
            ("instance_id", s("x")),
        ]))
        .unwrap();
        c.add_value(record(&[("name", s("a")), ("computer_name", s("h"))]))
            .unwrap();
        c.add_value(record(&[("id", Value::int(2, span)), ("name", s("b"))]))
            .unwrap();
        c.add_value(record(&[("name", s("c"))])).unwrap();
        c.add_value(Value::list(vec![Value::int(7, span)], span))
            .unwrap();
        assert_eq!(c.instance_ids.len(), 1);
        assert_eq!(c.pairs.len(), 1);
        assert_eq!(c.ids.iter().map(|i| i.item).collect::<Vec<_>>(), vec![2, 7]);
        assert_eq!(c.names.len(), 1);
        assert!(c.add_value(s("web1")).is_err());
        let endless = Value::test_range(nu_protocol::Range::IntRange(
            nu_protocol::IntRange::new(
                Value::test_int(1),
                Value::test_int(2),
                Value::test_nothing(),
                nu_protocol::ast::RangeInclusion::Inclusive,
                span,
            )
            .unwrap(),
        ));
        let err = Criteria::default().add_value(endless).unwrap_err();
        assert_eq!(err.msg, "too many sessions named");
        assert!(c.add_value(record(&[("other", s("x"))])).is_err());
    }
}
