//! The OpenAPI 3.1 document of the control API, generated from the very types the routes read and
//! write (the scenario's [`Step`], the assertion crate's [`Expectation`], the replies here), so it
//! cannot drift from what the API accepts.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

use super::{ActiveFault, ClockReading, ErrorReply, ExpectReply, StepReply};
use crate::scenario::Step;
use fakehub_assert::Expectation;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    serde_json::to_value(g.subschema_for::<T>()).unwrap_or_default()
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// The document.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = SchemaGenerator::new(settings);
    let step = schema::<Step>(&mut g);
    let step_reply = schema::<StepReply>(&mut g);
    let expectation = schema::<Expectation>(&mut g);
    let expect_reply = schema::<ExpectReply>(&mut g);
    let faults = schema::<Vec<ActiveFault>>(&mut g);
    let clock = schema::<ClockReading>(&mut g);
    let error = schema::<ErrorReply>(&mut g);
    let schemas = Value::Object(g.take_definitions(true));
    let bad_request = json!({"description": "The request does not fit: the field and what was expected.", "content": json_content(error.clone())});
    let unauthorized = json!({"description": "No valid SAS token of a policy with ServiceConnect (IoT Hub's error shape)."});
    let security = json!([{"sas": []}]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fakehub control API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Drive a running `fakehub serve` with the scenario's vocabulary: timeline steps, expectations, the event log and the Connections records. Served next to the IoT Hub service REST API, with the same shared access policy authentication. See docs/SERVICE-API.md.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "sas": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`SharedAccessSignature sr=<host name>&sig=…&se=…&skn=<policy>`, signed with a policy key that has ServiceConnect (e.g. iothubowner from service-connection-string.txt).",
                },
            },
        },
        "security": security,
        "paths": {
            "/fakehub/timeline": {"post": {
                "summary": "Carry out one timeline step, exactly as in a scenario file; answered when it has taken effect.",
                "description": "`advance` and `wait` jump the hub's virtual wall time: every deadline inside fires in order; devices that keep real time see a jump. A lasting fault's id is in `applied.fault.id`.",
                "requestBody": {"required": true, "content": json_content(step)},
                "responses": {
                    "200": {"description": "The step took effect.", "content": json_content(step_reply)},
                    "400": bad_request, "401": unauthorized,
                },
            }},
            "/fakehub/faults": {"get": {
                "summary": "The active faults.",
                "responses": {"200": {"description": "Active faults, oldest first.", "content": json_content(faults)}, "401": unauthorized},
            }},
            "/fakehub/faults/{id}": {"delete": {
                "summary": "End an active fault.",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
                "responses": {
                    "204": {"description": "Ended."},
                    "404": {"description": "No active fault with that id.", "content": json_content(error.clone())},
                    "400": bad_request, "401": unauthorized,
                },
            }},
            "/fakehub/expect": {"post": {
                "summary": "Judge one expectation on the log so far.",
                "requestBody": {"required": true, "content": json_content(expectation)},
                "responses": {
                    "200": {"description": "The verdicts.", "content": json_content(expect_reply)},
                    "400": bad_request, "401": unauthorized,
                },
            }},
            "/fakehub/events": {"get": {
                "summary": "The event log as JSON lines, from position `since`.",
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}, "description": "The first event to send (its `seq`)."},
                    {"name": "wait", "in": "query", "schema": {"type": "string"}, "description": "Long poll: when nothing is there yet, wait this long (e.g. `30s`, at most 60s) for the first event."},
                    {"name": "stream", "in": "query", "schema": {"type": "boolean", "default": false}, "description": "Keep the answer open and send each event as it happens."},
                ],
                "responses": {
                    "200": {
                        "description": "One event per line (the lines of events.jsonl). `x-fakehub-next` is the `since` of the next call.",
                        "headers": {"x-fakehub-next": {"schema": {"type": "integer"}}},
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    "400": bad_request, "401": unauthorized,
                },
            }},
            "/fakehub/records": {"get": {
                "summary": "The Connections records so far (the lines of connections.jsonl).",
                "responses": {"200": {"description": "Records, in order.", "content": json_content(json!({"type": "array", "items": {"type": "object"}}))}, "401": unauthorized},
            }},
            "/fakehub/clock": {"get": {
                "summary": "The hub's virtual clock.",
                "responses": {"200": {"description": "Now.", "content": json_content(clock)}, "401": unauthorized},
            }},
            "/fakehub/openapi.json": {"get": {
                "summary": "This document.",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1."}},
            }},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema the document has.
    #[test]
    fn references_resolve() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(schemas.contains_key("Step") || doc.to_string().contains("\"advance\""));
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(schemas.contains_key(name), "{r} is missing");
        }
    }
}
