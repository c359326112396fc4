//! Reading the shapes field logs come in (see docs/FIELD.md for the evidence behind each):
//!
//! | shape | what it looks like | where users get it |
//! |---|---|---|
//! | resource-log lines | one record object a line | a diagnostic setting's `PT1H.json` blobs in a storage account; fakehub's `connections.jsonl` |
//! | records document | `{"records": [...]}` (pretty or compact) | an Event Hub event body; the documented sample; pre-2018 blobs |
//! | event bodies | one `{"records": [...]}` a line | Event Hub events saved by a consumer |
//! | record array | `[{record}, …]` | tools that collect records into an array |
//! | Capture Avro | `Obj\x01` container, `Body` = an event body | Event Hubs Capture to a storage account |
//! | Log Analytics CSV | `AzureDiagnostics` columns, `TimeGenerated [UTC]`, `properties_s` | the portal's Export → CSV |
//! | Log Analytics JSON | `[{"TimeGenerated": …, "TableName": "PrimaryResult"}, …]` or `{"tables": [{"columns", "rows"}]}` | `az monitor log-analytics query`; the Query API |

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::avro::{self, Avro};
use crate::jsonpos::{element_lines, Seg};
use crate::record::{from_object, FieldError, FieldRecord, Read, Source, Zone};

/// The shape a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    ResourceLogLines,
    RecordsDocument,
    EventBodies,
    RecordArray,
    CaptureAvro,
    LogAnalyticsCsv,
    LogAnalyticsCliJson,
    LogAnalyticsApiJson,
}

impl Shape {
    pub fn describe(self) -> &'static str {
        match self {
            Shape::ResourceLogLines => {
                "resource-log records, one a line (storage blob / connections.jsonl)"
            }
            Shape::RecordsDocument => "a {\"records\": [...]} document (Event Hub event body)",
            Shape::EventBodies => "Event Hub event bodies, one {\"records\": [...]} a line",
            Shape::RecordArray => "a JSON array of resource-log records",
            Shape::CaptureAvro => "Event Hubs Capture (Avro)",
            Shape::LogAnalyticsCsv => "Log Analytics CSV export (AzureDiagnostics)",
            Shape::LogAnalyticsCliJson => "Log Analytics JSON (az monitor log-analytics query)",
            Shape::LogAnalyticsApiJson => "Log Analytics JSON (Query API tables/columns/rows)",
        }
    }
}

/// What one file gave.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub path: Arc<Path>,
    pub shape: Shape,
    pub records: usize,
    pub skipped: usize,
}

/// Everything read from a set of files: Connections records, de-duplicated, sorted by time.
#[derive(Debug, Clone, Default)]
pub struct Import {
    pub records: Vec<FieldRecord>,
    pub files: Vec<FileSummary>,
    /// Records of other categories or resource types, by what they were.
    pub skipped: BTreeMap<String, usize>,
    pub duplicates: usize,
}

impl Import {
    /// The hubs in the records, each with its records (in time order).
    pub fn hubs(&self) -> BTreeMap<String, Vec<&FieldRecord>> {
        let mut out: BTreeMap<String, Vec<&FieldRecord>> = BTreeMap::new();
        for r in &self.records {
            out.entry(r.hub.clone()).or_default().push(r);
        }
        out
    }
}

/// At most this many problems are reported from one import.
const MAX_ERRORS: usize = 50;

struct Sink {
    records: Vec<FieldRecord>,
    skipped: BTreeMap<String, usize>,
    errors: Vec<FieldError>,
    file_records: usize,
    file_skipped: usize,
}

impl Sink {
    fn take(&mut self, r: Result<Read, FieldError>) {
        match r {
            Ok(Read::Record(rec)) => {
                self.records.push(*rec);
                self.file_records += 1;
            }
            Ok(Read::Skipped(what)) => {
                *self.skipped.entry(what).or_default() += 1;
                self.file_skipped += 1;
            }
            Err(e) => {
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push(e)
                }
            }
        }
    }

    fn object(&mut self, v: &Value, zone: Zone, source: Source) {
        match v {
            Value::Object(m) => self.take(from_object(m, zone, &source)),
            _ => self.take(Err(FieldError::at(
                &source,
                None,
                "is not a JSON object (a record)",
            ))),
        }
    }

    /// A `{"records": [...]}` body (or a single record) found at `source`.
    fn body(&mut self, v: &Value, source: &Source, lines: Option<&[usize]>) {
        match v.get("records") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let line = lines.and_then(|l| l.get(i).copied()).or(source.line);
                    let item_name = match &source.item {
                        Some(prefix) => format!("{prefix} records[{i}]"),
                        None => format!("records[{i}]"),
                    };
                    self.object(
                        item,
                        Zone::Utc,
                        Source {
                            file: source.file.clone(),
                            line,
                            item: Some(item_name),
                        },
                    );
                }
            }
            Some(_) => self.take(Err(FieldError::at(
                source,
                Some("records"),
                "is not an array",
            ))),
            None => self.object(v, Zone::Utc, source.clone()),
        }
    }
}

/// Read every file; all problems found (up to 50) are returned together, each located.
pub fn import_files(paths: &[impl AsRef<Path>]) -> Result<Import, Vec<FieldError>> {
    let mut sink = Sink {
        records: Vec::new(),
        skipped: BTreeMap::new(),
        errors: Vec::new(),
        file_records: 0,
        file_skipped: 0,
    };
    let mut files = Vec::new();
    for p in paths {
        let path: Arc<Path> = Arc::from(p.as_ref());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                sink.errors.push(FieldError::file(&path, e.to_string()));
                continue;
            }
        };
        sink.file_records = 0;
        sink.file_skipped = 0;
        let shape = read_bytes(&path, &bytes, &mut sink);
        if let Some(shape) = shape {
            if sink.file_records == 0 && sink.file_skipped == 0 && sink.errors.is_empty() {
                sink.errors.push(FieldError::file(
                    &path,
                    format!("no records in it (read as {})", shape.describe()),
                ));
            }
            files.push(FileSummary {
                path: path.clone(),
                shape,
                records: sink.file_records,
                skipped: sink.file_skipped,
            });
        }
    }
    if !sink.errors.is_empty() {
        return Err(sink.errors);
    }
    let mut records = sink.records;
    records.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.source.cmp(&b.source)));
    let before = records.len();
    let mut seen = HashSet::new();
    records.retain(|r| {
        seen.insert((
            r.at,
            r.hub.clone(),
            r.operation,
            r.code,
            r.identity(),
            r.level.to_ascii_lowercase(),
            r.sdk.clone(),
            r.protocol.clone(),
        ))
    });
    Ok(Import {
        duplicates: before - records.len(),
        records,
        files,
        skipped: sink.skipped,
    })
}

fn read_bytes(path: &Arc<Path>, bytes: &[u8], sink: &mut Sink) -> Option<Shape> {
    if avro::is_avro(bytes) {
        read_capture(path, bytes, sink);
        return Some(Shape::CaptureAvro);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            sink.errors.push(FieldError {
                line: Some(line),
                ..FieldError::file(path, "not UTF-8 text, nor an Avro file")
            });
            return None;
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.trim_start().chars().next();
    match first {
        None => {
            sink.errors
                .push(FieldError::file(path, "the file is empty"));
            None
        }
        Some('{') | Some('[') => read_json(path, text, sink),
        Some(_) => {
            read_csv(path, text, sink);
            Some(Shape::LogAnalyticsCsv)
        }
    }
}

fn src(path: &Arc<Path>, line: Option<usize>, item: Option<String>) -> Source {
    Source {
        file: path.clone(),
        line,
        item,
    }
}

fn read_json(path: &Arc<Path>, text: &str, sink: &mut Sink) -> Option<Shape> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    // JSON Lines when there are several lines and the first is a whole value on its own.
    let first_is_whole = lines
        .first()
        .is_some_and(|(_, l)| serde_json::from_str::<Value>(l).is_ok());
    if lines.len() > 1 && first_is_whole {
        let mut bodies = false;
        for (n, line) in &lines {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    bodies |= v.get("records").is_some();
                    sink.body(&v, &src(path, Some(*n), None), None);
                }
                Err(e) => sink.take(Err(FieldError {
                    line: Some(*n),
                    column: Some(e.column()),
                    ..FieldError::file(path, format!("not a JSON record: {e}"))
                })),
            }
        }
        return Some(if bodies {
            Shape::EventBodies
        } else {
            Shape::ResourceLogLines
        });
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            sink.errors.push(FieldError {
                line: Some(e.line()),
                column: Some(e.column()),
                ..FieldError::file(path, format!("not JSON: {e}"))
            });
            return None;
        }
    };
    match &v {
        Value::Object(o) if o.contains_key("records") => {
            let lines = element_lines(
                text,
                1,
                &|p| matches!(p, [Seg::Key(k), Seg::Index(_)] if k == "records"),
            );
            let lines: Vec<usize> = lines.into_iter().map(|(_, l)| l).collect();
            sink.body(&v, &src(path, Some(1), None), Some(&lines));
            Some(Shape::RecordsDocument)
        }
        Value::Object(o) if o.contains_key("tables") => {
            read_api_tables(path, text, o, sink);
            Some(Shape::LogAnalyticsApiJson)
        }
        Value::Object(_) => {
            sink.object(&v, Zone::Utc, src(path, Some(1), None));
            Some(Shape::ResourceLogLines)
        }
        Value::Array(items) => {
            let lines = element_lines(text, 1, &|p| matches!(p, [Seg::Index(_)]));
            let la = items.iter().any(|i| {
                i.as_object().is_some_and(|o| {
                    o.keys().any(|k| {
                        k.eq_ignore_ascii_case("TableName")
                            || k.eq_ignore_ascii_case("TimeGenerated")
                    })
                })
            });
            let bodies = items.iter().any(|i| i.get("records").is_some());
            for (i, item) in items.iter().enumerate() {
                let line = lines.get(i).map(|(_, l)| *l);
                let s = src(path, line, Some(format!("[{i}]")));
                if bodies {
                    sink.body(item, &s, None);
                } else {
                    sink.object(item, Zone::Utc, s);
                }
            }
            Some(if la {
                Shape::LogAnalyticsCliJson
            } else if bodies {
                Shape::EventBodies
            } else {
                Shape::RecordArray
            })
        }
        _ => {
            sink.errors.push(FieldError::file(
                path,
                "JSON that is neither an object nor an array",
            ));
            None
        }
    }
}

fn read_api_tables(path: &Arc<Path>, text: &str, o: &Map<String, Value>, sink: &mut Sink) {
    let Some(Value::Array(tables)) = o.get("tables") else {
        sink.take(Err(FieldError::at(
            &src(path, Some(1), None),
            Some("tables"),
            "is not an array",
        )));
        return;
    };
    let row_lines = element_lines(
        text,
        1,
        &|p| matches!(p, [Seg::Key(t), Seg::Index(_), Seg::Key(r), Seg::Index(_)] if t == "tables" && r == "rows"),
    );
    for (t, table) in tables.iter().enumerate() {
        let item = format!("tables[{t}]");
        let here = src(path, Some(1), Some(item.clone()));
        let Some(columns) = table.get("columns").and_then(Value::as_array) else {
            sink.take(Err(FieldError::at(
                &here,
                Some("columns"),
                "missing or not an array",
            )));
            continue;
        };
        let names: Vec<Option<&str>> = columns
            .iter()
            .map(|c| c.get("name").and_then(Value::as_str))
            .collect();
        if let Some(i) = names.iter().position(Option::is_none) {
            sink.take(Err(FieldError::at(
                &here,
                Some(&format!("columns[{i}].name")),
                "missing",
            )));
            continue;
        }
        let Some(rows) = table.get("rows").and_then(Value::as_array) else {
            sink.take(Err(FieldError::at(
                &here,
                Some("rows"),
                "missing or not an array",
            )));
            continue;
        };
        for (i, row) in rows.iter().enumerate() {
            let line = row_lines
                .iter()
                .find(|(p, _)| p.get(1) == Some(&Seg::Index(t)) && p.get(3) == Some(&Seg::Index(i)))
                .map(|(_, l)| *l);
            let s = src(path, line, Some(format!("{item}.rows[{i}]")));
            let Some(cells) = row.as_array() else {
                sink.take(Err(FieldError::at(&s, None, "a row that is not an array")));
                continue;
            };
            if cells.len() != names.len() {
                sink.take(Err(FieldError::at(
                    &s,
                    None,
                    format!("{} cells for {} columns", cells.len(), names.len()),
                )));
                continue;
            }
            let obj: Map<String, Value> = names
                .iter()
                .zip(cells)
                .map(|(n, c)| (n.unwrap_or_default().to_owned(), c.clone()))
                .collect();
            sink.take(from_object(&obj, Zone::Utc, &s));
        }
    }
}

fn read_csv(path: &Arc<Path>, text: &str, sink: &mut Sink) {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = match rdr.headers() {
        Ok(h) => h.iter().map(|s| s.trim().to_owned()).collect(),
        Err(e) => {
            sink.errors.push(FieldError {
                line: Some(1),
                ..FieldError::file(path, format!("not a CSV header: {e}"))
            });
            return;
        }
    };
    // `TimeGenerated [UTC]` is UTC; any other zone label must come with offsets in the values.
    let zone = if headers
        .iter()
        .any(|h| h.starts_with("TimeGenerated [") && !h.eq_ignore_ascii_case("TimeGenerated [UTC]"))
    {
        Zone::Other
    } else {
        Zone::Utc
    };
    let known = ["time", "timegenerated", "operationname", "category"];
    if !headers.iter().any(|h| {
        let l = h.to_ascii_lowercase();
        known
            .iter()
            .any(|k| l == *k || l.starts_with("timegenerated ["))
    }) {
        sink.errors.push(FieldError {
            line: Some(1),
            ..FieldError::file(
                path,
                "not a Log Analytics export: the header has no TimeGenerated, OperationName or Category column",
            )
        });
        return;
    }
    for row in rdr.records() {
        match row {
            Ok(rec) => {
                let line = rec.position().map(|p| line_at(text, p));
                let obj: Map<String, Value> = headers
                    .iter()
                    .zip(rec.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(h, v)| (h.clone(), Value::String(v.to_owned())))
                    .collect();
                sink.take(from_object(&obj, zone, &src(path, line, None)));
            }
            Err(e) => {
                let line = e.position().map(|p| line_at(text, p));
                let msg = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} fields where the header has {expected_len}"),
                    _ => e.to_string(),
                };
                sink.take(Err(FieldError {
                    line,
                    ..FieldError::file(path, msg)
                }));
            }
        }
    }
}

/// The line a CSV record starts on. The csv crate's own line count lags by one after a CRLF (it
/// counts the `\n` of the previous terminator into the next record), so count from the byte offset.
fn line_at(text: &str, p: &csv::Position) -> usize {
    let b = text.as_bytes();
    let mut at = usize::try_from(p.byte()).unwrap_or(usize::MAX).min(b.len());
    while at < b.len() && (b[at] == b'\r' || b[at] == b'\n') {
        at += 1;
    }
    b[..at].iter().filter(|&&c| c == b'\n').count() + 1
}

fn read_capture(path: &Arc<Path>, bytes: &[u8], sink: &mut Sink) {
    let objects = match avro::read_container(bytes) {
        Ok(o) => o,
        Err(e) => {
            sink.errors
                .push(FieldError::file(path, format!("Avro: {e}")));
            return;
        }
    };
    for (n, obj) in objects.iter().enumerate() {
        let seq = match obj.field("SequenceNumber") {
            Some(Avro::Long(s)) => format!(" (SequenceNumber {s})"),
            _ => String::new(),
        };
        let item = format!("event {}{seq}", n + 1);
        let here = src(path, None, Some(item.clone()));
        let body = match obj.field("Body") {
            Some(Avro::Bytes(b)) => b,
            Some(Avro::Null) => continue, // an event without a body carries no records
            _ => {
                sink.take(Err(FieldError::at(
                    &here,
                    Some("Body"),
                    "missing: not an Event Hubs Capture file",
                )));
                continue;
            }
        };
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(_) => {
                sink.take(Err(FieldError::at(&here, Some("Body"), "not UTF-8 text")));
                continue;
            }
        };
        // A body is one JSON document, or (rarely) several records a line.
        match serde_json::from_str::<Value>(text) {
            Ok(v) => sink.body(&v, &here, None),
            Err(e) => sink.take(Err(FieldError::at(
                &here,
                Some("Body"),
                format!(
                    "not JSON (line {} column {} of the body): {e}",
                    e.line(),
                    e.column()
                ),
            ))),
        }
    }
}
