//! Property-based fuzzing of everything a device's bytes reach before the hub decides anything:
//! the packet codec (with the MQTT 3.1.1 pre-parse), CONNECT usernames, SAS tokens, topics and
//! property bags, and connection strings. Arbitrary and mutated inputs must never panic; valid
//! packets must survive a round trip. Seeded, so a run is repeatable; `FAKEHUB_FUZZ_CASES` sets
//! the number of cases per property (default 2000, well inside the suite's time; see
//! docs/HARDENING.md for the long run).

use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use fakehub_protocol::codec::{check_frame, MqttIo, ReadError};
use fakehub_protocol::connection_string::ConnectionString;
use fakehub_protocol::properties::PropertyBag;
use fakehub_protocol::sas::{self, SasToken};
use fakehub_protocol::topics;
use fakehub_protocol::username::Username;
use fakehub_protocol::IdentityRef;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rumqttc::mqttbytes::{v4 as mq, QoS};

fn config() -> Config {
    let cases = std::env::var("FAKEHUB_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(14),
        failure_persistence: None,
        ..Config::default()
    }
}

fn who() -> IdentityRef {
    IdentityRef {
        device_id: "dev-1".into(),
        module_id: None,
    }
}

/// Every packet the bytes hold, read the way the hub reads them, until the codec refuses or runs
/// out; never panics.
fn read_all(bytes: &[u8]) -> (Vec<mq::Packet>, Option<ReadError>) {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
    }
    RT.with(|rt| {
        rt.block_on(async {
            let (mut a, b) = tokio::io::duplex(bytes.len().max(1) + 16);
            tokio::io::AsyncWriteExt::write_all(&mut a, bytes)
                .await
                .unwrap();
            drop(a);
            let mut io = MqttIo::new(b, 64 * 1024);
            let mut packets = Vec::new();
            loop {
                match io.read_packet().await {
                    Ok(p) => packets.push(p),
                    Err(ReadError::Eof) => return (packets, None),
                    Err(e) => return (packets, Some(e)),
                }
            }
        })
    })
}

fn encode(p: &mq::Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, usize::MAX).unwrap();
    buf.to_vec()
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]
}

/// Packets a device sends, valid by construction.
fn packet() -> impl Strategy<Value = mq::Packet> {
    let text = "[a-zA-Z0-9/$%=&.?_-]{0,60}";
    // rumqttc writes an empty user name as none at all.
    let login = "[a-zA-Z0-9/$%=&.?_ -]{1,60}";
    prop_oneof![
        (text, login, login, any::<bool>(), any::<u16>()).prop_map(
            |(id, user, pass, clean, ka)| {
                let mut c = mq::Connect::new(id);
                c.clean_session = clean;
                c.keep_alive = ka;
                c.login = Some(mq::Login::new(user, pass));
                mq::Packet::Connect(c)
            }
        ),
        (
            text,
            qos(),
            1..=u16::MAX,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(t, q, pkid, payload)| {
                let mut p = mq::Publish::new(t, q, payload);
                if q != QoS::AtMostOnce {
                    p.pkid = pkid;
                }
                mq::Packet::Publish(p)
            }),
        (text, qos(), 1..=u16::MAX).prop_map(|(f, q, pkid)| {
            let mut s = mq::Subscribe::new(f, q);
            s.pkid = pkid;
            mq::Packet::Subscribe(s)
        }),
        (text, 1..=u16::MAX).prop_map(|(f, pkid)| {
            let mut u = mq::Unsubscribe::new(f);
            u.pkid = pkid;
            mq::Packet::Unsubscribe(u)
        }),
        (1..=u16::MAX).prop_map(|pkid| mq::Packet::PubAck(mq::PubAck::new(pkid))),
        Just(mq::Packet::PingReq),
        Just(mq::Packet::Disconnect),
    ]
}

/// A way to damage a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1..8usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize| i % bytes.len();
    match m {
        Mutation::Flip(i, x) => {
            let i = at(*i);
            bytes[i] ^= x;
        }
        Mutation::Insert(i, b) => {
            let i = at(*i);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(*i);
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate(i) => {
            let i = at(*i);
            bytes.truncate(i);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_codec(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_frame(&bytes);
        let _ = read_all(&bytes);
    }

    #[test]
    fn valid_packets_round_trip(packets in proptest::collection::vec(packet(), 1..6)) {
        let bytes: Vec<u8> = packets.iter().flat_map(encode).collect();
        let (read, err) = read_all(&bytes);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(read, packets);
    }

    #[test]
    fn mutated_packet_streams_never_panic_the_codec(
        packets in proptest::collection::vec(packet(), 1..5),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes: Vec<u8> = packets.iter().flat_map(encode).collect();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        let _ = check_frame(&bytes);
        let _ = read_all(&bytes);
    }

    #[test]
    fn usernames_never_panic(raw in ".{0,200}", tail in "[a-z=&%?/.-]{0,80}") {
        let _ = Username::parse(&raw);
        let _ = Username::parse(&format!("hub.azure-devices.net/dev-1/{tail}"));
        let _ = Username::parse(&format!("hub.azure-devices.net/dev-1/mod/{tail}"));
    }

    #[test]
    fn sas_tokens_never_panic(
        sr in "[a-zA-Z0-9%./-]{0,60}",
        sig in "[A-Za-z0-9+/=%]{0,60}",
        se in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{0,40}", ".{0,20}"],
        extra in "[a-z=&]{0,20}",
        raw in ".{0,200}",
    ) {
        for text in [
            format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}{extra}"),
            format!("SharedAccessSignature se={se}&{extra}&sig={sig}&sr={sr}&skn=x"),
            raw.clone(),
        ] {
            if let Ok(t) = SasToken::parse(&text) {
                let _ = t.expiry();
                let _ = t.verify_signature("AAAA");
                let _ = t.verify_signature(&raw);
                let _ = t.verify_audience("hub.azure-devices.net/devices/dev-1");
                let _ = t.verify_not_expired(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
                let _ = t.verify_not_expired_within(UNIX_EPOCH, Duration::MAX);
            }
        }
        let _ = sas::mint(&sr, &sig, None, UNIX_EPOCH + Duration::from_secs(se.len() as u64));
    }

    #[test]
    fn topics_and_property_bags_never_panic(
        tail in ".{0,120}",
        bag in "[a-zA-Z0-9%$.=&_-]{0,120}",
    ) {
        let w = who();
        for topic in [
            tail.clone(),
            format!("devices/dev-1/messages/events/{bag}"),
            format!("devices/dev-1/messages/events/{tail}"),
            format!("$iothub/twin/PATCH/properties/reported/?$rid={bag}"),
            format!("$iothub/methods/res/{tail}"),
            format!("$iothub/twin/GET/?{bag}"),
        ] {
            let _ = topics::classify_publish(&w, &topic);
            let _ = topics::classify_filter(&w, &topic);
        }
        let parsed = PropertyBag::parse(&bag);
        let _ = parsed.message_id();
        // What the hub encodes, it reads back the same.
        prop_assert_eq!(PropertyBag::parse(&parsed.encode()), parsed);
        let _ = PropertyBag::parse(&tail);
    }

    #[test]
    fn connection_strings_never_panic(raw in ".{0,300}", key in "[A-Za-z0-9+/=]{0,60}") {
        let _ = ConnectionString::parse(&raw);
        let _ = ConnectionString::parse(&format!("HostName=h;DeviceId=d;SharedAccessKey={key};{raw}"));
    }
}
