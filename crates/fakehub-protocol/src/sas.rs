//! Shared access signatures as IoT Hub reads them: parse, verify over the raw `sr`, and mint.
//!
//! The string to sign is the `sr` value exactly as it appears in the token, a newline, and `se`. SDKs
//! disagree on how they encode `sr` (Python percent-encodes it with upper-case hex, the C SDK sends it
//! raw), so re-encoding it would reject tokens the real hub accepts. See research §1.3.
//!
//! Nothing in this module ever formats a key or a signature into an error or a log line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::Sha256;
use std::borrow::Cow;
use subtle::ConstantTimeEq;

/// The hub tolerates this much clock difference when it checks `se` (Microsoft's `MaxClockSkew`).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why a SAS token was refused. The text is safe to log: it never contains key or signature material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the password is not a SharedAccessSignature")]
    NotSas,
    #[error("the SAS token has no `{0}` field")]
    Missing(&'static str),
    #[error("the SAS token field `{0}` is malformed")]
    Malformed(&'static str),
    #[error("the signing key is not valid base64")]
    BadKey,
    #[error("the signature does not match")]
    SignatureMismatch,
    #[error("the token's audience `{audience}` does not cover `{expected}`")]
    WrongAudience { audience: String, expected: String },
    #[error("the token expired at {}", crate::clock::rfc3339_seconds(*.0))]
    Expired(SystemTime),
}

/// A parsed SAS token. The signature is kept decoded for verification and is never displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    raw_sr: String,
    audience: String,
    signature: String,
    expiry: u64,
    key_name: Option<String>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("audience", &self.audience)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

fn decode(field: &'static str, value: &str) -> Result<String, SasError> {
    crate::percent::decode_utf8(value)
        .map(Cow::into_owned)
        .ok_or(SasError::Malformed(field))
}

impl SasToken {
    /// Parse `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` with the fields in any order.
    pub fn parse(password: &str) -> Result<SasToken, SasError> {
        let body = password
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SasError::NotSas)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in body.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sr" => sr = Some(v),
                "sig" => sig = Some(v),
                "se" => se = Some(v),
                "skn" => skn = Some(v),
                _ => {}
            }
        }
        let raw_sr = sr.ok_or(SasError::Missing("sr"))?.to_owned();
        let audience = decode("sr", &raw_sr)?;
        let signature = decode("sig", sig.ok_or(SasError::Missing("sig"))?)?;
        let expiry = decode("se", se.ok_or(SasError::Missing("se"))?)?
            .parse::<u64>()
            .map_err(|_| SasError::Malformed("se"))?;
        let key_name = match skn {
            Some(v) if !v.is_empty() => Some(decode("skn", v)?),
            _ => None,
        };
        Ok(SasToken {
            raw_sr,
            audience,
            signature,
            expiry,
            key_name,
        })
    }

    /// The decoded resource URI (`sr`).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The shared access policy name (`skn`), when the token was signed with a policy key.
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// The expiry (`se`).
    /// `se` as a time (an `se` past year 9999 reads as the end of 9999: no hub lives that long).
    pub fn expiry(&self) -> SystemTime {
        crate::clock::wall_add(UNIX_EPOCH, Duration::from_secs(self.expiry))
    }

    /// Check the signature against a base64 key, in constant time.
    pub fn verify_signature(&self, key_b64: &str) -> Result<(), SasError> {
        let expected = sign(key_b64, &self.raw_sr, self.expiry)?;
        if expected.as_bytes().ct_eq(self.signature.as_bytes()).into() {
            Ok(())
        } else {
            Err(SasError::SignatureMismatch)
        }
    }

    /// Check that the token's audience is `resource` or a prefix of it that ends at a `/`
    /// (case-insensitive, as the hub compares host names).
    pub fn verify_audience(&self, resource: &str) -> Result<(), SasError> {
        let audience = self.audience.trim_end_matches('/').to_ascii_lowercase();
        let audience = audience
            .strip_prefix("https://")
            .or_else(|| audience.strip_prefix("amqps://"))
            .unwrap_or(&audience);
        let expected = resource.to_ascii_lowercase();
        let covers = expected == audience
            || (expected.starts_with(audience) && expected[audience.len()..].starts_with('/'));
        if covers && !audience.is_empty() {
            Ok(())
        } else {
            Err(SasError::WrongAudience {
                audience: self.audience.clone(),
                expected: resource.to_owned(),
            })
        }
    }

    /// Refuse a token whose expiry plus the hub's clock-skew allowance is before `now`.
    pub fn verify_not_expired(&self, now: SystemTime) -> Result<(), SasError> {
        self.verify_not_expired_within(now, MAX_CLOCK_SKEW)
    }

    /// Refuse a token whose expiry plus `allowance` is before `now` (a hub that drops connections
    /// at expiry plus a grace shorter than the skew allowance accepts no more than that grace: a
    /// token it would drop at once is refused instead).
    pub fn verify_not_expired_within(
        &self,
        now: SystemTime,
        allowance: Duration,
    ) -> Result<(), SasError> {
        if crate::clock::wall_add(self.expiry(), allowance) < now {
            Err(SasError::Expired(self.expiry()))
        } else {
            Ok(())
        }
    }
}

/// What every SAS token starts with.
const PREFIX: &str = "SharedAccessSignature ";

/// The HMAC keyed with a base64 key.
fn keyed(key_b64: &str) -> Result<Hmac<Sha256>, SasError> {
    let key = B64.decode(key_b64.trim()).map_err(|_| SasError::BadKey)?;
    Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::BadKey)
}

/// The signature of `raw_sr` and `expiry` with an HMAC already keyed.
fn signature(mut mac: Hmac<Sha256>, raw_sr: &str, expiry: u64) -> String {
    mac.update(raw_sr.as_bytes());
    mac.update(b"\n");
    mac.update(expiry.to_string().as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

fn sign(key_b64: &str, raw_sr: &str, expiry: u64) -> Result<String, SasError> {
    Ok(signature(keyed(key_b64)?, raw_sr, expiry))
}

/// The resource URI a device or module token is scoped to.
pub fn resource_uri(host_name: &str, device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(m) => format!("{host_name}/devices/{device_id}/modules/{m}"),
        None => format!("{host_name}/devices/{device_id}"),
    }
}

/// `expiry` as `se`: whole seconds since the epoch, rounded down.
fn se_of(expiry: SystemTime) -> Result<u64, SasError> {
    Ok(expiry
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SasError::Malformed("se"))?
        .as_secs())
}

/// Mints the tokens of one resource with one key. The resource is percent-encoded, and the key
/// decoded and set into the HMAC, once: a device mints a token per connect attempt, and a fleet's
/// reconnect storm makes a million of them.
#[derive(Clone)]
pub struct Minter {
    /// The resource, percent-encoded as it goes into `sr`.
    sr: String,
    mac: Hmac<Sha256>,
}

impl Minter {
    pub fn new(resource: &str, key_b64: &str) -> Result<Minter, SasError> {
        Ok(Minter {
            sr: utf8_percent_encode(resource, NON_ALPHANUMERIC).to_string(),
            mac: keyed(key_b64)?,
        })
    }

    /// The minter of a device's or module's own tokens.
    pub fn for_identity(
        host_name: &str,
        who: &crate::identity::IdentityRef,
        key_b64: &str,
    ) -> Result<Minter, SasError> {
        let resource = resource_uri(host_name, &who.device_id, who.module_id.as_deref());
        Minter::new(&resource, key_b64)
    }

    /// A token the way the Python SDK makes one (percent-encoded `sr`, upper-case hex), valid
    /// until `expiry` (rounded down to a whole second), naming `key_name` when given.
    pub fn mint(&self, key_name: Option<&str>, expiry: SystemTime) -> Result<String, SasError> {
        let se = se_of(expiry)?;
        let sig = signature(self.mac.clone(), &self.sr, se);
        // Put together piece by piece (a device mints a token per connect attempt; through
        // `format!` and the encoder's `Display` this was most of a mint). The signature is base64:
        // of its alphabet only `+`, `/` and `=` are not alphanumeric.
        let se = se.to_string();
        let mut token =
            String::with_capacity(PREFIX.len() + self.sr.len() + sig.len() * 3 + se.len() + 12);
        token.push_str(PREFIX);
        token.push_str("sr=");
        token.push_str(&self.sr);
        token.push_str("&sig=");
        for c in sig.chars() {
            match c {
                '+' => token.push_str("%2B"),
                '/' => token.push_str("%2F"),
                '=' => token.push_str("%3D"),
                c => token.push(c),
            }
        }
        token.push_str("&se=");
        token.push_str(&se);
        if let Some(name) = key_name {
            token.push_str("&skn=");
            token.push_str(&utf8_percent_encode(name, NON_ALPHANUMERIC).to_string());
        }
        Ok(token)
    }

    /// A token that expires `ttl` after the device's own clock says now (in-process devices on the
    /// hub's shared clock get tokens that expire in virtual time), `se` rounded to the nearest
    /// second; with that expiry.
    pub fn mint_for(
        &self,
        clock: &crate::clock::DeviceClock,
        ttl: Duration,
    ) -> Result<(String, SystemTime), SasError> {
        let at = clock
            .now()
            .checked_add(ttl)
            .ok_or(SasError::Malformed("se"))?
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SasError::Malformed("se"))?
            .as_secs_f64()
            .round();
        let expiry = UNIX_EPOCH
            .checked_add(Duration::from_secs(at as u64))
            .ok_or(SasError::Malformed("se"))?;
        Ok((self.mint(None, expiry)?, expiry))
    }
}

/// Mint a token the way the Python SDK does (percent-encoded `sr`, upper-case hex), valid until
/// `expiry` (rounded down to a whole second). For devices in tests; pass a virtual time to follow the
/// hub's clock.
pub fn mint(
    resource: &str,
    key_b64: &str,
    key_name: Option<&str>,
    expiry: SystemTime,
) -> Result<String, SasError> {
    // An expiry before the epoch is named before a bad key, as it always was.
    se_of(expiry)?;
    Minter::new(resource, key_b64)?.mint(key_name, expiry)
}

/// Mint a token for an identity that expires `ttl` after the device's own clock says now (see
/// [`Minter::mint_for`]; a device that mints again and again keeps a [`Minter`]).
pub fn mint_for(
    clock: &crate::clock::DeviceClock,
    host_name: &str,
    who: &crate::identity::IdentityRef,
    key_b64: &str,
    ttl: Duration,
) -> Result<(String, SystemTime), SasError> {
    Minter::for_identity(host_name, who, key_b64)?.mint_for(clock, ttl)
}

/// A fresh random symmetric key (32 bytes, base64), as the hub generates for new identities.
pub fn generate_key() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn minted_token_verifies_and_parses_back() {
        let res = resource_uri("myhub.azure-devices.net", "sensor-1", None);
        let exp = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let tok = mint(&res, KEY, None, exp).unwrap();
        assert!(tok.contains("sr=myhub%2Eazure%2Ddevices%2Enet%2Fdevices%2Fsensor%2D1"));
        let parsed = SasToken::parse(&tok).unwrap();
        parsed.verify_signature(KEY).unwrap();
        parsed.verify_audience(&res).unwrap();
        assert_eq!(parsed.expiry(), exp);
        assert_eq!(parsed.key_name(), None);
    }

    /// One minter, many tokens: each is signed from the same keyed HMAC (cloned, never worn), and
    /// each signature is the one Python's `hmac` computes for that `sr` and `se`.
    #[test]
    fn a_minter_signs_every_expiry_as_a_fresh_key_would() {
        let who = crate::identity::IdentityRef {
            device_id: "sensor-1".into(),
            module_id: None,
        };
        let minter = Minter::for_identity("myhub.azure-devices.net", &who, KEY).unwrap();
        // hmac.new(b64decode(KEY), sr + "\n" + se, sha256), base64: computed outside this code.
        for (se, expected) in [
            (
                1_800_000_000u64,
                "YtY7kGv32shTbyKzWQQ6pTRT7bDaeFvBkIdQQFTpan8=",
            ),
            (
                1_800_003_600,
                "D9RtGc8HdL+eAUBXGlREG0MuVdSpLvB5LXgV+VZwh00=",
            ),
            (
                1_800_000_000,
                "YtY7kGv32shTbyKzWQQ6pTRT7bDaeFvBkIdQQFTpan8=",
            ),
        ] {
            let exp = UNIX_EPOCH + Duration::from_secs(se);
            let tok = minter.mint(None, exp).unwrap();
            let parsed = SasToken::parse(&tok).unwrap();
            assert_eq!(parsed.signature, expected);
            parsed.verify_signature(KEY).unwrap();
            assert_eq!(parsed.expiry(), exp);
            let res = resource_uri("myhub.azure-devices.net", "sensor-1", None);
            assert_eq!(tok, mint(&res, KEY, None, exp).unwrap());
            // Every field encoded as the `percent_encoding` crate encodes it.
            let encoded = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
            assert_eq!(
                tok,
                format!(
                    "SharedAccessSignature sr={}&sig={}&se={se}",
                    encoded(&res),
                    encoded(expected)
                )
            );
        }
        assert_eq!(
            Minter::new("r", "not base64!").err(),
            Some(SasError::BadKey)
        );
    }

    #[test]
    fn raw_sr_is_signed_as_sent_like_the_c_sdk() {
        // The C SDK puts the scope in `sr` without encoding and signs it that way.
        let raw = "myhub.azure-devices.net/devices/sensor-1";
        let sig = sign(KEY, raw, 1_800_000_000).unwrap();
        let tok = format!(
            "SharedAccessSignature sr={raw}&sig={}&se=1800000000",
            utf8_percent_encode(&sig, NON_ALPHANUMERIC)
        );
        let parsed = SasToken::parse(&tok).unwrap();
        parsed.verify_signature(KEY).unwrap();
        // Re-encoding the audience would have signed a different string.
        let reencoded = utf8_percent_encode(raw, NON_ALPHANUMERIC).to_string();
        assert_ne!(sign(KEY, &reencoded, 1_800_000_000).unwrap(), sig);
    }

    #[test]
    fn field_order_and_policy_name() {
        let res = "myhub.azure-devices.net/devices/d1";
        let tok = mint(
            res,
            KEY,
            Some("device"),
            UNIX_EPOCH + Duration::from_secs(10),
        )
        .unwrap();
        // Node emits sr, sig, skn, se: shuffle the fields.
        let body = tok.strip_prefix("SharedAccessSignature ").unwrap();
        let mut parts: Vec<&str> = body.split('&').collect();
        parts.reverse();
        let shuffled = format!("SharedAccessSignature {}", parts.join("&"));
        let parsed = SasToken::parse(&shuffled).unwrap();
        assert_eq!(parsed.key_name(), Some("device"));
        parsed.verify_signature(KEY).unwrap();
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let res = "h/devices/d";
        let exp = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let tok = mint(res, KEY, None, exp).unwrap();
        let other = generate_key();
        let parsed = SasToken::parse(&tok).unwrap();
        assert_eq!(
            parsed.verify_signature(&other),
            Err(SasError::SignatureMismatch)
        );
        let tampered = tok.replace("se=1800000000", "se=1800000001");
        assert_eq!(
            SasToken::parse(&tampered).unwrap().verify_signature(KEY),
            Err(SasError::SignatureMismatch)
        );
    }

    #[test]
    fn audience_prefix_must_end_at_a_segment() {
        let t = |sr: &str| {
            SasToken::parse(&format!("SharedAccessSignature sr={sr}&sig=x&se=1")).unwrap()
        };
        let dev = "myhub.azure-devices.net/devices/sensor-1";
        t("myhub.azure-devices.net%2Fdevices")
            .verify_audience(dev)
            .unwrap();
        t("MyHub.Azure-Devices.net/devices/sensor-1")
            .verify_audience(dev)
            .unwrap();
        assert!(t("myhub.azure-devices.net/devices/sensor")
            .verify_audience(dev)
            .is_err());
        assert!(t("otherhub.azure-devices.net/devices/sensor-1")
            .verify_audience(dev)
            .is_err());
    }

    #[test]
    fn expiry_allows_five_minutes_of_skew() {
        let tok = SasToken::parse("SharedAccessSignature sr=a&sig=b&se=1000").unwrap();
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        tok.verify_not_expired(at(1000 + 300)).unwrap();
        assert!(matches!(
            tok.verify_not_expired(at(1000 + 301)),
            Err(SasError::Expired(_))
        ));
    }

    #[test]
    fn a_lifetime_past_the_end_of_time_is_an_error_not_a_panic() {
        let who = crate::identity::IdentityRef::device("d");
        let clock = crate::clock::DeviceClock::Real;
        for ttl in [Duration::MAX, Duration::from_secs(u64::MAX)] {
            assert_eq!(
                mint_for(&clock, "h.azure-devices.net", &who, KEY, ttl).map(|_| ()),
                Err(SasError::Malformed("se"))
            );
        }
        let (token, expiry) = mint_for(
            &clock,
            "h.azure-devices.net",
            &who,
            KEY,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(expiry > SystemTime::now());
        assert!(!token.contains(KEY));
    }

    #[test]
    fn malformed_tokens_name_the_field_and_never_the_secret() {
        assert_eq!(SasToken::parse("Bearer abc"), Err(SasError::NotSas));
        assert_eq!(
            SasToken::parse("SharedAccessSignature sig=abc&se=1"),
            Err(SasError::Missing("sr"))
        );
        let e = SasToken::parse("SharedAccessSignature sr=a&sig=SECRETSIG&se=soon").unwrap_err();
        assert_eq!(e, SasError::Malformed("se"));
        assert!(!e.to_string().contains("SECRETSIG"));
        let dbg = format!(
            "{:?}",
            SasToken::parse("SharedAccessSignature sr=a&sig=SECRETSIG&se=1").unwrap()
        );
        assert!(!dbg.contains("SECRETSIG"), "{dbg}");
    }
}
