//! Short-name form of [`super::schemas`]: `assert_valid("tree", doc)` validates against
//! `schemas/tree.schema.json` (and checks the schema's `$id` follows the convention).

/// Assert that `doc` is valid under `schemas/NAME.schema.json`, listing every violation.
pub fn assert_valid(name: &str, doc: &serde_json::Value) {
    let file = format!("{name}.schema.json");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(&file);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        schema["$id"],
        format!("https://vmledger.invalid/schemas/{file}")
    );
    super::schemas::assert_valid(&file, doc);
}
