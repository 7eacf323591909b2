//! Validate documents against the JSON Schemas in `schemas/` with a real validator
//! (`jsonschema`, no network): every schema file is registered under its `$id`, so
//! references between files resolve locally.

use std::path::PathBuf;

use serde_json::Value;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn load(name: &str) -> Value {
    let p = schema_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A validator for `schemas/<name>` with every other schema registered by `$id`.
pub fn validator(name: &str) -> jsonschema::Validator {
    let mut opts = jsonschema::options().with_draft(jsonschema::Draft::Draft202012);
    for entry in std::fs::read_dir(schema_dir()).expect("schemas/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let schema = load(path.file_name().and_then(|n| n.to_str()).expect("name"));
        let id = schema["$id"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no $id", path.display()))
            .to_string();
        opts = opts.with_resource(
            id,
            jsonschema::Resource::from_contents(schema).expect("schema resource"),
        );
    }
    opts.build(&load(name))
        .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"))
}

/// Assert that `doc` is valid against `schemas/<name>`, listing every error otherwise.
pub fn assert_valid(name: &str, doc: &Value) {
    let v = validator(name);
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "document invalid against {name}:\n{}",
        errors.join("\n")
    );
}

/// Assert that `doc` is rejected by `schemas/<name>`.
pub fn assert_invalid(name: &str, doc: &Value) {
    assert!(
        !validator(name).is_valid(doc),
        "schema {name} accepted an invalid document"
    );
}
