//! Pipeline parameters and argv templates: a parameter's type and rules (the values a
//! trigger may give), and an argv element with `{placeholder}`s. Domain types: the
//! config checks them at start, a trigger's values are checked against them, and a
//! job's argv is rendered from them.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A parameter's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any string (subject to `pattern`).
    #[default]
    String,
    /// A signed 64-bit integer.
    Integer,
    /// `true` or `false`.
    Boolean,
}

/// A declared pipeline parameter.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Value type.
    pub kind: ParamType,
    /// Used when the trigger omits it; without a default the parameter is required.
    pub default: Option<String>,
    /// Must match the whole value.
    pub pattern: Option<Regex>,
    /// Whether a value may start with `-` (refused by default: argument injection).
    pub allow_leading_dash: bool,
}

/// One piece of an argv template element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Lit(String),
    /// `{name}`.
    Var(String),
}

/// An argv element with `{placeholder}`s; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

impl std::fmt::Display for Template {
    /// As written in the config: placeholders in braces, literal braces doubled.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for piece in &self.0 {
            match piece {
                Piece::Lit(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Piece::Var(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses `s`; the error says what is malformed.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some(c) => {
                                return Err(format!(
                                    "invalid character {c:?} in placeholder of {s:?}{}",
                                    brace_hint(s)
                                ));
                            }
                            None => {
                                return Err(format!("unclosed '{{' in {s:?}{}", brace_hint(s)));
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("empty placeholder in {s:?}{}", brace_hint(s)));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(name));
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' in {s:?} (write '}}}}' for a literal brace)"
                    ));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template(pieces))
    }

    /// Placeholder names used.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// Renders with `lookup`; a missing name renders empty (validated at load).
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(v) => out.push_str(&lookup(v).unwrap_or_default()),
            }
        }
        out
    }
}

/// For an argv element whose braces look like shell `${VAR}`, JSON or other literal text:
/// how to write them (`{{` and `}}`), with the element escaped.
pub fn brace_hint(arg: &str) -> String {
    let literal = arg.contains("${")
        || arg.contains("{}")
        || arg.contains("{\"")
        || arg.contains("\":")
        || arg.contains("{ ");
    if !literal {
        return String::new();
    }
    format!(
        "; braces that are not placeholders are written doubled: {:?}",
        arg.replace('{', "{{").replace('}', "}}")
    )
}

/// Largest accepted parameter value, in bytes.
pub const MAX_PARAM_BYTES: usize = 8 * 1024;

impl ParamSpec {
    /// Checks a trigger's JSON value and returns it as the string substituted into argv/env.
    pub fn accept(&self, value: &serde_json::Value) -> Result<String, String> {
        use serde_json::Value;
        let text = match (self.kind, value) {
            (ParamType::String, Value::String(s)) => s.clone(),
            (ParamType::String, Value::Number(n)) => n.to_string(),
            (ParamType::String, Value::Bool(b)) => b.to_string(),
            (ParamType::Integer, Value::Number(n)) if n.is_i64() => n.to_string(),
            (ParamType::Integer, Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                s.trim().to_string()
            }
            (ParamType::Boolean, Value::Bool(b)) => b.to_string(),
            (ParamType::Boolean, Value::String(s)) if s == "true" || s == "false" => s.clone(),
            (kind, v) => return Err(format!("expected {kind:?} value, got {v}").to_lowercase()),
        };
        if text.len() > MAX_PARAM_BYTES {
            return Err(format!(
                "value is {} bytes; the limit is {MAX_PARAM_BYTES}",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err("value contains a NUL byte".into());
        }
        // A value starting with '-' could be taken for an option by the program; for an
        // integer that is every negative number. Both need the parameter's consent.
        if text.starts_with('-') && !self.allow_leading_dash {
            return Err(match self.kind {
                ParamType::Integer => {
                    "negative values are refused (set allow_leading_dash = true to permit them)"
                }
                _ => "value may not start with '-' (set allow_leading_dash = true to permit it)",
            }
            .into());
        }
        if let Some(re) = &self.pattern
            && !re.is_match(&text)
        {
            return Err(format!("value does not match pattern {}", re.as_str()));
        }
        Ok(text)
    }
}
