//! Writing resource-log records in each field shape `import` reads: the round-trip tests export a
//! run's `connections.jsonl` with it. Each writer produces the shape documented in docs/FIELD.md and
//! nothing more (no invented columns beyond those the documented exports carry).

use serde_json::{json, Map, Value};

use crate::import::Shape;
use crate::time;

/// The records of a `connections.jsonl` (one resource-log record a line).
pub fn read_jsonl(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{rg}/PROVIDERS/{provider}/{type}/{name}` → its parts.
fn resource_parts(id: &str) -> (String, String, String, String, String) {
    let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
    let after = |k: &str| {
        parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case(k))
            .and_then(|i| parts.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    let provider = after("PROVIDERS");
    let (rtype, name) = match parts.len() {
        n if n >= 2 => (parts[n - 2].to_owned(), parts[n - 1].to_owned()),
        _ => (String::new(), String::new()),
    };
    (
        after("SUBSCRIPTIONS"),
        after("RESOURCEGROUPS"),
        provider,
        rtype,
        name,
    )
}

/// The `AzureDiagnostics` columns of one record, as Log Analytics stores a Connections record.
fn diagnostics_row(r: &Value, time_text: String) -> Vec<(&'static str, Value)> {
    let rid = text(r, "resourceId");
    let (sub, rg, provider, rtype, name) = resource_parts(&rid);
    vec![
        ("TenantId", json!("00000000-0000-0000-0000-000000000000")),
        ("SourceSystem", json!("Azure")),
        ("TimeGenerated", json!(time_text)),
        ("ResourceId", json!(rid.to_ascii_uppercase())),
        ("Category", json!(text(r, "category"))),
        ("ResourceGroup", json!(rg.to_ascii_uppercase())),
        ("SubscriptionId", json!(sub.to_ascii_lowercase())),
        ("ResourceProvider", json!(provider.to_ascii_uppercase())),
        ("Resource", json!(name.to_ascii_uppercase())),
        ("ResourceType", json!(rtype.to_ascii_uppercase())),
        ("OperationName", json!(text(r, "operationName"))),
        ("ResultType", json!(text(r, "resultType"))),
        ("Level", json!(text(r, "level"))),
        ("ResultDescription", json!(text(r, "resultDescription"))),
        ("location_s", json!(text(r, "location"))),
        ("properties_s", json!(text(r, "properties"))),
        ("Type", json!("AzureDiagnostics")),
        ("_ResourceId", json!(rid.to_ascii_lowercase())),
    ]
}

fn record_time(r: &Value) -> time::Millis {
    time::parse(&text(r, "time")).unwrap_or_default()
}

/// Write `records` in `shape`. `Shape::EventBodies` batches records 50 to an event, as diagnostic
/// settings batch them; `Shape::CaptureAvro` puts such bodies into a deflate Capture file.
pub fn export(records: &[Value], shape: Shape) -> Vec<u8> {
    let lines = |vals: &mut dyn Iterator<Item = String>| {
        let mut out = String::new();
        for v in vals {
            out.push_str(&v);
            out.push('\n');
        }
        out.into_bytes()
    };
    let bodies = || -> Vec<Value> {
        records
            .chunks(50)
            .map(|c| json!({ "records": c }))
            .collect()
    };
    match shape {
        Shape::ResourceLogLines => lines(&mut records.iter().map(Value::to_string)),
        Shape::RecordsDocument => {
            serde_json::to_vec_pretty(&json!({ "records": records })).unwrap_or_default()
        }
        Shape::EventBodies => lines(&mut bodies().iter().map(Value::to_string)),
        Shape::RecordArray => serde_json::to_vec_pretty(records).unwrap_or_default(),
        Shape::CaptureAvro => {
            let events: Vec<(String, Vec<u8>)> = bodies()
                .iter()
                .map(|b| {
                    let first = b["records"][0].clone();
                    (
                        time::format(record_time(&first)),
                        b.to_string().into_bytes(),
                    )
                })
                .collect();
            crate::avro::write_capture(&events, true)
        }
        Shape::LogAnalyticsCsv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let header: Vec<String> = diagnostics_row(&Value::Null, String::new())
                .iter()
                .map(|(k, _)| {
                    if *k == "TimeGenerated" {
                        "TimeGenerated [UTC]".to_owned()
                    } else {
                        (*k).to_owned()
                    }
                })
                .collect();
            let _ = w.write_record(&header);
            for r in records {
                let row = diagnostics_row(r, time::format_portal(record_time(r)));
                let _ = w.write_record(
                    row.iter()
                        .map(|(_, v)| v.as_str().unwrap_or_default().to_owned()),
                );
            }
            w.into_inner().unwrap_or_default()
        }
        Shape::LogAnalyticsCliJson => {
            let rows: Vec<Value> = records
                .iter()
                .map(|r| {
                    let mut m: Map<String, Value> =
                        diagnostics_row(r, time::format(record_time(r)))
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect();
                    m.insert("TableName".into(), json!("PrimaryResult"));
                    Value::Object(m)
                })
                .collect();
            serde_json::to_vec_pretty(&rows).unwrap_or_default()
        }
        Shape::LogAnalyticsApiJson => {
            let columns: Vec<Value> = diagnostics_row(&Value::Null, String::new())
                .iter()
                .map(|(k, _)| {
                    json!({"name": k, "type": if *k == "TimeGenerated" { "datetime" } else { "string" }})
                })
                .collect();
            let rows: Vec<Value> = records
                .iter()
                .map(|r| {
                    Value::Array(
                        diagnostics_row(r, time::format(record_time(r)))
                            .into_iter()
                            .map(|(_, v)| v)
                            .collect(),
                    )
                })
                .collect();
            serde_json::to_vec_pretty(
                &json!({"tables": [{"name": "PrimaryResult", "columns": columns, "rows": rows}]}),
            )
            .unwrap_or_default()
        }
    }
}

/// Every shape, with a file name for it.
pub const ALL: [(Shape, &str); 8] = [
    (Shape::ResourceLogLines, "PT1H.json"),
    (Shape::RecordsDocument, "eventhub-body.json"),
    (Shape::EventBodies, "eventhub-bodies.jsonl"),
    (Shape::RecordArray, "records-array.json"),
    (Shape::CaptureAvro, "capture.avro"),
    (Shape::LogAnalyticsCsv, "query_data.csv"),
    (Shape::LogAnalyticsCliJson, "az-query.json"),
    (Shape::LogAnalyticsApiJson, "api-query.json"),
];
