//! Apache Avro object container files, as far as Event Hubs Capture needs them.
//!
//! Capture writes one Avro file per partition and window; each object is an `EventData` record
//! (`SequenceNumber`, `Offset`, `EnqueuedTimeUtc`, `SystemProperties`, `Properties`, `Body`) and
//! `Body` holds the event's bytes: for a diagnostic setting streaming to an Event Hub, the
//! `{"records": [...]}` JSON. This reader decodes the container (codecs `null` and `deflate`) and any
//! schema built from Avro's primitive types, records, maps, arrays, unions, enums and fixed, which
//! covers the Capture schema; the writer writes the Capture schema (for tests and `export`).

use std::io::Read as _;

use serde_json::Value as Json;

/// A decoded Avro value.
#[derive(Debug, Clone, PartialEq)]
pub enum Avro {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Str(String),
    Record(Vec<(String, Avro)>),
    Map(Vec<(String, Avro)>),
    Array(Vec<Avro>),
    Enum(String),
}

impl Avro {
    pub fn field(&self, name: &str) -> Option<&Avro> {
        match self {
            Avro::Record(f) => f.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Schema {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record(Vec<(String, Schema)>),
    Map(Box<Schema>),
    Array(Box<Schema>),
    Union(Vec<Schema>),
    Enum(Vec<String>),
    Fixed(usize),
}

fn schema_of(j: &Json) -> Result<Schema, String> {
    match j {
        Json::String(s) => match s.as_str() {
            "null" => Ok(Schema::Null),
            "boolean" => Ok(Schema::Boolean),
            "int" => Ok(Schema::Int),
            "long" => Ok(Schema::Long),
            "float" => Ok(Schema::Float),
            "double" => Ok(Schema::Double),
            "bytes" => Ok(Schema::Bytes),
            "string" => Ok(Schema::String),
            other => Err(format!("schema type `{other}` is not supported")),
        },
        Json::Array(items) => Ok(Schema::Union(
            items.iter().map(schema_of).collect::<Result<_, _>>()?,
        )),
        Json::Object(o) => {
            let t = o.get("type").ok_or("schema object without `type`")?;
            match t.as_str() {
                Some("record") => {
                    let fields = o
                        .get("fields")
                        .and_then(Json::as_array)
                        .ok_or("record schema without `fields`")?;
                    let mut out = Vec::new();
                    for f in fields {
                        let name = f
                            .get("name")
                            .and_then(Json::as_str)
                            .ok_or("record field without `name`")?;
                        let t = f.get("type").ok_or("record field without `type`")?;
                        out.push((name.to_owned(), schema_of(t)?));
                    }
                    Ok(Schema::Record(out))
                }
                Some("map") => Ok(Schema::Map(Box::new(schema_of(
                    o.get("values").ok_or("map schema without `values`")?,
                )?))),
                Some("array") => Ok(Schema::Array(Box::new(schema_of(
                    o.get("items").ok_or("array schema without `items`")?,
                )?))),
                Some("enum") => Ok(Schema::Enum(
                    o.get("symbols")
                        .and_then(Json::as_array)
                        .ok_or("enum schema without `symbols`")?
                        .iter()
                        .map(|s| s.as_str().unwrap_or_default().to_owned())
                        .collect(),
                )),
                Some("fixed") => Ok(Schema::Fixed(
                    o.get("size")
                        .and_then(Json::as_u64)
                        .and_then(|s| usize::try_from(s).ok())
                        .ok_or("fixed schema without `size`")?,
                )),
                // `{"type": "long", "logicalType": …}` and the like.
                _ => schema_of(t),
            }
        }
        _ => Err("schema is not JSON text, array or object".into()),
    }
}

/// Items allowed in one array or map block (a defence against absurd counts).
const MAX_ITEMS: i64 = 10_000_000;
/// Largest decompressed block.
const MAX_BLOCK: u64 = 512 << 20;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.i).ok_or("truncated (in a number)")?;
            self.i += 1;
            v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.i.checked_add(n).ok_or("length overflow")?;
        let s = self.b.get(self.i..end).ok_or_else(|| {
            format!(
                "truncated: {n} bytes announced, {} left",
                self.b.len().saturating_sub(self.i)
            )
        })?;
        self.i = end;
        Ok(s)
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("negative length {n}"))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?).map_err(|_| "a string that is not UTF-8".to_owned())
    }

    /// Block counts of arrays and maps: (items, calls per item).
    fn block_count(&mut self) -> Result<i64, String> {
        let n = self.long()?;
        if n < 0 {
            self.long()?; // byte size of the block, not needed
        }
        let n = n.checked_abs().ok_or("block count overflow")?;
        if n > MAX_ITEMS {
            return Err(format!("a block of {n} items"));
        }
        Ok(n)
    }

    fn value(&mut self, s: &Schema) -> Result<Avro, String> {
        Ok(match s {
            Schema::Null => Avro::Null,
            Schema::Boolean => Avro::Bool(self.take(1)?[0] != 0),
            Schema::Int | Schema::Long => Avro::Long(self.long()?),
            Schema::Float => {
                let b = self.take(4)?;
                Avro::Double(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            Schema::Double => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Avro::Double(f64::from_le_bytes(a))
            }
            Schema::Bytes => Avro::Bytes(self.bytes()?),
            Schema::String => Avro::Str(self.string()?),
            Schema::Fixed(n) => Avro::Bytes(self.take(*n)?.to_vec()),
            Schema::Enum(symbols) => {
                let i = self.long()?;
                let sym = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| format!("enum index {i} out of range"))?;
                Avro::Enum(sym.clone())
            }
            Schema::Union(branches) => {
                let i = self.long()?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| format!("union branch {i} out of range"))?;
                self.value(b)?
            }
            Schema::Record(fields) => {
                let mut out = Vec::with_capacity(fields.len());
                for (name, fs) in fields {
                    out.push((name.clone(), self.value(fs)?));
                }
                Avro::Record(out)
            }
            Schema::Array(item) => {
                let mut out = Vec::new();
                loop {
                    let n = self.block_count()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        out.push(self.value(item)?);
                    }
                }
                Avro::Array(out)
            }
            Schema::Map(item) => {
                let mut out = Vec::new();
                loop {
                    let n = self.block_count()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let k = self.string()?;
                        out.push((k, self.value(item)?));
                    }
                }
                Avro::Map(out)
            }
        })
    }
}

/// Whether the bytes start like an Avro object container file.
pub fn is_avro(bytes: &[u8]) -> bool {
    bytes.starts_with(b"Obj\x01")
}

/// Every object of an Avro object container file, in order. Errors say which block.
pub fn read_container(bytes: &[u8]) -> Result<Vec<Avro>, String> {
    if !is_avro(bytes) {
        return Err("not an Avro object container file (no `Obj\\x01` magic)".into());
    }
    let mut c = Cursor { b: bytes, i: 4 };
    let meta_schema = Schema::Map(Box::new(Schema::Bytes));
    let meta = match c.value(&meta_schema).map_err(|e| format!("header: {e}"))? {
        Avro::Map(m) => m,
        _ => Vec::new(),
    };
    let meta_get = |k: &str| {
        meta.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| match v {
                Avro::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
    };
    let schema_text = meta_get("avro.schema").ok_or("header: no `avro.schema`")?;
    let schema_json: Json = serde_json::from_str(&schema_text)
        .map_err(|e| format!("header: `avro.schema` is not JSON: {e}"))?;
    let schema = schema_of(&schema_json).map_err(|e| format!("header: {e}"))?;
    let codec = meta_get("avro.codec").unwrap_or_else(|| "null".into());
    if codec != "null" && codec != "deflate" {
        return Err(format!(
            "header: codec `{codec}` is not supported (null and deflate are)"
        ));
    }
    let sync = c.take(16).map_err(|e| format!("header: {e}"))?.to_vec();
    let mut out = Vec::new();
    let mut block = 0usize;
    while c.i < bytes.len() {
        block += 1;
        let at = |e: String| format!("block {block}: {e}");
        let count = c.long().map_err(at)?;
        let size = c.len().map_err(at)?;
        let data = c.take(size).map_err(at)?;
        let marker = c.take(16).map_err(at)?;
        if marker != sync.as_slice() {
            return Err(at("sync marker does not match the header's".into()));
        }
        let raw: Vec<u8> = if codec == "deflate" {
            let mut d = Vec::new();
            flate2::read::DeflateDecoder::new(data)
                .take(MAX_BLOCK)
                .read_to_end(&mut d)
                .map_err(|e| at(format!("deflate: {e}")))?;
            d
        } else {
            data.to_vec()
        };
        if !(0..=MAX_ITEMS).contains(&count) {
            return Err(at(format!("{count} objects")));
        }
        let mut bc = Cursor { b: &raw, i: 0 };
        for n in 0..count {
            out.push(
                bc.value(&schema)
                    .map_err(|e| at(format!("object {}: {e}", n + 1)))?,
            );
        }
    }
    Ok(out)
}

/// The schema Event Hubs Capture writes (explore-captured-avro-files.md).
pub const CAPTURE_SCHEMA: &str = r#"{"type":"record","name":"EventData","namespace":"Microsoft.ServiceBus.Messaging","fields":[{"name":"SequenceNumber","type":"long"},{"name":"Offset","type":"string"},{"name":"EnqueuedTimeUtc","type":"string"},{"name":"SystemProperties","type":{"type":"map","values":["long","double","string","bytes"]}},{"name":"Properties","type":{"type":"map","values":["long","double","string","bytes"]}},{"name":"Body","type":["null","bytes"]}]}"#;

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A Capture file holding these events: (enqueued time text, body). `deflate` picks the codec.
pub fn write_capture(events: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut out = b"Obj\x01".to_vec();
    put_long(&mut out, 2);
    put_bytes(&mut out, b"avro.codec");
    put_bytes(&mut out, if deflate { b"deflate" } else { b"null" });
    put_bytes(&mut out, b"avro.schema");
    put_bytes(&mut out, CAPTURE_SCHEMA.as_bytes());
    put_long(&mut out, 0);
    let sync: Vec<u8> = (0u8..16)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    out.extend_from_slice(&sync);
    let mut data = Vec::new();
    for (n, (enqueued, body)) in events.iter().enumerate() {
        put_long(&mut data, n as i64);
        put_bytes(&mut data, (n * 1024).to_string().as_bytes());
        put_bytes(&mut data, enqueued.as_bytes());
        put_long(&mut data, 0); // SystemProperties: empty map
        put_long(&mut data, 0); // Properties: empty map
        put_long(&mut data, 1); // Body: the `bytes` branch
        put_bytes(&mut data, body);
    }
    let data = if deflate {
        use std::io::Write as _;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = e.write_all(&data);
        e.finish().unwrap_or_default()
    } else {
        data
    };
    put_long(&mut out, events.len() as i64);
    put_bytes(&mut out, &data);
    out.extend_from_slice(&sync);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_round_trip_both_codecs() {
        for deflate in [false, true] {
            let file = write_capture(
                &[
                    ("1/1/2024 10:00:00 AM".into(), b"{\"records\":[]}".to_vec()),
                    ("1/1/2024 10:00:01 AM".into(), b"second".to_vec()),
                ],
                deflate,
            );
            let objs = read_container(&file).unwrap();
            assert_eq!(objs.len(), 2);
            assert_eq!(objs[1].field("SequenceNumber"), Some(&Avro::Long(1)));
            assert_eq!(
                objs[1].field("Body"),
                Some(&Avro::Bytes(b"second".to_vec()))
            );
        }
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let file = write_capture(&[("t".into(), b"{}".to_vec())], false);
        for cut in 0..file.len() {
            let _ = read_container(&file[..cut]);
        }
        let mut bad = file.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(read_container(&bad).unwrap_err().contains("sync marker"));
    }
}
