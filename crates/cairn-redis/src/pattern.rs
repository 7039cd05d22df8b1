//! Redis's glob-style key patterns (`SCAN MATCH`, `KEYS`), matched the way
//! the server matches them, so `--match` selects in a snapshot the keys
//! the same pattern selects on a server: `*` any run of bytes, `?` one
//! byte, `[abc]`, `[^abc]`, `[a-z]` one byte of (or not of) a set, `\x`
//! the byte `x` itself. Matching is on bytes and case-sensitive.

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the
    // key position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, k));
                    continue;
                }
                _ if k < key.len() => {
                    if let Some(next) = one(pattern, p, key[k]) {
                        p = next;
                        k += 1;
                        continue;
                    }
                }
                _ => {}
            }
        } else if k == key.len() {
            return true;
        }
        // A mismatch: let the last `*` swallow one more byte.
        match star {
            Some((sp, sk)) if sk < key.len() => {
                star = Some((sp, sk + 1));
                p = sp;
                k = sk + 1;
            }
            _ => return false,
        }
    }
}

/// Matches one key byte against the element of `pattern` at `p` (not a
/// `*`): the position after the element, or `None` on a mismatch.
fn one(pattern: &[u8], p: usize, byte: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut hit = false;
            // An unclosed `[` runs to the end of the pattern, as in Redis.
            while i < pattern.len() && pattern[i] != b']' {
                if pattern[i] == b'\\' && i + 1 < pattern.len() {
                    hit |= pattern[i + 1] == byte;
                    i += 2;
                } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
                    let (a, b) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
                    hit |= (a..=b).contains(&byte);
                    i += 3;
                } else {
                    hit |= pattern[i] == byte;
                    i += 1;
                }
            }
            (hit != negate).then_some((i + 1).min(pattern.len()))
        }
        c => (c == byte).then_some(p + 1),
    }
}

/// Whether `key` matches any of `patterns` (no patterns: every key does).
pub fn any(patterns: &[Vec<u8>], key: &[u8]) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| matches(p, key))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_as_redis_matches_them() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("user:*", "user:1"),
            ("user:*", "user:"),
            ("*:name", "user:42:name"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abbbc"),
            ("[\\]]", "]"),
            ("**x", "x"),
        ];
        for (p, k) in yes {
            assert!(matches(p.as_bytes(), k.as_bytes()), "{p:?} should match {k:?}");
        }
        let no = [
            ("user:*", "users"),
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "aXb"),
            ("a*b*c", "aXXbYY"),
            ("abc", "abcd"),
            ("", "x"),
            ("User:*", "user:1"),
        ];
        for (p, k) in no {
            assert!(!matches(p.as_bytes(), k.as_bytes()), "{p:?} should not match {k:?}");
        }
    }
}
