//! Keeping credentials out of everything cairn shows.
//!
//! Repository locations, PostgreSQL URLs and libpq connection strings can
//! carry secrets, and they end up in error messages, log lines and `--json`
//! results. Whatever shows one goes through this module: a [`DisplaySafe`]
//! holds such a string and shows itself with the secrets masked (errors hold
//! their locations as `DisplaySafe`, so they cannot print them raw), and
//! [`redact`] masks them in free-form text (a client tool's error output, a
//! message quoting a URL). Masked as [`MASK`] are:
//!
//! * the password of a URL's userinfo (`postgresql://user:***@host/db`). The
//!   userinfo ends at the *last* `@` before the host, so a raw `@` inside a
//!   password (`u:p@ss@host`) cannot push its tail into what is shown as the
//!   host. A user name alone (`postgresql://backup@db`) is kept.
//! * the value of every parameter whose name says it is a secret, both as a
//!   URL query parameter (`?password=***&sslmode=require`) and as a libpq
//!   keyword (`host=db password=*** user=u`, quoted values included): names
//!   containing `password`, `passwd`, `passphrase`, `secret`, `token`,
//!   `signature` or `apikey`/`api_key`, and `pass`, `pwd`, `pw`. That covers
//!   `sslpassword`, `aws_secret_access_key`, `aws_session_token`, S3's
//!   `X-Amz-Security-Token` and `X-Amz-Signature`.
//!
//! Everything else is kept, so a message still says which host, bucket or
//! database was meant.

use std::fmt;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// A location, URL or connection string that shows itself (`Display` and
/// `Debug`) with its credentials masked. [`DisplaySafe::expose`] gives the
/// text itself, for connecting.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct DisplaySafe(String);

impl DisplaySafe {
    pub fn new(text: impl Into<String>) -> DisplaySafe {
        DisplaySafe(text.into())
    }

    /// The text with its secrets, for use, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplaySafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.0, Scope::One))
    }
}

impl fmt::Debug for DisplaySafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&mask(&self.0, Scope::One), f)
    }
}

impl From<String> for DisplaySafe {
    fn from(text: String) -> DisplaySafe {
        DisplaySafe(text)
    }
}

impl From<&str> for DisplaySafe {
    fn from(text: &str) -> DisplaySafe {
        DisplaySafe(text.to_string())
    }
}

/// `text` with the credentials of every URL and connection string in it
/// masked (see the module docs). For free-form text: a URL ends at
/// whitespace or a quote.
pub fn redact(text: &str) -> String {
    mask(text, Scope::Text)
}

/// How much of the input one URL may take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The whole input is one location (a password may hold spaces).
    One,
    /// Free-form text: URLs end at whitespace and quotes.
    Text,
}

impl Scope {
    fn ends_token(self, c: char) -> bool {
        self == Scope::Text && (c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
    }
}

fn mask(text: &str, scope: Scope) -> String {
    let opaque = match scope {
        Scope::One => mask_opaque_userinfo(text),
        Scope::Text => None,
    };
    let text = opaque.as_deref().unwrap_or(text);
    mask_parameters(&mask_userinfo(text, scope), scope)
}

/// `scheme:user:password@host/…` (no `//`, as in `s3:HOST/BUCKET`) →
/// `scheme:user:***@host/…`, for a whole location only: in free text a
/// `word:` is just a word.
fn mask_opaque_userinfo(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once(':')?;
    if scheme.is_empty() || !scheme.chars().all(is_scheme_char) || rest.starts_with("//") {
        return None;
    }
    let host_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    let (user, _password) = rest[..at].split_once(':')?;
    Some(format!("{scheme}:{user}:{MASK}{}", &rest[at..]))
}

/// `scheme://user:password@host` → `scheme://user:***@host`, also where the
/// URL is percent-encoded inside another (`?endpoint=http%3A%2F%2Fu%3Ap%40h`).
fn mask_userinfo(text: &str, scope: Scope) -> String {
    const SEPARATOR: [&str; 2] = ["://", "%3a%2f%2f"];
    const AT: [&str; 2] = ["@", "%40"];
    const COLON: [&str; 2] = [":", "%3a"];
    // Lower-cased for the %-escapes; ASCII case changes keep byte offsets.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some((i, len)) = find(&lower[pos..], &SEPARATOR, false) {
        let start = pos + i + len;
        out.push_str(&text[pos..start]);
        pos = start;
        // The authority runs to the end of this URL: up to the next URL
        // (an endpoint inside a query string) or the end of the token. Its
        // last `@` ends the userinfo, however many the password holds.
        let after = &lower[start..];
        let end = find(after, &SEPARATOR, false)
            .map(|(n, _)| run_start(&after[..n], is_scheme_char))
            .unwrap_or(after.len());
        let end = after[..end].find(|c| scope.ends_token(c)).unwrap_or(end);
        let Some((at, _)) = find(&after[..end], &AT, true) else { continue };
        match find(&after[..at], &COLON, false) {
            Some((colon, colon_len)) => {
                out.push_str(&text[start..start + colon + colon_len]);
                out.push_str(MASK);
            }
            None => out.push_str(&text[start..start + at]),
        }
        pos = start + at;
    }
    out.push_str(&text[pos..]);
    out
}

/// The first (or, with `last`, the last) place one of `patterns` occurs in
/// `hay`: its offset and length.
fn find(hay: &str, patterns: &[&str], last: bool) -> Option<(usize, usize)> {
    let found =
        patterns.iter().filter_map(|p| if last { hay.rfind(p) } else { hay.find(p) }.map(|i| (i, p.len())));
    if last { found.max_by_key(|&(i, _)| i) } else { found.min_by_key(|&(i, _)| i) }
}

/// Where the run of `part` characters that ends `text` starts.
fn run_start(text: &str, part: fn(char) -> bool) -> usize {
    text.char_indices().rev().find(|&(_, c)| !part(c)).map_or(0, |(i, c)| i + c.len_utf8())
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Whether a parameter of this name holds a secret.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    matches!(name.as_str(), "pass" | "pwd" | "pw")
        || ["password", "passwd", "passphrase", "secret", "token", "signature", "apikey", "api_key"]
            .iter()
            .any(|s| name.contains(s))
}

/// `password=x`, `?sslpassword=x&…`, `password = 'x y'` → the value masked.
fn mask_parameters(text: &str, scope: Scope) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find('=') {
        let eq = search + found;
        search = eq + 1;
        // The name before `=` (libpq allows spaces around it).
        let name_end = text[..eq].trim_end_matches(' ').len();
        let name_start = run_start(&text[..name_end], is_name_char);
        let name = &text[name_start..name_end];
        if name.is_empty() || !is_secret_name(name) || name_start < copied {
            continue;
        }
        let in_query = matches!(text[..name_start].chars().next_back(), Some('?' | '&' | ';'));
        let after = &text[eq + 1..];
        let spaces = if in_query { 0 } else { after.len() - after.trim_start_matches(' ').len() };
        let value_start = eq + 1 + spaces;
        let value_end = value_start + value_len(&text[value_start..], in_query, scope);
        if value_end == value_start {
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        search = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// How far a parameter's value runs: a quoted value to its closing quote
/// (backslash escapes, as libpq reads them); a query parameter to the next
/// `&NAME=` (a raw `&` inside the value stays masked) or `#`; a keyword
/// value to the next whitespace. In free-form text, whitespace and quotes
/// end any value.
fn value_len(value: &str, in_query: bool, scope: Scope) -> usize {
    let mut chars = value.char_indices().peekable();
    if let Some(&(_, quote @ ('\'' | '"'))) = chars.peek() {
        chars.next();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                c if c == quote => return i + 1,
                _ => {}
            }
        }
        return value.len();
    }
    for (i, c) in value.char_indices() {
        let ends = if in_query {
            c == '#' || (c == '&' && starts_parameter(&value[i + 1..])) || scope.ends_token(c)
        } else {
            c.is_whitespace() || scope.ends_token(c)
        };
        if ends {
            return i;
        }
    }
    value.len()
}

/// Whether `text` begins with `NAME=`.
fn starts_parameter(text: &str) -> bool {
    let name = text.len() - text.trim_start_matches(is_name_char).len();
    name > 0 && text[name..].starts_with('=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> String {
        DisplaySafe::new(text).to_string()
    }

    #[test]
    fn userinfo_passwords_are_masked_and_the_rest_kept() {
        for (given, shown) in [
            ("postgresql://alice:hunter2@db.example:5432/app", "postgresql://alice:***@db.example:5432/app"),
            ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
            (
                "postgresql://u:p@ss:w@rd@host/db?sslmode=require",
                "postgresql://u:***@host/db?sslmode=require",
            ),
            ("postgresql://u:p/x?y@host/db", "postgresql://u:***@host/db"),
            ("postgresql://u:with space@host/db", "postgresql://u:***@host/db"),
            ("postgresql://:secret@host", "postgresql://:***@host"),
            ("postgresql://backup@db.internal:5432", "postgresql://backup@db.internal:5432"),
            ("rest:https://user:secret@host:8000/repo/", "rest:https://user:***@host:8000/repo/"),
            ("s3:https://AKIA:secret@host/bucket", "s3:https://AKIA:***@host/bucket"),
            ("s3:AKIA:secret@host.example/bucket", "s3:AKIA:***@host.example/bucket"),
            ("sftp:user@host:/srv/repo", "sftp:user@host:/srv/repo"),
            (
                "s3://bucket/p?endpoint=http://u:secret@127.0.0.1:9000&region=x",
                "s3://bucket/p?endpoint=http://u:***@127.0.0.1:9000&region=x",
            ),
            (
                "s3://b?endpoint=http%3A%2F%2Fu%3Asecret%40h%3A9000&region=x",
                "s3://b?endpoint=http%3A%2F%2Fu%3A***%40h%3A9000&region=x",
            ),
            ("/srv/backups/cairn", "/srv/backups/cairn"),
            ("s3://bucket/prefix?region=eu-west-1", "s3://bucket/prefix?region=eu-west-1"),
        ] {
            assert_eq!(one(given), shown, "{given}");
        }
    }

    #[test]
    fn secret_parameters_are_masked_in_urls_and_keyword_strings() {
        for (given, shown) in [
            (
                "postgresql://u@h/db?password=hunter2&sslmode=require",
                "postgresql://u@h/db?password=***&sslmode=require",
            ),
            (
                "postgresql://h/db?sslmode=require&password=p&ss&port=5",
                "postgresql://h/db?sslmode=require&password=***&port=5",
            ),
            ("postgresql://h/db?sslpassword=hunter2", "postgresql://h/db?sslpassword=***"),
            ("host=h password=hunter2 port=5432", "host=h password=*** port=5432"),
            ("host=h password = 'two words' user=u", "host=h password = *** user=u"),
            (r"host=h password='it\'s' user=u", "host=h password=*** user=u"),
            ("host=h sslpassword=x dbname=d", "host=h sslpassword=*** dbname=d"),
            ("s3://b?aws_secret_access_key=wJalr&region=r", "s3://b?aws_secret_access_key=***&region=r"),
            (
                "s3://b?X-Amz-Security-Token=FwoG&X-Amz-Signature=abc",
                "s3://b?X-Amz-Security-Token=***&X-Amz-Signature=***",
            ),
            ("s3://b?pw=x", "s3://b?pw=***"),
            ("host=h dbname=password", "host=h dbname=password"),
            ("s3://b?sse_kms_key_id=arn:aws:kms:k&region=r", "s3://b?sse_kms_key_id=arn:aws:kms:k&region=r"),
            ("password=", "password="),
        ] {
            assert_eq!(one(given), shown, "{given}");
        }
    }

    #[test]
    fn free_form_text_is_redacted_url_by_url() {
        let text = r#"pg_dump: error: connection to "host=h password=hunter2 dbname=d" failed; see postgresql://u:hunter2@h/db and "rest:https://a:b@c/" then done"#;
        let shown = redact(text);
        assert!(!shown.contains("hunter2") && !shown.contains("a:b@"), "{shown}");
        assert!(shown.contains("postgresql://u:***@h/db and"), "{shown}");
        assert!(shown.contains("dbname=d") && shown.ends_with("then done"), "{shown}");
        assert_eq!(redact("nothing secret here: a=b"), "nothing secret here: a=b");
        // Any text, any characters.
        assert_eq!(redact("é://u:p@h ü password=x ä=1"), "é://u:***@h ü password=*** ä=1");
        assert_eq!(one("€password=x€://a:b@c"), "€password=***");
    }

    /// Every short string over the characters the scanners care about:
    /// no slicing mistake (a panic, in a message about to be shown) hides.
    #[test]
    fn any_text_is_handled() {
        let alphabet: Vec<char> = "@:/?&=%'\"\\ é3apw".chars().collect();
        let mut text = String::new();
        for n in 0..alphabet.len().pow(4) {
            text.clear();
            let mut k = n;
            for _ in 0..4 {
                text.push(alphabet[k % alphabet.len()]);
                k /= alphabet.len();
            }
            for candidate in [text.clone(), format!("postgresql://{text}"), format!("password={text}")] {
                let _ = (redact(&candidate), one(&candidate));
            }
        }
    }

    #[test]
    fn debug_output_is_masked_too() {
        let safe = DisplaySafe::new("postgresql://u:hunter2@h/db");
        assert_eq!(format!("{safe:?}"), "\"postgresql://u:***@h/db\"");
        assert_eq!(safe.expose(), "postgresql://u:hunter2@h/db");
    }
}
