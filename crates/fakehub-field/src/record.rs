//! One Connections record as every field shape carries it, normalised, with where it came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::time::{self, Millis};

/// Where a record (or a problem) is in its file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub file: Arc<Path>,
    /// 1-based line; `None` for binary files (Avro), where `item` says where.
    pub line: Option<usize>,
    /// Inside the line or document: `records[3]`, `rows[12]`, `event 4 (SequenceNumber 17) records[0]`.
    pub item: Option<String>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.file.display().to_string());
        write!(f, "{name}")?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(i) = &self.item {
            write!(f, " {i}")?;
        }
        Ok(())
    }
}

/// Something a file holds that cannot be read. Displayed as `FILE:LINE[:COLUMN]: [item] [field]: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Inside the line: `records[2]`, `event 3`.
    pub item: Option<String>,
    /// The field or column: `time`, `properties.deviceId`, `TimeGenerated [UTC]`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ":")?;
        if let Some(i) = &self.item {
            write!(f, " {i}")?;
        }
        if let Some(fl) = &self.field {
            write!(f, " field `{fl}`")?;
        }
        if self.item.is_some() || self.field.is_some() {
            write!(f, ":")?;
        }
        write!(f, " {}", self.message)
    }
}

impl FieldError {
    pub fn at(source: &Source, field: Option<&str>, message: impl Into<String>) -> FieldError {
        FieldError {
            file: source.file.to_path_buf(),
            line: source.line,
            column: None,
            item: source.item.clone(),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> FieldError {
        FieldError {
            file: path.to_owned(),
            line: None,
            column: None,
            item: None,
            field: None,
            message: message.into(),
        }
    }
}

/// `deviceConnect` or `deviceDisconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Connect,
    Disconnect,
}

/// A Connections record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRecord {
    pub at: Millis,
    /// The hub's name, upper case (the last segment of `resourceId`, or the `Resource` column).
    pub hub: String,
    pub operation: Operation,
    /// `Information`, `Error`, `Warning`, … as written.
    pub level: String,
    /// `resultType` as a number (404104), for errors.
    pub code: Option<u32>,
    pub description: Option<String>,
    pub device: String,
    pub module: Option<String>,
    pub sdk: Option<String>,
    pub protocol: Option<String>,
    /// `sas` or `x509` from `authType`.
    pub auth: Option<String>,
    pub source: Source,
}

impl FieldRecord {
    /// The identity as the hub sees it: `device` or `device/module`.
    pub fn identity(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.clone(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.code.is_some() || self.level.eq_ignore_ascii_case("error")
    }
}

/// What reading one object gave.
pub enum Read {
    Record(Box<FieldRecord>),
    /// Another category (or resource type); counted, not an error.
    Skipped(String),
}

/// Case-insensitive field look-up (exports differ: `time`/`TimeGenerated`, `resourceId`/`resourceid`/
/// `ResourceId`, `properties`/`properties_s`).
fn get<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<(&'a str, &'a Value)> {
    for want in names {
        for (k, v) in obj {
            if k.eq_ignore_ascii_case(want) && !v.is_null() {
                return Some((k.as_str(), v));
            }
        }
    }
    None
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A short, printable excerpt of a value that could not be read (never a whole unknown field).
pub fn excerpt(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
    if s.chars().count() > 40 {
        format!("`{clean}…`")
    } else {
        format!("`{clean}`")
    }
}

/// The hub name from a resource id (`…/IOTHUBS/MYHUB` → `MYHUB`) or a bare name.
pub fn hub_name(resource: &str) -> String {
    resource
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(resource)
        .to_ascii_uppercase()
}

/// How a time field is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The value must say its zone, or is naive UTC (resource logs, `TimeGenerated [UTC]`).
    Utc,
    /// A column labelled with a zone that is not UTC: only values with an explicit offset are read.
    Other,
}

/// Read one record object: a resource-log record (`time`, `resourceId`, `operationName`,
/// `category`, `level`, `resultType`, `resultDescription`, `properties`) or a Log Analytics
/// `AzureDiagnostics` row (`TimeGenerated`, `ResourceId`/`Resource`, `Category`, `OperationName`,
/// `Level`, `ResultType`, `ResultDescription`, `properties_s`, or projected `DeviceId`/`SDKVersion`
/// columns).
#[allow(clippy::result_large_err)] // errors are rare and carry their location whole
pub fn from_object(
    obj: &Map<String, Value>,
    zone: Zone,
    source: &Source,
) -> Result<Read, FieldError> {
    let err = |field: &str, msg: String| FieldError::at(source, Some(field), msg);
    if let Some((_, v)) = get(obj, &["ResourceType"]) {
        if let Some(t) = as_text(v) {
            if !t.is_empty() && !t.eq_ignore_ascii_case("IOTHUBS") {
                return Ok(Read::Skipped(format!("resource type {t}")));
            }
        }
    }
    let category = get(obj, &["category"]).and_then(|(_, v)| as_text(v));
    let op_text = get(obj, &["operationName"]).and_then(|(_, v)| as_text(v));
    match &category {
        Some(c) if !c.eq_ignore_ascii_case("Connections") => {
            return Ok(Read::Skipped(format!("category {c}")))
        }
        None if op_text.is_none() => {
            return Err(err(
                "category",
                "neither `category` nor `operationName`: not a Connections record".into(),
            ))
        }
        _ => {}
    }
    let operation = match op_text.as_deref() {
        Some(o) if o.eq_ignore_ascii_case("deviceConnect") => Operation::Connect,
        Some(o) if o.eq_ignore_ascii_case("deviceDisconnect") => Operation::Disconnect,
        Some(o) if category.is_some() => {
            return Err(err(
                "operationName",
                format!(
                    "{} is not a Connections operation (deviceConnect, deviceDisconnect)",
                    excerpt(o)
                ),
            ))
        }
        Some(o) => return Ok(Read::Skipped(format!("operation {o}"))),
        None => return Err(err("operationName", "missing".into())),
    };
    let (time_key, time_val) = get(obj, &["time", "TimeGenerated", "TimeGenerated [UTC]"])
        .or_else(|| {
            // `TimeGenerated [<zone>]`: a portal export in another time zone.
            obj.iter()
                .find(|(k, v)| k.starts_with("TimeGenerated [") && !v.is_null())
                .map(|(k, v)| (k.as_str(), v))
        })
        .ok_or_else(|| err("time", "missing (no `time` or `TimeGenerated`)".into()))?;
    let time_text = as_text(time_val).ok_or_else(|| err(time_key, "not a string".into()))?;
    if zone == Zone::Other && !time::has_offset(&time_text) {
        return Err(err(
            time_key,
            format!(
                "{} has no offset and the column is not UTC: export with the UTC time zone",
                excerpt(&time_text)
            ),
        ));
    }
    let at = time::parse(&time_text).ok_or_else(|| {
        err(
            time_key,
            format!(
                "{} is not a time (RFC 3339, or M/D/YYYY, h:mm:ss.fff AM/PM)",
                excerpt(&time_text)
            ),
        )
    })?;
    let hub = get(obj, &["resourceId", "_ResourceId", "Resource"])
        .and_then(|(_, v)| as_text(v))
        .map(|r| hub_name(&r))
        .unwrap_or_default();
    let code =
        match get(obj, &["resultType"]) {
            None => None,
            Some((k, v)) => match as_text(v) {
                Some(t) if t.trim().is_empty() => None,
                Some(t) => Some(t.trim().parse::<u32>().map_err(|_| {
                    err(k, format!("{} is not an IoT Hub error code", excerpt(&t)))
                })?),
                None => return Err(err(k, "not a string or number".into())),
            },
        };
    let level = get(obj, &["level"])
        .and_then(|(_, v)| as_text(v))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| {
            if code.is_some() {
                "Error"
            } else {
                "Information"
            }
            .into()
        });
    let description = get(obj, &["resultDescription"])
        .and_then(|(_, v)| as_text(v))
        .filter(|d| !d.is_empty());
    // properties: a JSON string (documented), an object (2018 samples), or `properties_s`.
    let props: Option<Map<String, Value>> = match get(obj, &["properties", "properties_s"]) {
        None => None,
        Some((k, Value::String(s))) if s.trim().is_empty() => {
            let _ = k;
            None
        }
        Some((k, Value::String(s))) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Some(m),
            Ok(_) => return Err(err(k, "is not a JSON object".into())),
            Err(e) => {
                return Err(err(
                    k,
                    format!("is not JSON (column {} of the string: {e})", e.column()),
                ))
            }
        },
        Some((_, Value::Object(m))) => Some(m.clone()),
        Some((k, _)) => return Err(err(k, "is neither a JSON string nor an object".into())),
    };
    let prop = |names: &[&str]| -> Option<String> {
        props
            .as_ref()
            .and_then(|p| get(p, names))
            .and_then(|(_, v)| as_text(v))
            .filter(|s| !s.is_empty())
    };
    // Projected columns (`| extend DeviceId = tostring(parsed_json.deviceId)`) as a fallback.
    let column = |names: &[&str]| -> Option<String> {
        get(obj, names)
            .and_then(|(_, v)| as_text(v))
            .filter(|s| !s.is_empty())
    };
    let device = prop(&["deviceId"])
        .or_else(|| column(&["DeviceId", "deviceId_s"]))
        .ok_or_else(|| {
            err(
                if props.is_some() {
                    "properties.deviceId"
                } else {
                    "properties"
                },
                "missing: a Connections record names its device".into(),
            )
        })?;
    let auth = prop(&["authType"]).and_then(|a| {
        serde_json::from_str::<Value>(&a)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
    });
    Ok(Read::Record(Box::new(FieldRecord {
        at,
        hub,
        operation,
        level,
        code,
        description,
        device,
        module: prop(&["moduleId"]).or_else(|| column(&["ModuleId", "moduleId_s"])),
        sdk: prop(&["sdkVersion"])
            .or_else(|| column(&["SDKVersion", "SdkVersion", "sdkVersion_s"])),
        protocol: prop(&["protocol"]).or_else(|| column(&["Protocol", "protocol_s"])),
        auth,
        source: source.clone(),
    })))
}
