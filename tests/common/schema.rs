//! Validate documents vmledger wrote against the JSON Schemas in `schemas/`.

use std::path::PathBuf;

/// Assert that `doc` is valid under `schemas/NAME.schema.json`, listing every violation.
pub fn assert_valid(name: &str, doc: &serde_json::Value) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.schema.json"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        schema["$id"],
        format!("https://vmledger.invalid/schemas/{name}.schema.json")
    );
    let v = jsonschema::draft202012::new(&schema).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} schema violations:\n{}\n{doc:#}",
        errors.join("\n")
    );
}
