//! From text to a checked `JobSpec`: parsing, duplicate keys, arrays for
//! objects, `--set` paths, every error with its JSON path, the schema.

use super::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// One problem with a spec, at a JSON path like `resources.devices_per_node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecIssue {
    pub path: String,
    pub message: String,
}

impl SpecIssue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{}", join_issues(.0))]
    Invalid(Vec<SpecIssue>),
}

impl CompileError {
    pub fn issues(&self) -> &[SpecIssue] {
        match self {
            CompileError::Invalid(v) => v,
        }
    }
}

fn join_issues(v: &[SpecIssue]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- parsing

/// Parse JSON text into a tree, reporting syntax errors with line and
/// column. A key given twice in one object is an error (JSON parsers
/// disagree on which one wins; the spec must say one thing).
pub fn parse_text(text: &str) -> Result<Value, CompileError> {
    let mut de = serde_json::Deserializer::from_str(text);
    if let Err(e) = serde::de::DeserializeSeed::deserialize(NoDuplicates(String::new()), &mut de) {
        if e.is_data() {
            let msg = e.to_string();
            let (path, what) = msg.split_once('\u{1}').unwrap_or(("", &msg));
            return Err(CompileError::Invalid(vec![SpecIssue::new(
                path,
                what.to_string(),
            )]));
        }
    }
    serde_json::from_str(text).map_err(|e| {
        CompileError::Invalid(vec![SpecIssue::new(
            "",
            format!(
                "invalid JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                e
            ),
        )])
    })
}

/// Walks a JSON document failing on the first key an object repeats; the
/// error reads "<path>\u{1}duplicate key ...".
struct NoDuplicates(String);

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicates {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicates {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = if self.0.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.0)
            };
            if !seen.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "{path}\u{1}duplicate key {k:?} (given twice in one object; say it once)"
                )));
            }
            map.next_value_seed(NoDuplicates(path))?;
        }
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(NoDuplicates(format!("{}[{i}]", self.0)))?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Where the spec has an array but its schema wants an object (serde
/// would read `"resources": [1, 2]` as the fields in order): one issue per
/// place, found by walking the tree along the JSON Schema.
fn arrays_for_objects(tree: &Value) -> Vec<SpecIssue> {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(json_schema);
    let mut out = Vec::new();
    walk_schema(schema, schema, tree, "", &mut out);
    out
}

/// The definition a `{"$ref": "#/$defs/X"}` schema points at: Some(Some)
/// for a reference, Some(None) for one that leads nowhere, None for a
/// schema that is not a reference.
fn deref<'a>(root: &'a Value, schema: &Value) -> Option<Option<&'a Value>> {
    let r = schema.get("$ref").and_then(Value::as_str)?;
    Some(
        r.strip_prefix("#/$defs/")
            .and_then(|n| root.get("$defs").and_then(|d| d.get(n))),
    )
}

fn walk_schema(root: &Value, schema: &Value, v: &Value, path: &str, out: &mut Vec<SpecIssue>) {
    if let Some(def) = deref(root, schema) {
        if let Some(def) = def {
            walk_schema(root, def, v, path, out);
        }
        return;
    }
    let variants = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array);
    if let Some(variants) = variants {
        // A tagged enum: follow the variant its tag names.
        for tag in ["kind", "type"] {
            if let Some(t) = v.get(tag).and_then(Value::as_str) {
                if let Some(var) = variants.iter().find(|var| {
                    var.pointer(&format!("/properties/{tag}/const")) == Some(&Value::from(t))
                }) {
                    return walk_schema(root, var, v, path, out);
                }
            }
        }
        let objects = variants.iter().all(|var| is_object_schema(root, var));
        if objects && v.is_array() {
            out.push(SpecIssue::new(
                path,
                "expected an object, got an array".to_string(),
            ));
        }
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Array(_) if is_object_schema(root, schema) => {
            out.push(SpecIssue::new(
                path,
                "expected an object, got an array".to_string(),
            ));
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    walk_schema(root, item, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            let props = schema.get("properties");
            for (k, x) in m {
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    walk_schema(root, p, x, &join(k), out);
                } else if let Some(extra) =
                    schema.get("additionalProperties").filter(|a| a.is_object())
                {
                    walk_schema(root, extra, x, &join(k), out);
                }
            }
        }
        _ => {}
    }
}

/// Whether a schema accepts objects and not arrays.
fn is_object_schema(root: &Value, schema: &Value) -> bool {
    if let Some(def) = deref(root, schema) {
        return def.is_some_and(|d| is_object_schema(root, d));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    (types.contains(&"object") || (types.is_empty() && schema.get("properties").is_some()))
        && !types.contains(&"array")
}

/// Apply one `--set path=value` override to the tree. The value is parsed as
/// JSON when it is valid JSON (numbers, booleans, arrays, quoted strings),
/// otherwise taken as a plain string. Missing intermediate objects are made.
pub fn apply_set(tree: &mut Value, assignment: &str) -> Result<(), SpecIssue> {
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        SpecIssue::new("--set", format!("expected path=value, got `{assignment}`"))
    })?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(|s| s.is_empty()) {
        return Err(SpecIssue::new(
            "--set",
            format!("bad path `{path}` in `{assignment}`"),
        ));
    }
    let value =
        serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    set_path(tree, path, value)
}

/// Set `path` (dot-separated object keys) in `tree` to `value`.
pub fn set_path(tree: &mut Value, path: &str, value: Value) -> Result<(), SpecIssue> {
    let mut cur = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let here = parts[..i].join(".");
        let obj = match cur {
            Value::Object(m) => m,
            other => {
                return Err(SpecIssue::new(
                    here.clone(),
                    format!(
                        "cannot set `{path}`: `{here}` is {} not an object",
                        type_name(other)
                    ),
                ))
            }
        };
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        cur = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    unreachable!("path has at least one part")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserialize the tree strictly. Structural problems (unknown field, wrong
/// type) carry the JSON path where serde stopped.
fn deserialize(tree: Value) -> Result<JobSpec, SpecIssue> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(tree.clone(), &mut track);
    match JobSpec::deserialize(de) {
        Ok(spec) => Ok(spec),
        Err(e) => {
            let path = track.path().to_string();
            let mut path = if path == "." { String::new() } else { path };
            let message = e.to_string();
            // Inside a tagged enum serde reports the enum's path; name the
            // unknown field itself so every error points at one key.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .or_else(|| message.strip_prefix("missing field `"))
                .and_then(|m| m.split('`').next())
            {
                if !path.ends_with(field) {
                    path = if path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    };
                }
            }
            // Inside a tagged enum (`workload`, `provider`) serde cannot say
            // which field had the wrong type: find it (the key whose
            // removal changes the error), or name `kind` for an unknown
            // variant.
            if let Some(Value::Object(obj)) = tree.get(&path).filter(|_| !path.contains('.')) {
                if message.starts_with("unknown variant") && obj.contains_key("kind") {
                    path = format!("{path}.kind");
                } else if ["invalid type", "invalid value", "invalid length"]
                    .iter()
                    .any(|p| message.starts_with(p))
                {
                    if let Some(key) = obj.keys().filter(|k| *k != "kind").find(|k| {
                        let mut t = tree.clone();
                        t[&path].as_object_mut().expect("an object").remove(*k);
                        JobSpec::deserialize(t)
                            .map_err(|e| e.to_string())
                            .err()
                            .as_deref()
                            != Some(message.as_str())
                    }) {
                        path = format!("{path}.{key}");
                    }
                }
            }
            Err(SpecIssue::new(path, message))
        }
    }
}

// ---------------------------------------------------------------- compile

/// A spec that passed every check, with notes on accepted-but-inactive parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub spec: JobSpec,
    pub warnings: Vec<SpecIssue>,
}

impl Compiled {
    pub fn world_size(&self) -> u32 {
        self.spec.resources.nodes * self.spec.resources.devices_per_node
    }
}

/// Remove the value at a serde_path_to_error path (`a.b`, `a[2].c`).
/// Returns false when the path cannot be followed.
fn remove_path(tree: &mut Value, path: &str) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('.') {
        let (name, rest) = seg
            .split_once('[')
            .map(|(n, r)| (n, Some(r)))
            .unwrap_or((seg, None));
        if !name.is_empty() {
            parts.push(name);
        }
        if let Some(rest) = rest {
            parts.extend(rest.split('[').map(|i| i.trim_end_matches(']')));
        }
    }
    let Some((last, parents)) = parts.split_last() else {
        return false;
    };
    let mut cur = tree;
    for p in parents {
        cur = match cur {
            Value::Object(m) => match m.get_mut(*p) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match p.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Object(m) => m.remove(*last).is_some(),
        _ => false,
    }
}

/// Deserialize, collecting every unknown field and every wrongly typed
/// field: after each such error the offending key is removed and the parse
/// tried again (bounded). Errors that removal cannot get past (a missing
/// required field, an unknown `kind`) end the search.
fn deserialize_all(mut tree: Value) -> (Option<JobSpec>, Vec<SpecIssue>, Vec<String>) {
    let mut issues: Vec<SpecIssue> = arrays_for_objects(&tree);
    let mut removed: Vec<String> = Vec::new();
    for i in &issues {
        if remove_path(&mut tree, &i.path) {
            removed.push(i.path.clone());
        }
    }
    for _ in 0..64 {
        match deserialize(tree.clone()) {
            Ok(spec) => return (Some(spec), issues, removed),
            Err(issue) => {
                // A required key we removed ourselves: already reported.
                if let Some(field) = issue
                    .message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next())
                {
                    if removed
                        .iter()
                        .any(|r| r == field || r.ends_with(&format!(".{field}")))
                    {
                        return (None, issues, removed);
                    }
                }
                // An unknown `kind`: the whole section goes (its default
                // stands in), so the rest of the spec is still checked.
                let unknown_kind =
                    issue.message.starts_with("unknown variant") && issue.path.ends_with(".kind");
                let section = issue.path.trim_end_matches(".kind").to_string();
                let retry = if unknown_kind {
                    remove_path(&mut tree, &section)
                } else {
                    [
                        "unknown field",
                        "invalid type",
                        "invalid value",
                        "invalid length",
                    ]
                    .iter()
                    .any(|p| issue.message.starts_with(p))
                        && !issue.path.is_empty()
                        && remove_path(&mut tree, &issue.path)
                };
                if retry {
                    removed.push(if unknown_kind {
                        section
                    } else {
                        issue.path.clone()
                    });
                }
                issues.push(issue);
                if !retry {
                    return (None, issues, removed);
                }
            }
        }
    }
    (None, issues, removed)
}

/// Parse strictly, then check every field. Every unknown or mistyped field
/// is reported (see `deserialize_all`); when the structure is right, every
/// semantic problem is reported together. Nothing may start unless this
/// returns Ok.
pub fn compile(tree: Value) -> Result<Compiled, CompileError> {
    let (spec, mut issues, removed) = deserialize_all(tree);
    let Some(spec) = spec else {
        return Err(CompileError::Invalid(issues));
    };
    // The semantic checks run even when keys had to be removed (so an
    // unknown field does not hide the other problems); what they say about
    // a removed key's default is not news.
    let mut semantic = Vec::new();
    let mut warnings = Vec::new();
    check(&spec, &mut semantic, &mut warnings);
    issues.extend(semantic.into_iter().filter(|i| {
        !removed.iter().any(|r| {
            i.path == *r
                || i.path.starts_with(&format!("{r}."))
                || i.path.starts_with(&format!("{r}["))
        })
    }));
    if issues.is_empty() {
        Ok(Compiled { spec, warnings })
    } else {
        Err(CompileError::Invalid(issues))
    }
}

/// JSON Schema of the spec, for editors.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(JobSpec)).expect("schema serialises")
}
