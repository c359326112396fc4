//! A line of `events.jsonl` read back without serde's generic machinery, for the kinds a fleet's
//! log is mostly made of. `Event` flattens its kind, and serde reads a flattened, internally
//! tagged enum by first copying every field of the line into a tree of its own values: judging
//! the 100,000-device fleet spent 8 s of its 60 in that. Here the line is read in place, field by
//! field, in the order [`super::line::write`] writes them.
//!
//! Only that exact form is read: a line in any other (spaces, escapes, fields in another order,
//! a kind not listed below, properties on a PUBLISH) gives `None`, and serde reads it. What this
//! reads is what serde reads from the same line; the tests hold the two equal on every kind and
//! on damaged lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fakehub_protocol::ResultCode;
use serde::de::DeserializeOwned;

use super::{Event, EventKind};

/// Reads lines, remembering the last second it parsed (a log's times share their second with
/// many neighbours).
#[derive(Default)]
pub(super) struct Reader {
    /// `YYYY-MM-DDTHH:MM:SS` and the time it is.
    second: Option<([u8; 19], SystemTime)>,
}

impl Reader {
    /// `line` as an event, when it has the form this reads; `intern` gives the device id's one
    /// shared copy.
    pub(super) fn read(
        &mut self,
        line: &str,
        intern: &mut impl FnMut(&str) -> Arc<str>,
    ) -> Option<Event> {
        let mut c = Cursor {
            rest: line.as_bytes(),
        };
        c.lit(b"{\"seq\":")?;
        let seq = c.u64()?;
        c.lit(b",\"time\":\"")?;
        let time = self.time(c.take(24)?)?;
        c.lit(b"\",\"elapsed_ms\":")?;
        let elapsed = Duration::from_millis(c.u64()?);
        let conn = c.opt(b",\"conn\":", Cursor::u64)?;
        let device = c.opt(b",\"device\":", Cursor::str)?.map(&mut *intern);
        let module = c.opt(b",\"module\":", Cursor::str)?.map(Arc::from);
        let hub = c.opt(b",\"hub\":", Cursor::str)?.map(Arc::from);
        c.lit(b",\"event\":")?;
        let name = c.str()?;
        let kind = kind(name, &mut c)?;
        c.lit(b"}")?;
        c.end()?;
        Some(Event {
            seq,
            time,
            elapsed,
            conn,
            device,
            module,
            hub,
            kind,
        })
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as `humantime::parse_rfc3339` reads it: the second parsed
    /// once, the milliseconds added.
    fn time(&mut self, text: &[u8]) -> Option<SystemTime> {
        let (second, fraction) = text.split_at_checked(19)?;
        let [b'.', a, b, c, b'Z'] = *fraction else {
            return None;
        };
        let mut ms = 0u64;
        for d in [a, b, c] {
            if !d.is_ascii_digit() {
                return None;
            }
            ms = ms * 10 + u64::from(d.checked_sub(b'0')?);
        }
        let base = match self.second {
            Some((known, at)) if known == second => at,
            _ => {
                let text = std::str::from_utf8(second).ok()?;
                let at = humantime::parse_rfc3339(&format!("{text}Z")).ok()?;
                let key: [u8; 19] = second.try_into().ok()?;
                self.second = Some((key, at));
                at
            }
        };
        base.checked_add(Duration::from_millis(ms))
    }
}

/// The kind's fields after its `"event":"name"`.
fn kind(name: &str, c: &mut Cursor<'_>) -> Option<EventKind> {
    Some(match name {
        "hub_stopped" => EventKind::HubStopped,
        "ping" => EventKind::Ping,
        "pingresp" => EventKind::Pingresp,
        "disconnect_packet" => EventKind::DisconnectPacket,
        "timeline_ended" => EventKind::TimelineEnded,
        "accepted" => EventKind::Accepted {
            peer: c.field(b"peer", Cursor::str)?.parse::<SocketAddr>().ok()?,
        },
        "tls" => EventKind::Tls {
            version: c.field(b"version", Cursor::str)?.to_owned(),
        },
        "connect" => EventKind::Connect {
            client_id: c.field(b"client_id", Cursor::str)?.to_owned(),
            username: c.field(b"username", Cursor::str)?.to_owned(),
            keep_alive: u16::try_from(c.field(b"keep_alive", Cursor::u64)?).ok()?,
            clean_session: c.field(b"clean_session", Cursor::bool)?,
            auth: unit(c.field(b"auth", Cursor::str)?)?,
            sdk: c.opt(b",\"sdk\":", Cursor::str)?.map(str::to_owned),
            token_expiry: match c.opt(b",\"token_expiry\":", Cursor::str)? {
                Some(t) => Some(humantime::parse_rfc3339(t).ok()?),
                None => None,
            },
            will: c.field(b"will", Cursor::bool)?,
        },
        "connack" => EventKind::Connack {
            code: u8::try_from(c.field(b"code", Cursor::u64)?).ok()?,
            session_present: c.field(b"session_present", Cursor::bool)?,
            result: c.opt(b",\"result\":", Cursor::result)?,
            reason: c.opt(b",\"reason\":", Cursor::str)?.map(str::to_owned),
        },
        "puback" => EventKind::Puback {
            dir: unit(c.field(b"dir", Cursor::str)?)?,
            pkid: c.field(b"pkid", Cursor::u16)?,
        },
        "unsuback" => EventKind::Unsuback {
            pkid: c.field(b"pkid", Cursor::u16)?,
        },
        "publish" => EventKind::Publish {
            dir: unit(c.field(b"dir", Cursor::str)?)?,
            topic: c.field(b"topic", Cursor::str)?.to_owned(),
            qos: u8::try_from(c.field(b"qos", Cursor::u64)?).ok()?,
            pkid: c.field(b"pkid", Cursor::u16)?,
            dup: c.field(b"dup", Cursor::bool)?,
            retain: c.field(b"retain", Cursor::bool)?,
            size: usize::try_from(c.field(b"size", Cursor::u64)?).ok()?,
            message_id: c.opt(b",\"message_id\":", Cursor::str)?.map(str::to_owned),
            // A message with properties is left to serde (the `}` expected next fails).
            properties: Box::default(),
        },
        "subscribe" => EventKind::Subscribe {
            pkid: c.field(b"pkid", Cursor::u16)?,
            filters: c.field(b"filters", |c| {
                c.list(|c| {
                    c.lit(b"[")?;
                    let filter = c.str()?.to_owned();
                    c.lit(b",")?;
                    let qos = u8::try_from(c.u64()?).ok()?;
                    c.lit(b"]")?;
                    Some((filter, qos))
                })
            })?,
        },
        "suback" => EventKind::Suback {
            pkid: c.field(b"pkid", Cursor::u16)?,
            codes: c.field(b"codes", |c| c.list(|c| u8::try_from(c.u64()?).ok()))?,
        },
        "closed" => EventKind::Closed {
            by: unit(c.field(b"by", Cursor::str)?)?,
            how: unit(c.field(b"how", Cursor::str)?)?,
            cause: unit(c.field(b"cause", Cursor::str)?)?,
            detail: c.opt(b",\"detail\":", Cursor::str)?.map(str::to_owned),
            result: c.opt(b",\"result\":", Cursor::result)?,
        },
        "connected_devices" => EventKind::ConnectedDevices {
            count: usize::try_from(c.field(b"count", Cursor::u64)?).ok()?,
        },
        "twin_updated" => EventKind::TwinUpdated {
            section: unit(c.field(b"section", Cursor::str)?)?,
            version: c.field(b"version", Cursor::u64)?,
            acknowledges: c.opt(b",\"acknowledges\":", Cursor::u64)?,
        },
        "device_clock" => EventKind::DeviceClock {
            mode: unit(c.field(b"mode", Cursor::str)?)?,
        },
        _ => return None,
    })
}

/// A unit variant by its name, as serde names it.
fn unit<T: DeserializeOwned>(name: &str) -> Option<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name)).ok()
}

/// What is left of the line.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn lit(&mut self, expected: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(expected)?;
        Some(())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    /// `,"name":` and its value.
    fn field<T>(&mut self, name: &[u8], value: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.lit(b",\"")?;
        self.lit(name)?;
        self.lit(b"\":")?;
        value(self)
    }

    /// A field that may be absent (`key` is `,"name":`): `Some(None)` when the line goes on
    /// with something else, `None` when the value is not what it should be.
    fn opt<T>(
        &mut self,
        key: &[u8],
        value: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        if self.lit(key).is_none() {
            return Some(None);
        }
        value(self).map(Some)
    }

    /// A JSON integer that fits a u64: digits, no leading zero.
    fn u64(&mut self) -> Option<u64> {
        let digits = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (number, rest) = self.rest.split_at_checked(digits)?;
        match number {
            [] => return None,
            [b'0', _, ..] => return None,
            _ => {}
        }
        let mut n = 0u64;
        for d in number {
            n = n
                .checked_mul(10)?
                .checked_add(u64::from(d.checked_sub(b'0')?))?;
        }
        self.rest = rest;
        Some(n)
    }

    fn u16(&mut self) -> Option<u16> {
        u16::try_from(self.u64()?).ok()
    }

    fn result(&mut self) -> Option<ResultCode> {
        u32::try_from(self.u64()?).ok().map(ResultCode::from_code)
    }

    fn bool(&mut self) -> Option<bool> {
        if self.lit(b"true").is_some() {
            Some(true)
        } else {
            self.lit(b"false").map(|()| false)
        }
    }

    /// A JSON string with nothing escaped in it.
    fn str(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let len = self
            .rest
            .iter()
            .position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)?;
        let (text, rest) = self.rest.split_at_checked(len)?;
        if rest.first() != Some(&b'"') {
            return None;
        }
        self.rest = rest.get(1..)?;
        std::str::from_utf8(text).ok()
    }

    /// `[a,b,…]`.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.lit(b"[")?;
        let mut items = Vec::new();
        if self.lit(b"]").is_some() {
            return Some(items);
        }
        loop {
            items.push(item(self)?);
            if self.lit(b"]").is_some() {
                return Some(items);
            }
            self.lit(b",")?;
        }
    }

    /// Nothing but JSON whitespace is left.
    fn end(&self) -> Option<()> {
        self.rest
            .iter()
            .all(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .then_some(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    use fakehub_protocol::ResultCode;

    use super::*;
    use crate::events::line::tests::{events, kinds};
    use crate::events::line::{write, TimeCache};
    use crate::events::{AuthKind, CloseCause, CloseHow, Closer, Direction};

    /// The kinds read in place (any other is serde's).
    const IN_PLACE: [&str; 18] = [
        "hub_stopped",
        "ping",
        "pingresp",
        "disconnect_packet",
        "timeline_ended",
        "accepted",
        "tls",
        "connect",
        "connack",
        "puback",
        "unsuback",
        "publish",
        "subscribe",
        "suback",
        "closed",
        "connected_devices",
        "twin_updated",
        "device_clock",
    ];

    /// Examples with nothing to escape (the shared ones escape on purpose), so that every
    /// optional field is read in place too.
    fn plain_kinds() -> Vec<EventKind> {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        vec![
            EventKind::Connect {
                client_id: "dev1".into(),
                username: "hub/dev1/?api-version=2021-04-12".into(),
                keep_alive: 60,
                clean_session: true,
                auth: AuthKind::Sas,
                sdk: Some("azure-iot-device/1.18.4".into()),
                token_expiry: Some(at),
                will: true,
            },
            EventKind::Connect {
                client_id: "dev1".into(),
                username: String::new(),
                keep_alive: 0,
                clean_session: false,
                auth: AuthKind::X509,
                sdk: None,
                token_expiry: None,
                will: false,
            },
            EventKind::Connack {
                code: 3,
                session_present: false,
                result: Some(ResultCode::from_code(500_001)),
                reason: Some("the hub is out".into()),
            },
            EventKind::Publish {
                dir: Direction::In,
                topic: "devices/dev1/messages/events/".into(),
                qos: 1,
                pkid: 65_535,
                dup: true,
                retain: false,
                size: 64,
                message_id: Some("m-1".into()),
                properties: Box::default(),
            },
            EventKind::Subscribe {
                pkid: 2,
                filters: vec![("$iothub/twin/res/#".into(), 0), ("a".into(), 1)],
            },
            EventKind::Subscribe {
                pkid: 3,
                filters: Vec::new(),
            },
            EventKind::Suback {
                pkid: 2,
                codes: vec![0, 1, 128],
            },
            EventKind::Closed {
                by: Closer::Hub,
                how: CloseHow::Rst,
                cause: CloseCause::TokenExpired,
                detail: Some("the SAS token expired".into()),
                result: Some(ResultCode::from_code(401_003)),
            },
            EventKind::Closed {
                by: Closer::Device,
                how: CloseHow::Fin,
                cause: CloseCause::DeviceClosed,
                detail: None,
                result: None,
            },
        ]
    }

    fn lines() -> Vec<String> {
        let mut cache = TimeCache::default();
        let all = kinds().into_iter().chain(plain_kinds()).collect();
        events(all)
            .iter()
            .map(|e| {
                let mut line = Vec::new();
                write(&mut line, e, &mut cache).expect("written");
                line.push(b'\n');
                String::from_utf8(line).expect("UTF-8")
            })
            .collect()
    }

    fn read(reader: &mut Reader, line: &str) -> Option<Event> {
        reader.read(line, &mut |d: &str| Arc::from(d))
    }

    fn kind_name(line: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(v.get("event")?.as_str()?.to_owned())
    }

    #[test]
    fn every_line_reads_as_serde_reads_it_and_the_plain_ones_in_place() {
        let mut reader = Reader::default();
        let mut in_place = BTreeSet::new();
        for line in lines() {
            let serde = serde_json::from_str::<Event>(&line);
            match read(&mut reader, &line) {
                Some(ours) => {
                    assert_eq!(Some(&ours), serde.as_ref().ok(), "{line}");
                    in_place.insert(kind_name(&line).expect("a kind"));
                }
                None => {
                    let plain = !line.contains('\\') && !line.contains("\"properties\"");
                    let listed = kind_name(&line).is_some_and(|k| IN_PLACE.contains(&k.as_str()));
                    // Before 1970 serde cannot read the time either.
                    assert!(
                        !(plain && listed && serde.is_ok()),
                        "not read in place: {line}"
                    );
                }
            }
        }
        let expected: BTreeSet<String> = IN_PLACE.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(in_place, expected);
    }

    /// Every line damaged one byte at a time (replaced by a byte JSON cares about, or removed):
    /// whatever this reads, serde reads the same; whatever serde refuses, this does not read.
    #[test]
    fn a_damaged_line_reads_as_serde_reads_it_or_not_at_all() {
        let mut reader = Reader::default();
        let swaps = b"0 9\"\\,:}{][-.eEtfnx\n";
        let mut read_in_place = 0usize;
        let lines: Vec<String> = lines()
            .into_iter()
            .filter(|l| read(&mut Reader::default(), l).is_some())
            .collect();
        assert!(lines.len() > 50, "{} lines read in place", lines.len());
        for line in &lines {
            let bytes = line.as_bytes();
            for at in 0..bytes.len() {
                let mut variants: Vec<Vec<u8>> = swaps
                    .iter()
                    .filter(|b| bytes.get(at) != Some(b))
                    .map(|b| {
                        let mut v = bytes.to_vec();
                        if let Some(x) = v.get_mut(at) {
                            *x = *b;
                        }
                        v
                    })
                    .collect();
                let mut removed = bytes.to_vec();
                removed.remove(at);
                variants.push(removed);
                for v in variants {
                    let Ok(damaged) = String::from_utf8(v) else {
                        continue;
                    };
                    if let Some(ours) = read(&mut reader, &damaged) {
                        let serde = serde_json::from_str::<Event>(&damaged);
                        assert_eq!(Some(&ours), serde.as_ref().ok(), "{damaged}");
                        read_in_place += 1;
                    }
                }
            }
        }
        // Digits changed, and trailing whitespace, still read: the check above had work to do.
        assert!(read_in_place > 1000, "{read_in_place}");
    }
}
