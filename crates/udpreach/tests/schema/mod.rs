//! Checks real output against the published JSON Schemas (`docs/schema/`).
//!
//! A small validator for the part of JSON Schema 2020-12 that schemars
//! generates (`type`, `properties`, `required`, `additionalProperties`,
//! `items`, `enum`, `const`, `minimum`, `maximum`, `$ref` into `$defs`,
//! `allOf`/`anyOf`/`oneOf`), rather than the `jsonschema` crate: that one
//! needs Rust 1.85 (this workspace builds with 1.80) and brings an HTTP
//! client, regex engines and IDNA tables into the test build. A keyword the
//! validator does not know fails the test, so a schema can never be checked
//! less strictly than it reads.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

/// Keywords that only annotate: nothing to check.
const ANNOTATIONS: &[&str] = &["$schema", "title", "description", "format", "$defs"];

/// A published schema, by file name (`ping.json`, `ports-lines.json`, ...).
pub(crate) fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/schema")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Every way `value` breaks `schema` (empty: it is valid).
pub(crate) fn errors(schema: &Value, value: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(schema, schema, value, "$", &mut errs);
    errs
}

/// Panics with every error, the schema's name and the value when `value`
/// does not match the published schema `name`.
pub(crate) fn assert_valid(name: &str, value: &Value) {
    let errs = errors(&load(name), value);
    assert!(
        errs.is_empty(),
        "output does not match docs/schema/{name}:\n  {}\nvalue: {value}",
        errs.join("\n  ")
    );
}

/// Validates each line of `--json-lines` output against `name`.
pub(crate) fn assert_lines_valid(name: &str, stdout: &str) {
    let schema = load(name);
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
        let errs = errors(&schema, &v);
        assert!(
            errs.is_empty(),
            "line does not match docs/schema/{name}:\n  {}\nline: {line}",
            errs.join("\n  ")
        );
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        other => panic!("unknown type {other:?} in a schema"),
    }
}

fn resolve<'a>(root: &'a Value, reference: &str) -> &'a Value {
    let name = reference
        .strip_prefix("#/$defs/")
        .unwrap_or_else(|| panic!("only local $defs references are supported: {reference}"));
    root["$defs"]
        .get(name)
        .unwrap_or_else(|| panic!("dangling reference {reference}"))
}

fn check(root: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let obj = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errs.push(format!("{at}: nothing is allowed here")),
        Value::Object(o) => o,
        other => panic!("not a schema: {other}"),
    };
    for (key, arg) in obj {
        match key.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "$ref" => check(
                root,
                resolve(root, arg.as_str().expect("$ref")),
                v,
                at,
                errs,
            ),
            "type" => {
                let ok = match arg {
                    Value::String(t) => type_matches(t, v),
                    Value::Array(ts) => ts
                        .iter()
                        .any(|t| type_matches(t.as_str().expect("type"), v)),
                    other => panic!("bad type keyword {other}"),
                };
                if !ok {
                    errs.push(format!("{at}: {v} is not of type {arg}"));
                }
            }
            "enum" => {
                if !arg.as_array().expect("enum").contains(v) {
                    errs.push(format!("{at}: {v} is not one of {arg}"));
                }
            }
            "const" => {
                if arg != v {
                    errs.push(format!("{at}: {v} is not {arg}"));
                }
            }
            "minimum" => {
                if let (Some(x), Some(min)) = (v.as_f64(), arg.as_f64()) {
                    if x < min {
                        errs.push(format!("{at}: {v} is below {arg}"));
                    }
                }
            }
            "maximum" => {
                if let (Some(x), Some(max)) = (v.as_f64(), arg.as_f64()) {
                    if x > max {
                        errs.push(format!("{at}: {v} is above {arg}"));
                    }
                }
            }
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (name, sub) in arg.as_object().expect("properties") {
                        if let Some(x) = o.get(name) {
                            check(root, sub, x, &format!("{at}.{name}"), errs);
                        }
                    }
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for name in arg.as_array().expect("required") {
                        let name = name.as_str().expect("required name");
                        if !o.contains_key(name) {
                            errs.push(format!("{at}: required field {name:?} is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(o) = v.as_object() {
                    let known = obj.get("properties").and_then(Value::as_object);
                    for (name, x) in o {
                        if !known.is_some_and(|k| k.contains_key(name)) {
                            check(root, arg, x, &format!("{at}.{name}"), errs);
                        }
                    }
                }
            }
            "items" => {
                if let Some(a) = v.as_array() {
                    for (i, x) in a.iter().enumerate() {
                        check(root, arg, x, &format!("{at}[{i}]"), errs);
                    }
                }
            }
            "allOf" => {
                for sub in arg.as_array().expect("allOf") {
                    check(root, sub, v, at, errs);
                }
            }
            "anyOf" | "oneOf" => {
                let branches = arg.as_array().expect(key);
                let mut failures = Vec::new();
                let mut matched = 0;
                for sub in branches {
                    let e = errors_in(root, sub, v, at);
                    if e.is_empty() {
                        matched += 1;
                    } else {
                        failures.push(e.join("; "));
                    }
                }
                if matched == 0 {
                    errs.push(format!(
                        "{at}: matches none of {key}: [{}]",
                        failures.join(" | ")
                    ));
                } else if key == "oneOf" && matched > 1 {
                    errs.push(format!("{at}: matches {matched} branches of oneOf"));
                }
            }
            other => panic!("the schema validator does not know the keyword {other:?}"),
        }
    }
}

fn errors_in(root: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    check(root, schema, v, at, &mut errs);
    errs
}
