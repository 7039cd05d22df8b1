//! Sizes and durations as people write them, in flags and in `cairn.yaml`.
//!
//! `4GiB`, `512MiB`, `64K`, `1000` (binary units, bytes without one);
//! `500ms`, `90s`, `15m`, `26h`, `2d` (a bare number is seconds). The
//! [`Size`] and [`Span`] types parse the same text from a flag (`FromStr`)
//! and from YAML (a string or a number), so a setting means the same both
//! ways; [`human_bytes`] shows a size the way summaries do.

use std::time::Duration;

/// Parses a size: `4GiB`, `512MiB`, `64K`, `1000`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{value:?} is not a size (e.g. 4GiB, 512MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("unknown size unit in {value:?} (use KiB, MiB, GiB or TiB)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{value:?} is too large"))
}

/// Parses a duration: `500ms`, `90s`, `15m`, `26h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 90m, 26h or 2d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// A size in bytes, from `64MiB` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        parse_size(s).map(Size)
    }
}

/// A setting written as text (`100MiB`, `90m`) or as a bare number.
fn text_or_number<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    number: impl FnOnce(u64) -> T,
    text: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Number(n) => Ok(number(n)),
        Raw::Text(t) => text(&t).map_err(serde::de::Error::custom),
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        text_or_number(d, Size, |t| parse_size(t).map(Size))
    }
}

/// A duration, from `90m` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        parse_duration(s).map(Span)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        text_or_number(d, |n| Span(Duration::from_secs(n)), |t| parse_duration(t).map(Span))
    }
}

/// A size for people: `512 B`, `1.5 KiB`, `8.1 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_the_same_from_flags_and_yaml() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("90m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5w").is_err());
        assert_eq!(serde_json::from_str::<Size>("\"100MiB\"").unwrap(), Size(100 << 20));
        assert_eq!(serde_json::from_str::<Size>("4096").unwrap(), Size(4096));
        assert_eq!(serde_json::from_str::<Span>("\"2d\"").unwrap(), Span(Duration::from_secs(172_800)));
        assert!(serde_json::from_str::<Size>("\"lots\"").is_err());
        assert_eq!("1MiB".parse::<Size>().unwrap(), Size(1 << 20));
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8_510_625), "8.1 MiB");
    }
}
