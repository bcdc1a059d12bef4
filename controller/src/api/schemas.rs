//! Request bodies are checked against the schemas of the published OpenAPI
//! document before they are read, so the document is exactly what the API
//! accepts: a wrong type, a value out of range, a name that breaks the
//! pattern or a struct sent as an array is refused with the place it broke.

use super::error::ApiError;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Longest error message that quotes the value it is about.
const MAX_QUOTED: usize = 240;

#[derive(Debug, Default)]
pub(super) struct BodySchemas(HashMap<String, jsonschema::Validator>);

impl BodySchemas {
    /// One validator per component schema of `doc`.
    ///
    /// # Panics
    /// When a schema the controller generated itself does not compile: a
    /// programming error the API tests catch.
    pub(super) fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        let schemas = doc
            .components
            .as_ref()
            .map(|c| serde_json::to_value(&c.schemas).expect("schemas serialize"))
            .unwrap_or_else(|| json!({}));
        let names: Vec<String> = schemas
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let validators = names
            .into_iter()
            .map(|name| {
                let root = json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "$ref": format!("#/components/schemas/{name}"),
                    "components": { "schemas": schemas },
                });
                let validator = jsonschema::validator_for(&root)
                    .unwrap_or_else(|e| panic!("the API's schema of {name} does not compile: {e}"));
                (name, validator)
            })
            .collect();
        BodySchemas(validators)
    }

    /// `Ok` when `value` fits the schema called `name`.
    pub(super) fn check(&self, name: &str, value: &Value) -> Result<(), ApiError> {
        let Some(validator) = self.0.get(name) else {
            return Err(ApiError::Unavailable(format!(
                "no schema for {name}; this is a bug in the controller"
            )));
        };
        validator.validate(value).map_err(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            // The message quotes the offending value, unless it is large
            // (10 001 observations, say): then it names it by its place.
            let mut message = match e.kind() {
                // Every allowed value, not the first two and a count.
                jsonschema::error::ValidationErrorKind::Enum { options } => {
                    format!("{} is not one of {options}", e.instance())
                }
                _ => e.to_string(),
            };
            if message.len() > MAX_QUOTED {
                message = e.masked_with("the value").to_string();
            }
            ApiError::BadRequest(format!("invalid JSON body: {at}: {message}"))
        })
    }

    #[cfg(test)]
    pub(super) fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}
