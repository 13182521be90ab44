//! Code for a session: a string of Nushell source, or a closure sent as its source with its
//! parameters (filled from `--args`) and the local variables it captures (sent as values), so
//! `let n = 5; invoke-session 1 { $n * 2 }` gives 10.
//!
//! The closure's body runs at the session's top level, not in a closure scope, so `let`, `def`
//! and `cd` in it persist in the session like lines typed at a prompt.

use std::collections::HashMap;

use nu_plugin::{EngineInterface, EvaluatedCall};
use nu_protocol::engine::Closure;
use nu_protocol::ir::{Instruction, Literal};
use nu_protocol::{BlockId, LabeledError, PipelineData, Span, Value, VarId};
use nu_session_client::Binding;

pub struct Code {
    pub source: String,
    pub bindings: Vec<Binding>,
    /// Where the body sent as `source` stands in the user's text, to point errors into it.
    origin: Option<Origin>,
}

struct Origin {
    body_start: usize,
    /// Bytes added before the body (default values of parameters).
    prefix_len: usize,
    body_len: usize,
}

#[derive(Debug, PartialEq)]
struct Param {
    name: String,
    kind: ParamKind,
    default: Option<String>,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum ParamKind {
    Required,
    Optional,
    Rest,
}

impl Code {
    /// Code from the `code` argument of `invoke-session`, with `args` for closure parameters.
    pub fn new(
        engine: &EngineInterface,
        code: &Value,
        args: Vec<Value>,
        args_span: Span,
    ) -> Result<Code, LabeledError> {
        let span = code.span();
        match code {
            Value::String { val, .. } => {
                if !args.is_empty() {
                    return Err(LabeledError::new("--args needs a closure with parameters")
                        .with_label("a string has no parameters", span)
                        .with_help("write the code as a closure: {|a, b| ... }"));
                }
                Ok(Code {
                    source: val.clone(),
                    bindings: Vec::new(),
                    origin: None,
                })
            }
            Value::Closure { val, .. } => from_closure(engine, val, span, args, args_span),
            other => Err(LabeledError::new(format!(
                "expected a closure or a string of code, got {}",
                other.get_type()
            ))
            .with_label("not code", span)),
        }
    }

    /// A line typed at `enter-session`'s prompt, which stands at `at` in the prompt's own
    /// sources: errors point into it.
    pub fn typed(source: String, at: usize) -> Code {
        let body_len = source.len();
        Code {
            source,
            bindings: Vec::new(),
            origin: Some(Origin {
                body_start: at,
                prefix_len: 0,
                body_len,
            }),
        }
    }

    /// The span in the user's text of a span relative to the sent source.
    pub fn local_span(&self, (start, end): (usize, usize)) -> Option<Span> {
        let origin = self.origin.as_ref()?;
        let start = start.checked_sub(origin.prefix_len)?;
        let end = end.checked_sub(origin.prefix_len)?;
        // The host says where; what it says is checked (an inverted or far span is no span).
        (start <= end && end <= origin.body_len)
            .then(|| Span::new(origin.body_start + start, origin.body_start + end))
    }
}

fn from_closure(
    engine: &EngineInterface,
    closure: &Closure,
    span: Span,
    args: Vec<Value>,
    args_span: Span,
) -> Result<Code, LabeledError> {
    let literal = engine.get_span_contents(span)?;
    let (text, text_start) = if literal.starts_with(b"{") && literal.ends_with(b"}") {
        (
            String::from_utf8_lossy(&literal).into_owned(),
            Some(span.start),
        )
    } else {
        // Passed through a variable: ask the engine for the closure's source.
        (view_source(engine, closure, span)?, None)
    };
    let (params, body_offset) = split_closure(&text).ok_or_else(|| {
        LabeledError::new("cannot read this closure's source").with_label("this closure", span)
    })?;
    let body = &text[body_offset..text.len() - 1];

    let mut bindings = Vec::new();
    let mut prefix = String::new();
    let mut args = args.into_iter();
    for param in &params {
        let value = match param.kind {
            ParamKind::Rest => Some(Value::list(args.by_ref().collect(), args_span)),
            _ => args.next(),
        };
        match (value, &param.default, param.kind) {
            (Some(value), _, _) => bindings.push(binding(&param.name, value, args_span)?),
            (None, Some(default), _) => {
                prefix.push_str(&format!("let {} = ({default})\n", param.name));
            }
            (None, None, ParamKind::Optional) => {
                bindings.push(binding(&param.name, Value::nothing(args_span), args_span)?)
            }
            (None, None, _) => {
                return Err(LabeledError::new(format!(
                    "the closure's parameter `{}` has no value",
                    param.name
                ))
                .with_label("this closure takes parameters", span)
                .with_help("pass them with --args [...]"));
            }
        }
    }
    let extra = args.count();
    if extra > 0 {
        return Err(LabeledError::new(format!(
            "{extra} more argument(s) than the closure has parameters"
        ))
        .with_label("too many arguments", args_span));
    }

    let names = captured_names(engine, closure)?;
    for (var_id, value) in &closure.captures {
        let Some(name) = names.get(var_id) else {
            continue; // captured but never read by name: nothing to send
        };
        if params.iter().any(|p| &p.name == name) {
            continue;
        }
        bindings.push(binding(name, value.clone(), span)?);
    }

    let origin = text_start.map(|start| Origin {
        body_start: start + body_offset,
        prefix_len: prefix.len(),
        body_len: body.len(),
    });
    Ok(Code {
        source: format!("{prefix}{body}"),
        bindings,
        origin,
    })
}

fn binding(name: &str, value: Value, span: Span) -> Result<Binding, LabeledError> {
    let mut value = value;
    value.recurse_mut(&mut |v: &mut Value| match v {
        Value::Closure { .. } => Err(LabeledError::new(format!(
            "`${name}` holds a closure, which cannot be sent to a session"
        ))
        .with_label("captured or passed here", span)
        .with_help("define the closure inside the session's code instead")),
        Value::Custom { val, .. } => {
            let base = val.to_base_value(span).map_err(LabeledError::from)?;
            *v = base;
            Ok(())
        }
        _ => Ok(()),
    })?;
    Ok(Binding {
        name: name.to_string(),
        value,
    })
}

fn view_source(
    engine: &EngineInterface,
    closure: &Closure,
    span: Span,
) -> Result<String, LabeledError> {
    let decl = engine.find_decl("view source")?.ok_or_else(|| {
        LabeledError::new("cannot read the closure's source")
            .with_label("passed through a variable", span)
            .with_help("write the closure literally in the invoke-session call")
    })?;
    let call = EvaluatedCall::new(span).with_positional(Value::closure(closure.clone(), span));
    let source = engine
        .call_decl(decl, call, PipelineData::empty(), true, false)?
        .into_value(span)?;
    Ok(source.coerce_into_string()?)
}

/// The names (without `$`) of captured variables, read from where the closure's compiled code
/// loads them (and from closures nested in it).
fn captured_names(
    engine: &EngineInterface,
    closure: &Closure,
) -> Result<HashMap<VarId, String>, LabeledError> {
    let wanted: Vec<VarId> = closure.captures.iter().map(|(id, _)| *id).collect();
    let mut names = HashMap::new();
    let mut blocks: Vec<BlockId> = vec![closure.block_id];
    let mut seen = Vec::new();
    while let Some(block_id) = blocks.pop() {
        if seen.contains(&block_id) || names.len() == wanted.len() {
            continue;
        }
        seen.push(block_id);
        let ir = engine.get_block_ir(block_id)?;
        for (index, instruction) in ir.instructions.iter().enumerate() {
            match instruction {
                Instruction::LoadVariable { var_id, .. }
                    if wanted.contains(var_id) && !names.contains_key(var_id) =>
                {
                    if let Some(span) = ir.spans.get(index) {
                        let text = engine.get_span_contents(*span)?;
                        if let Some(name) = variable_name(&text) {
                            names.insert(*var_id, name);
                        }
                    }
                }
                Instruction::LoadLiteral {
                    lit: Literal::Closure(id) | Literal::Block(id) | Literal::RowCondition(id),
                    ..
                } => blocks.push(*id),
                _ => {}
            }
        }
    }
    Ok(names)
}

/// `$name` (possibly followed by a cell path) → `name`.
fn variable_name(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?.strip_prefix('$')?;
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_string())
}

/// Splits `{|params| body}` into its parameters and the offset where the body starts.
fn split_closure(text: &str) -> Option<(Vec<Param>, usize)> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let trimmed = inner.trim_start();
    let lead = 1 + inner.len() - trimmed.len();
    if !trimmed.starts_with('|') {
        return Some((Vec::new(), 1));
    }
    let close = find_top_level(&trimmed[1..], '|')? + 1;
    let params = parse_params(&trimmed[1..close])?;
    Some((params, lead + close + 1))
}

/// Byte offset of the first `wanted` outside brackets and quotes.
fn find_top_level(text: &str, wanted: char) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' | '`' => quote = Some(c),
                '(' | '[' | '{' | '<' => depth += 1,
                ')' | ']' | '}' | '>' => depth = depth.saturating_sub(1),
                c if c == wanted && depth == 0 => return Some(i),
                _ => {}
            },
        }
    }
    None
}

/// Tokens of a parameter list: names, `:` and `=` and `,` alone, bracketed or quoted text whole.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        if let Some(q) = quote {
            current.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => {
                quote = Some(c);
                current.push(c);
            }
            '(' | '[' | '{' | '<' => {
                depth += 1;
                current.push(c);
            }
            ')' | ']' | '}' | '>' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            ':' | '=' | ',' if depth == 0 => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() && depth == 0 => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn parse_params(text: &str) -> Option<Vec<Param>> {
    let tokens = tokens(text);
    let mut params = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        i += 1;
        if token == "," {
            continue;
        }
        let (name, kind) = if let Some(rest) = token.strip_prefix("...") {
            (rest, ParamKind::Rest)
        } else if let Some(name) = token.strip_suffix('?') {
            (name, ParamKind::Optional)
        } else {
            (token.as_str(), ParamKind::Required)
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            return None;
        }
        let mut param = Param {
            name: name.to_string(),
            kind,
            default: None,
        };
        if tokens.get(i).is_some_and(|t| t == ":") {
            i += 2; // the type
        }
        if tokens.get(i).is_some_and(|t| t == "=") {
            param.default = tokens.get(i + 1).cloned();
            i += 2;
        }
        params.push(param);
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, ParamKind, Option<String>)> {
        split_closure(text)
            .unwrap()
            .0
            .into_iter()
            .map(|p| (p.name, p.kind, p.default))
            .collect()
    }

    #[test]
    fn spans_from_the_host_are_checked_before_use() {
        let code = Code::typed("ls | where size > 1mb".into(), 100);
        assert_eq!(code.local_span((0, 2)), Some(Span::new(100, 102)));
        // Inverted, past the end, or past any number: none (nushell's Span would panic).
        assert_eq!(code.local_span((5, 2)), None);
        assert_eq!(code.local_span((0, 999)), None);
        assert_eq!(code.local_span((usize::MAX, usize::MAX)), None);
    }

    #[test]
    fn splits_parameters_from_the_body() {
        let text = "{|a, b: int| $a + $b }";
        let (params, offset) = split_closure(text).unwrap();
        assert_eq!(params.len(), 2);
        assert_eq!(&text[offset..text.len() - 1], " $a + $b ");
        let text = "{ 1 + 1 }";
        let (params, offset) = split_closure(text).unwrap();
        assert!(params.is_empty());
        assert_eq!(&text[offset..text.len() - 1], " 1 + 1 ");
        let text = "{ || 5 }";
        let (params, offset) = split_closure(text).unwrap();
        assert!(params.is_empty());
        assert_eq!(&text[offset..text.len() - 1], " 5 ");
    }

    #[test]
    fn reads_parameter_kinds_types_and_defaults() {
        assert_eq!(
            names("{|x y?: string, z: record<a: int> = {a: 1}, ...rest: list<any>| $x }"),
            vec![
                ("x".into(), ParamKind::Required, None),
                ("y".into(), ParamKind::Optional, None),
                ("z".into(), ParamKind::Required, Some("{a: 1}".into())),
                ("rest".into(), ParamKind::Rest, None),
            ]
        );
        assert_eq!(
            names("{|s = '|'| $s }"),
            vec![("s".into(), ParamKind::Required, Some("'|'".into()))]
        );
    }

    #[test]
    fn variable_names_come_from_their_use() {
        assert_eq!(variable_name(b"$n"), Some("n".into()));
        assert_eq!(variable_name(b"$my_var.a.b"), Some("my_var".into()));
        assert_eq!(variable_name(b"n"), None);
    }
}
