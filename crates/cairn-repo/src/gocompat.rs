//! Go-compatible quoting of file names in tree documents.
//!
//! restic writes a node's name into its tree JSON as Go's `strconv.Quote(name)` with the surrounding
//! double quotes stripped, and reads it back with `strconv.Unquote("\"" + s + "\"")`. That is how a
//! Unix file name — arbitrary bytes, not necessarily UTF-8 — survives in a JSON string. Reading
//! restic's trees needs the exact inverse, and writing names exactly as restic spells them keeps tree
//! documents byte-compatible, so both directions follow Go's rules rather than Rust's `escape_debug`.
//!
//! One approximation: Go decides which characters stay literal with `strconv.IsPrint`, whose tables
//! follow the Unicode version Go was built with. [`quote_name`] uses a compact table instead (see
//! `is_print`) that agrees with Go on every assigned code point of Unicode 15.0 but keeps most
//! *unassigned* code points literal where Go would write `\u`/`\U` escapes. Round trips are exact
//! either way; only the spelling of names containing unassigned characters may differ from restic's.

use std::fmt;

/// A string that Go's `strconv.Unquote` would reject as the inside of a double-quoted literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnquoteError {
    /// The rejected text, without the surrounding quotes.
    pub input: String,
}

impl fmt::Display for UnquoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Go-quoted file name {:?}", self.input)
    }
}

impl std::error::Error for UnquoteError {}

/// Go's `strconv.Quote(string(name))` without the surrounding quotes.
///
/// `"` and `\` are backslash-escaped; printable characters (Go's `strconv.IsPrint`) stay literal;
/// `\a \b \f \n \r \t \v` use their short escapes; other control characters and each byte that is
/// not part of valid UTF-8 become `\xNN`; other non-printable characters become `\uNNNN` or
/// `\UNNNNNNNN`. Hex digits are lower case, as in Go.
pub fn quote_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        // Go decodes invalid UTF-8 one byte at a time and escapes each byte on its own. A maximal
        // invalid subsequence never contains the start of a valid character, so escaping every byte
        // of it gives the same result.
        for &b in chunk.invalid() {
            push_hex(&mut out, "\\x", b.into(), 2);
        }
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' | '\\' => {
            out.push('\\');
            out.push(c);
        }
        _ if is_print(c) => out.push(c),
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        '\0'..='\x1f' | '\x7f' => push_hex(out, "\\x", c.into(), 2),
        '\u{80}'..='\u{ffff}' => push_hex(out, "\\u", c.into(), 4),
        _ => push_hex(out, "\\U", c.into(), 8),
    }
}

fn push_hex(out: &mut String, prefix: &str, value: u32, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str(prefix);
    for shift in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (4 * shift)) & 0xf) as usize]));
    }
}

/// Code points above U+00FF that Go's `strconv.IsPrint` rejects, as sorted inclusive ranges.
///
/// Listed: every assigned code point of Unicode 15.0 in categories Zs, Zl, Zp, Cf and Co (Cc and Cs
/// cannot occur above U+00FF in a `char`), plus unassigned regions that are reserved or empty in
/// every Unicode version so far (U+FFF0–U+FFF8, planes 4–13, the gaps of plane 14). Noncharacters
/// are handled by rule in [`is_print`]. Everything else unassigned is treated as printable.
const NOT_PRINT: &[(u32, u32)] = &[
    (0x0600, 0x0605),    // Arabic number signs (Cf)
    (0x061c, 0x061c),    // Arabic letter mark
    (0x06dd, 0x06dd),    // Arabic end of ayah
    (0x070f, 0x070f),    // Syriac abbreviation mark
    (0x0890, 0x0891),    // Arabic pound / piastre mark above
    (0x08e2, 0x08e2),    // Arabic disputed end of ayah
    (0x1680, 0x1680),    // Ogham space mark (Zs)
    (0x180e, 0x180e),    // Mongolian vowel separator
    (0x2000, 0x200f),    // en quad .. hair space (Zs), zero-width space .. right-to-left mark (Cf)
    (0x2028, 0x202f),    // line/paragraph separators, bidi embeddings, narrow no-break space
    (0x205f, 0x206f),    // medium mathematical space, word joiner .. nominal digit shapes
    (0x3000, 0x3000),    // ideographic space
    (0xe000, 0xf8ff),    // private use
    (0xfeff, 0xfeff),    // byte order mark
    (0xfff0, 0xfffb),    // reserved, interlinear annotation controls
    (0x110bd, 0x110bd),  // Kaithi number sign
    (0x110cd, 0x110cd),  // Kaithi number sign above
    (0x13430, 0x1343f),  // Egyptian hieroglyph format controls
    (0x1bca0, 0x1bca3),  // shorthand format controls
    (0x1d173, 0x1d17a),  // musical symbol beam/tie/slur/phrase controls
    (0x40000, 0xe00ff),  // planes 4-13 (empty), tag characters and the gaps around them
    (0xe01f0, 0x10ffff), // past variation selectors supplement; private use planes 15-16
];

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and U+0020.
fn is_print(c: char) -> bool {
    let r = u32::from(c);
    if r <= 0xff {
        // Latin-1 is decided exactly, as Go's own fast path does: no controls, no U+00A0 no-break
        // space, no U+00AD soft hyphen.
        return matches!(r, 0x20..=0x7e | 0xa1..=0xff) && r != 0xad;
    }
    // Noncharacters: the last two code points of every plane and U+FDD0..U+FDEF.
    if r & 0xfffe == 0xfffe || (0xfdd0..=0xfdef).contains(&r) {
        return false;
    }
    let i = NOT_PRINT.partition_point(|&(_, hi)| hi < r);
    NOT_PRINT.get(i).is_none_or(|&(lo, _)| r < lo)
}

/// Inverse of [`quote_name`]: Go's `strconv.Unquote("\"" + s + "\"")`.
///
/// Accepts literal UTF-8 (any character except an unescaped `"` or newline), and the escapes
/// `\a \b \f \n \r \t \v \\ \"`, `\xNN` and three-digit octal `\NNN` (at most `\377`) for a raw byte,
/// and `\uNNNN` / `\UNNNNNNNN` for a Unicode scalar value written as UTF-8. Like Go, rejects `\'`,
/// surrogates, values above U+10FFFF and a trailing lone backslash.
pub fn unquote_name(s: &str) -> Result<Vec<u8>, UnquoteError> {
    let error = || UnquoteError { input: s.to_owned() };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            // Go rejects a raw newline, and an unescaped quote would end its literal early, leaving
            // trailing garbage.
            b'"' | b'\n' => return Err(error()),
            b'\\' => {
                let kind = *bytes.get(i).ok_or_else(error)?;
                i += 1;
                match kind {
                    b'a' => out.push(0x07),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(0x0b),
                    b'\\' | b'"' => out.push(kind),
                    b'x' => {
                        out.push(parse_digits(bytes, &mut i, 2, 16).ok_or_else(error)? as u8);
                    }
                    b'u' | b'U' => {
                        let digits = if kind == b'u' { 4 } else { 8 };
                        let value = parse_digits(bytes, &mut i, digits, 16).ok_or_else(error)?;
                        let c = char::from_u32(value).ok_or_else(error)?;
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    b'0'..=b'7' => {
                        i -= 1;
                        let value = parse_digits(bytes, &mut i, 3, 8).ok_or_else(error)?;
                        out.push(u8::try_from(value).map_err(|_| error())?);
                    }
                    _ => return Err(error()),
                }
            }
            // Multi-byte characters are copied byte by byte: `s` is valid UTF-8, so this is the
            // same as Go's decode-and-re-encode.
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// Reads exactly `count` digits in `radix` from `bytes[*i..]`, advancing `*i` past them.
fn parse_digits(bytes: &[u8], i: &mut usize, count: usize, radix: u32) -> Option<u32> {
    let digits = bytes.get(*i..*i + count)?;
    let mut value = 0u32;
    for &d in digits {
        value = value * radix + char::from(d).to_digit(radix)?;
    }
    *i += count;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(name: &[u8]) {
        let quoted = quote_name(name);
        assert_eq!(unquote_name(&quoted).as_deref(), Ok(name), "via {quoted:?}");
    }

    #[test]
    fn round_trips_representative_names() {
        let names: &[&[u8]] = &[
            b"",
            b"plain.txt",
            b"with space and 'single' quotes",
            b"a\"b",
            b"back\\slash\\",
            b"new\nline\r\n",
            b"tab\there",
            b"\x07\x08\x0c\x0b",
            b"caf\xe9",
            b"\xff\xfe\x80",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            "café".as_bytes(),
            "日本語のファイル名".as_bytes(),
            "emoji 😀🎉".as_bytes(),
            b"nul\x00byte",
            b"del\x7f",
            "nbsp\u{a0}".as_bytes(),
            "zwsp\u{200b}".as_bytes(),
            "private\u{e000}\u{10fffd}".as_bytes(),
            "nonchar\u{fffe}\u{1ffff}".as_bytes(),
            "\u{e0001}tag".as_bytes(),
        ];
        for name in names {
            round_trip(name);
        }
    }

    #[test]
    fn matches_known_go_output() {
        let cases: &[(&[u8], &str)] = &[
            (b"plain.txt", "plain.txt"),
            (b"a\"b", "a\\\"b"),
            (b"back\\slash", "back\\\\slash"),
            (b"tab\there", "tab\\there"),
            (b"\x07\x08\x0c\n\r\t\x0b", "\\a\\b\\f\\n\\r\\t\\v"),
            (b"\xff", "\\xff"),
            (b"\x01", "\\x01"),
            (b"\x00", "\\x00"),
            (b"\x7f", "\\x7f"),
            (b"\x1b[0m", "\\x1b[0m"),
            (b"caf\xe9", "caf\\xe9"),
            (b"\xe2\x82x", "\\xe2\\x82x"),
            (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),
            (b"it's", "it's"),
            ("café".as_bytes(), "café"),
            ("日本語".as_bytes(), "日本語"),
            ("😀".as_bytes(), "😀"),
            ("\u{fffd}".as_bytes(), "\u{fffd}"),
            ("\u{80}".as_bytes(), "\\u0080"),
            ("\u{85}".as_bytes(), "\\u0085"),
            ("\u{a0}".as_bytes(), "\\u00a0"),
            ("\u{ad}".as_bytes(), "\\u00ad"),
            ("\u{a1}".as_bytes(), "\u{a1}"),
            ("\u{200b}".as_bytes(), "\\u200b"),
            ("\u{200d}".as_bytes(), "\\u200d"),
            ("\u{2028}".as_bytes(), "\\u2028"),
            ("\u{3000}".as_bytes(), "\\u3000"),
            ("\u{feff}".as_bytes(), "\\ufeff"),
            ("\u{fffe}".as_bytes(), "\\ufffe"),
            ("\u{e000}".as_bytes(), "\\ue000"),
            ("\u{fe0f}".as_bytes(), "\u{fe0f}"),
            ("\u{e0001}".as_bytes(), "\\U000e0001"),
            ("\u{e0100}".as_bytes(), "\u{e0100}"),
            ("\u{10ffff}".as_bytes(), "\\U0010ffff"),
        ];
        for &(name, want) in cases {
            assert_eq!(quote_name(name), want, "quoting {name:?}");
            assert_eq!(unquote_name(want).as_deref(), Ok(name), "unquoting {want:?}");
        }
    }

    #[test]
    fn unquotes_every_escape_form() {
        let cases: &[(&str, &[u8])] = &[
            ("\\101", b"A"),
            ("\\x41", b"A"),
            ("\\x4a\\x4A", b"JJ"),
            ("\\377\\000", b"\xff\x00"),
            ("\\u00e9", "é".as_bytes()),
            ("\\U0001F600", "😀".as_bytes()),
            ("\\u0000", b"\x00"),
            ("\\\\\\\"", b"\\\""),
            ("'", b"'"),
            ("raw\ttab\rcr\x01", b"raw\ttab\rcr\x01"),
            ("é\\xe9", b"\xc3\xa9\xe9"),
        ];
        for &(quoted, want) in cases {
            assert_eq!(unquote_name(quoted).as_deref(), Ok(want), "unquoting {quoted:?}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "a\"b",
            "\"",
            "trailing\\",
            "new\nline",
            "\\'",
            "\\q",
            "\\x4",
            "\\x4g",
            "\\u12",
            "\\u123g",
            "\\ud800",
            "\\udfff",
            "\\U00110000",
            "\\Uffffffff",
            "\\400",
            "\\8",
            "\\12",
            "\\1a1",
            "\\é",
        ] {
            let err = unquote_name(bad).unwrap_err();
            assert_eq!(err, UnquoteError { input: bad.to_owned() });
        }
        assert!(unquote_name("a\"b").unwrap_err().to_string().contains("a\\\"b"));
    }

    #[test]
    fn is_print_table_is_sorted_and_disjoint() {
        for pair in NOT_PRINT.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:x?}");
        }
        for c in
            ['a', 'Z', '~', ' ', 'é', 'ß', 'Ω', 'ж', 'א', 'ع', 'ह', '中', 'ん', '한', '€', '😀', '\u{1f3f4}']
        {
            assert!(is_print(c), "{c:?}");
        }
        for c in ['\u{0}', '\u{9f}', '\u{a0}', '\u{2029}', '\u{206f}', '\u{f8ff}', '\u{fdd0}', '\u{f0000}'] {
            assert!(!is_print(c), "{c:?}");
        }
    }

    #[test]
    fn quoted_names_are_safe_json_and_single_line() {
        for b in 0..=255u8 {
            let quoted = quote_name(&[b, b'"', b'\n', b]);
            assert!(!quoted.contains('\n'));
            assert!(!quoted.chars().any(char::is_control), "{quoted:?}");
        }
    }

    /// xorshift64, so the property test needs no crates.
    struct TestRng(u64);

    impl TestRng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_byte_strings_round_trip() {
        let mut rng = TestRng(0x0123_4567_89ab_cdef);
        let alphabet: Vec<char> =
            "aZ09 .-_\"\\'\n\t\u{0}\u{7f}é日😀\u{a0}\u{200b}\u{e000}\u{fffe}".chars().collect();
        for _ in 0..20_000 {
            let len = (rng.next() % 24) as usize;
            let mut name = Vec::with_capacity(len * 4);
            for _ in 0..len {
                let r = rng.next();
                match r % 3 {
                    // Raw bytes hit invalid and truncated UTF-8 as well as ASCII.
                    0 => name.push((r >> 8) as u8),
                    // Any scalar value, most of them outside the hand-picked alphabet.
                    1 => {
                        let c = char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('\u{fffd}');
                        name.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    _ => {
                        let c = alphabet[(r >> 8) as usize % alphabet.len()];
                        name.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
            }
            round_trip(&name);
        }
    }
}
