//! Timestamps as field exports write them, to milliseconds since the Unix epoch (UTC).
//!
//! Accepted:
//! * RFC 3339 / ISO 8601 with any offset (`2023-09-21T22:16:00Z`, `…T22:16:00.6235064+02:00`,
//!   `…T22:16:00+0200`), `T` or a space between date and time, up to 9 fraction digits;
//! * the same without an offset (a *naive* time): read as UTC, since every IoT Hub record and
//!   `TimeGenerated` is UTC;
//! * the Log Analytics portal's CSV export, `M/D/YYYY, h:mm:ss.fff AM/PM` (the `[UTC]` in the column
//!   header says the zone).

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// Parse a timestamp; `None` when it is not one of the accepted forms.
pub fn parse(text: &str) -> Option<Millis> {
    let t = text.trim();
    if t.contains('/') {
        parse_portal(t)
    } else {
        parse_iso(t)
    }
}

/// Whether the text carries its own offset (`Z`, `+hh:mm`, `-hhmm`).
pub fn has_offset(text: &str) -> bool {
    let t = text.trim();
    if t.ends_with('Z') || t.ends_with('z') {
        return true;
    }
    // An offset sign after the time part (the date's own dashes come before the `T`/space).
    let Some(time_at) = t.find(['T', 't', ' ']) else {
        return false;
    };
    t[time_at..].contains(['+', '-'])
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1..=9999).contains(&y) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn to_millis(days: i64, h: i64, mi: i64, s: i64, ms: i64, offset_min: i64) -> Option<Millis> {
    if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..=60).contains(&s) {
        return None;
    }
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + mi * 60 + s)?
        .checked_sub(offset_min * 60)?;
    secs.checked_mul(1000)?.checked_add(ms)
}

/// The first `n` digits of a fraction as milliseconds (`6235064` → 623).
fn fraction_ms(frac: &str) -> Option<i64> {
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let three: String = frac.chars().chain("000".chars()).take(3).collect();
    three.parse().ok()
}

fn parse_iso(t: &str) -> Option<Millis> {
    let (date, rest) = t.split_at(t.find(['T', 't', ' '])?);
    let rest = &rest[1..];
    let mut dp = date.split('-');
    let (y, m, d) = (
        digits(dp.next()?)?,
        digits(dp.next()?)?,
        digits(dp.next()?)?,
    );
    if dp.next().is_some() {
        return None;
    }
    // Split the offset off the time.
    let (time, offset_min) = if let Some(stripped) = rest.strip_suffix(['Z', 'z']) {
        (stripped, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (time, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (oh, om) = match off.split_once(':') {
            Some((h, m)) => (digits(h)?, digits(m)?),
            None if off.len() == 4 => (digits(&off[..2])?, digits(&off[2..])?),
            None if off.len() == 2 => (digits(off)?, 0),
            None => return None,
        };
        if oh > 23 || om > 59 {
            return None;
        }
        (time, sign * (oh * 60 + om))
    } else {
        (rest, 0)
    };
    let (hms, frac) = match time.split_once(['.', ',']) {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let mut tp = hms.split(':');
    let h = digits(tp.next()?)?;
    let mi = digits(tp.next()?)?;
    let s = match tp.next() {
        Some(s) => digits(s)?,
        None => 0,
    };
    if tp.next().is_some() {
        return None;
    }
    let ms = match frac {
        Some(f) => fraction_ms(f)?,
        None => 0,
    };
    to_millis(days_from_civil(y, m, d)?, h, mi, s, ms, offset_min)
}

/// `9/21/2023, 10:16:00.000 PM` (month first, as the portal writes it).
fn parse_portal(t: &str) -> Option<Millis> {
    let (date, time) = t.split_once(',')?;
    let mut dp = date.trim().split('/');
    let (m, d, y) = (
        digits(dp.next()?)?,
        digits(dp.next()?)?,
        digits(dp.next()?)?,
    );
    if dp.next().is_some() {
        return None;
    }
    let time = time.trim();
    let (clock, half) = match time.rsplit_once(' ') {
        Some((c, h)) => (c.trim(), Some(h.trim().to_ascii_uppercase())),
        None => (time, None),
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (clock, None),
    };
    let mut tp = hms.split(':');
    let mut h = digits(tp.next()?)?;
    let mi = digits(tp.next()?)?;
    let s = match tp.next() {
        Some(s) => digits(s)?,
        None => 0,
    };
    match half.as_deref() {
        Some("AM") if (1..=12).contains(&h) => h %= 12,
        Some("PM") if (1..=12).contains(&h) => h = h % 12 + 12,
        None => {}
        _ => return None,
    }
    let ms = match frac {
        Some(f) => fraction_ms(f)?,
        None => 0,
    };
    to_millis(days_from_civil(y, m, d)?, h, mi, s, ms, 0)
}

/// RFC 3339 with milliseconds, UTC: `2023-09-21T22:16:00.000Z`.
pub fn format(ms: Millis) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The Log Analytics portal's CSV form (UTC): `9/21/2023, 10:16:00.000 PM`.
pub fn format_portal(ms: Millis) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let h = rem / 3_600_000;
    let (h12, half) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    format!(
        "{m}/{d}/{y}, {h12}:{:02}:{:02}.{:03} {half}",
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// A duration in milliseconds as `1h05m`, `29m27s`, `850ms`.
pub fn human(ms: i64) -> String {
    let neg = ms < 0;
    let ms = ms.unsigned_abs();
    // From a minute up, whole seconds (rounded).
    let ms = if ms >= 60_000 {
        (ms + 500) / 1000 * 1000
    } else {
        ms
    };
    let s = ms / 1000;
    let text = if s == 0 {
        format!("{ms}ms")
    } else if s < 60 {
        if ms % 1000 == 0 {
            format!("{s}s")
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        }
    } else if s < 7200 {
        if s % 60 == 0 {
            format!("{}m", s / 60)
        } else {
            format!("{}m{:02}s", s / 60, s % 60)
        }
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    };
    if neg {
        format!("-{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_forms_agree() {
        let z = parse("2023-09-21T22:16:00Z").unwrap();
        assert_eq!(parse("2023-09-21T22:16:00.0000000Z"), Some(z));
        assert_eq!(parse("2023-09-22T00:16:00+02:00"), Some(z));
        assert_eq!(parse("2023-09-21T17:16:00-0500"), Some(z));
        assert_eq!(parse("2023-09-21 22:16:00"), Some(z));
        assert_eq!(parse("2023-09-21T22:16:00.6235064Z"), Some(z + 623));
        assert_eq!(format(z), "2023-09-21T22:16:00.000Z");
        assert_eq!(z, 1_695_334_560_000);
    }

    #[test]
    fn portal_form() {
        let z = parse("2023-09-21T22:16:00.391Z").unwrap();
        assert_eq!(parse("9/21/2023, 10:16:00.391 PM"), Some(z));
        assert_eq!(format_portal(z), "9/21/2023, 10:16:00.391 PM");
        assert_eq!(
            parse("1/1/2024, 12:00:05.000 AM"),
            parse("2024-01-01T00:00:05Z")
        );
        assert_eq!(
            parse("1/1/2024, 12:00:05.000 PM"),
            parse("2024-01-01T12:00:05Z")
        );
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-02-30T00:00:00Z",
            "2023-09-21T25:00:00Z",
            "13/1/2024, 1:00:00 PM",
            "1/1/2024, 13:00:00 PM",
            "2023-09-21T22:16:00+99:00",
            "99999999999-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(has_offset("2023-09-21T22:16:00Z"));
        assert!(has_offset("2023-09-21T22:16:00-05:00"));
        assert!(!has_offset("2023-09-21 22:16:00"));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(65 * 60_000), "65m");
        assert_eq!(human(3 * 3_600_000 + 60_000), "3h01m");
        assert_eq!(human(1_767_000), "29m27s");
        assert_eq!(human(850), "850ms");
        assert_eq!(human(3_600_000), "60m");
    }
}
