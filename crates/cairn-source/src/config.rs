//! Settings from `cairn.yaml`: `${NAME}` replaced inside scalar values
//! after the YAML has been parsed, for the file's own keys and for every
//! adapter's settings alike ([`from_value`] deserializes an adapter's keys
//! into its settings type, so the types that decide how `${X}` is read are
//! the adapter's).
//!
//! Replacing the text before parsing let a value rewrite the document: a
//! password holding a newline, `: `, `#`, a quote or `]` could add keys, end
//! a list or cut a line short. Here the parser reads the file as written, and
//! each scalar value is interpolated as it is handed to the config's fields
//! ([`from_str`] wraps serde_yaml's deserializer), so the result is always
//! that one scalar: never a mapping, a sequence or another key. Where the
//! config expects a number or `true`/`false` (`jobs:`, `globals:`), the
//! interpolated text is read as one, so `jobs: ${JOBS}` works; everywhere
//! else it stays text, so a password of digits stays the password. Mapping
//! keys are not interpolated. An error never shows an interpolated value,
//! only the `${NAME}` the file holds.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};

/// What can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: environment variable {name} is not set (referenced as ${{{name}}})")]
    MissingEnv { path: PathBuf, name: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: no source named {name:?} (known: {known})")]
    UnknownSource { path: PathBuf, name: String, known: String },
    #[error("cannot read secret file {path}: {source}")]
    Secret { path: PathBuf, source: std::io::Error },
}

/// Replaces `${NAME}` in one value with the environment's `NAME` (`$${`
/// writes a literal `${`); an unset variable is an error, never an empty
/// string.
pub fn interpolate(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t.find('}').ok_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("unterminated ${{ in {text:?}"),
            })?;
            let name = &t[..end];
            let value = env(name)
                .ok_or_else(|| ConfigError::MissingEnv { path: path.to_path_buf(), name: name.into() })?;
            out.push_str(&value);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Deserializes `T` from YAML `text`, interpolating scalar values.
pub fn from_str<T: de::DeserializeOwned>(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let subst = Subst { env, path, failed: RefCell::new(None) };
    let parsed =
        T::deserialize(Interpolating { de: serde_yaml::Deserializer::from_str(text), subst: &subst });
    // A failed interpolation is reported as itself, not as the YAML error
    // it was smuggled through.
    match (parsed, subst.failed.into_inner()) {
        (_, Some(e)) => Err(e),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => {
            let mut message = e.to_string();
            // A plain `${` cannot stand in a flow collection (`[..]`, `{..}`),
            // where YAML reserves the braces.
            if message.contains("while parsing a flow") && text.contains("${") {
                message.push_str("; inside [...] or {...}, quote a variable: [\"${NAME}\"]");
            }
            Err(ConfigError::Parse { path: path.into(), message })
        }
    }
}

/// Deserializes `T` from an already parsed YAML value (a part of the file),
/// interpolating scalar values.
pub fn from_value<T: de::DeserializeOwned>(
    value: serde_yaml::Value,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let subst = Subst { env, path, failed: RefCell::new(None) };
    let parsed = T::deserialize(Interpolating { de: value, subst: &subst });
    match (parsed, subst.failed.into_inner()) {
        (_, Some(e)) => Err(e),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(ConfigError::Parse { path: path.into(), message: e.to_string() }),
    }
}

struct Subst<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    path: &'a Path,
    failed: RefCell<Option<ConfigError>>,
}

impl Subst<'_> {
    /// `raw` interpolated, or `None` when it holds nothing to replace.
    fn apply<E: de::Error>(&self, raw: &str) -> Result<Option<String>, E> {
        if !raw.contains('$') {
            return Ok(None);
        }
        match interpolate(raw, self.path, self.env) {
            Ok(text) => Ok(Some(text)),
            Err(e) => {
                let message = e.to_string();
                *self.failed.borrow_mut() = Some(e);
                Err(E::custom(message))
            }
        }
    }
}

/// What the field being deserialized asked for.
#[derive(Clone, Copy)]
enum Want {
    Text,
    Bool,
    Int,
    Float,
}

/// serde_yaml's deserializer, interpolating the scalars it hands out.
struct Interpolating<'s, D> {
    de: D,
    subst: &'s Subst<'s>,
}

impl<'s, D> Interpolating<'s, D> {
    fn wrap<V>(&self, inner: V, want: Want) -> Wrapped<'s, V> {
        Wrapped { inner, subst: self.subst, want }
    }
}

/// Numbers and booleans are asked of serde_yaml as "anything", so that a
/// `${NAME}` (a string to YAML) reaches [`Wrapped`] to be read as one.
macro_rules! typed_scalars {
    ($($method:ident => $want:expr),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor, $want);
            self.de.deserialize_any(visitor)
        }
    )*};
}

macro_rules! forwarded {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor, Want::Text);
            self.de.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Interpolating<'_, D> {
    type Error = D::Error;

    typed_scalars! {
        deserialize_bool => Want::Bool,
        deserialize_i8 => Want::Int, deserialize_i16 => Want::Int, deserialize_i32 => Want::Int,
        deserialize_i64 => Want::Int, deserialize_i128 => Want::Int,
        deserialize_u8 => Want::Int, deserialize_u16 => Want::Int, deserialize_u32 => Want::Int,
        deserialize_u64 => Want::Int, deserialize_u128 => Want::Int,
        deserialize_f32 => Want::Float, deserialize_f64 => Want::Float,
    }

    forwarded! {
        deserialize_any, deserialize_char, deserialize_str, deserialize_string, deserialize_bytes,
        deserialize_byte_buf, deserialize_option, deserialize_unit, deserialize_seq, deserialize_map,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, Want::Text);
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, Want::Text);
        self.de.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, Want::Text);
        self.de.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, Want::Text);
        self.de.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, Want::Text);
        self.de.deserialize_struct(name, fields, visitor)
    }

    // Enum variants and their payloads are taken as written: the config has
    // no enums, and a variant name is not a value.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_identifier(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_ignored_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A field's visitor, given interpolated strings (typed where it wants a
/// number or boolean) and interpolating deserializers for what it nests.
struct Wrapped<'s, V> {
    inner: V,
    subst: &'s Subst<'s>,
    want: Want,
}

impl<'de, V: Visitor<'de>> Wrapped<'_, V> {
    /// Hands the interpolated text of `raw` to the field.
    fn interpolated<E: de::Error>(self, raw: &str, text: String) -> Result<V::Value, E> {
        // The file's own text in the error, never the value.
        let refuse = |inner: V| Err(E::invalid_value(Unexpected::Str(raw), &inner));
        match self.want {
            Want::Text => self.inner.visit_string(text),
            Want::Bool => match text.as_str() {
                "true" => self.inner.visit_bool(true),
                "false" => self.inner.visit_bool(false),
                _ => refuse(self.inner),
            },
            Want::Int => match (text.parse::<u64>(), text.parse::<i64>()) {
                (Ok(n), _) => self.inner.visit_u64(n),
                (_, Ok(n)) => self.inner.visit_i64(n),
                _ => refuse(self.inner),
            },
            Want::Float => match text.parse::<f64>() {
                Ok(x) => self.inner.visit_f64(x),
                Err(_) => refuse(self.inner),
            },
        }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrapped<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        match self.subst.apply(v)? {
            Some(text) => self.interpolated(v, text),
            None => self.inner.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        match self.subst.apply(v)? {
            Some(text) => self.interpolated(v, text),
            None => self.inner.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        match self.subst.apply(&v)? {
            Some(text) => self.interpolated(&v, text),
            None => self.inner.visit_string(v),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.inner.visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.inner.visit_i64(v)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<V::Value, E> {
        self.inner.visit_i128(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.inner.visit_u64(v)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<V::Value, E> {
        self.inner.visit_u128(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.inner.visit_f64(v)
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<V::Value, E> {
        self.inner.visit_char(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.inner.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.inner.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D2: Deserializer<'de>>(self, de: D2) -> Result<V::Value, D2::Error> {
        self.inner.visit_some(Interpolating { de, subst: self.subst })
    }

    fn visit_newtype_struct<D2: Deserializer<'de>>(self, de: D2) -> Result<V::Value, D2::Error> {
        self.inner.visit_newtype_struct(Interpolating { de, subst: self.subst })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Nested { access: seq, subst: self.subst })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Nested { access: map, subst: self.subst })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// A sequence's elements or a mapping's values, interpolated (keys are not).
struct Nested<'s, A> {
    access: A,
    subst: &'s Subst<'s>,
}

/// A seed whose deserializer interpolates.
struct Seed<'s, T> {
    seed: T,
    subst: &'s Subst<'s>,
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T::Value, D::Error> {
        self.seed.deserialize(Interpolating { de, subst: self.subst })
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Nested<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.access.next_element_seed(Seed { seed, subst: self.subst })
    }

    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Nested<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.access.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.access.next_value_seed(Seed { seed, subst: self.subst })
    }

    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

/// Reads a secret file (every password file: `--password-file`,
/// `--new-password-file`, `password_file:` of the config and of a source),
/// dropping one trailing newline (as `echo pw > file` leaves).
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Secret { path: path.into(), source })?;
    if let Ok(meta) = std::fs::metadata(path)
        && let Some(readers) = other_readers(meta.mode(), meta.uid())
    {
        warn_once(path, readers);
    }
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string())
}

/// Who besides its owner can read a file of this mode and owner, if anyone
/// should not. As libpq judges private keys: a group may read a file only
/// when root owns it, which is how Kubernetes shares a secret volume with a
/// pod's `fsGroup` (it adds group read to whatever `defaultMode` says).
fn other_readers(mode: u32, owner: u32) -> Option<&'static str> {
    match (mode & 0o040 != 0 && owner != 0, mode & 0o004 != 0) {
        (true, true) => Some("its group and everyone else"),
        (false, true) => Some("everyone"),
        (true, false) => Some("its group"),
        (false, false) => None,
    }
}

/// One warning per file per run, however often the file is read.
fn warn_once(path: &Path, readers: &str) {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if WARNED.lock().unwrap_or_else(|e| e.into_inner()).insert(key) {
        tracing::warn!(
            file = %path.display(),
            "password file {} can be read by {readers}; run `chmod 600 {}` (in Kubernetes, mount the secret \
             with defaultMode: 0400)",
            path.display(),
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    fn env(n: &str) -> Option<String> {
        let vars: BTreeMap<&str, &str> = [
            ("HOME", "/root"),
            ("JOBS", "4"),
            ("YES", "true"),
            ("DIGITS", "007"),
            ("NASTY", "pw\"\n: x\n- ]# {a: b}\nrepository: /evil"),
            ("WORD", "hunter2"),
        ]
        .into();
        vars.get(n).map(|v| v.to_string())
    }

    #[test]
    fn scalar_interpolation() {
        let p = Path::new("c.yaml");
        assert_eq!(interpolate("a: ${HOME}/x $${LIT} $5", p, env).unwrap(), "a: /root/x ${LIT} $5");
        assert!(matches!(interpolate("${NOPE}", p, env), Err(ConfigError::MissingEnv { .. })));
        assert!(interpolate("${HOME", p, env).is_err());
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        repository: Option<String>,
        #[serde(default)]
        jobs: Option<usize>,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        list: Vec<String>,
        #[serde(default)]
        nested: Vec<Doc>,
    }

    fn parse(text: &str) -> Result<Doc, ConfigError> {
        from_str(text, Path::new("c.yaml"), &env)
    }

    #[test]
    fn values_cannot_change_the_documents_structure() {
        let want = env("NASTY").unwrap();
        for text in [
            "password: ${NASTY}\n",
            "password: \"${NASTY}\"\n",
            "password: '${NASTY}'\n",
            "list: [\"${NASTY}\"]\n",
            "list:\n  - ${NASTY}\n",
            "nested:\n  - password: ${NASTY}\n",
            "password: |\n  ${NASTY}\n",
        ] {
            let doc = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let got = match (&doc.password, doc.list.first(), doc.nested.first()) {
                (Some(p), _, _) => p.trim_end_matches('\n').to_string(),
                (None, Some(v), _) => v.clone(),
                (None, None, Some(n)) => n.password.clone().unwrap(),
                _ => panic!("{text:?}: nothing parsed: {doc:?}"),
            };
            assert_eq!(got, want, "{text:?}");
            assert_eq!(doc.repository, None, "{text:?}: the value added a key");
        }
    }

    #[test]
    fn typed_fields_read_their_type_and_text_stays_text() {
        let doc =
            parse("jobs: ${JOBS}\nflag: ${YES}\npassword: ${DIGITS}\nlist:\n  - ${JOBS}\n  - a${HOME}\n")
                .unwrap();
        assert_eq!((doc.jobs, doc.flag, doc.password.as_deref()), (Some(4), true, Some("007")));
        assert_eq!(doc.list, ["4", "a/root"]);
        // Literals behave as before, and a literal `$${` is written as `${`.
        let doc = parse("jobs: 3\nflag: false\npassword: 123456\nrepository: $${X}\n").unwrap();
        assert_eq!((doc.jobs, doc.flag, doc.password.as_deref()), (Some(3), false, Some("123456")));
        assert_eq!(doc.repository.as_deref(), Some("${X}"));
    }

    #[test]
    fn errors_name_the_variable_never_its_value() {
        let e = parse("jobs: ${WORD}\n").unwrap_err().to_string();
        assert!(e.contains("${WORD}") && !e.contains("hunter2"), "{e}");
        let e = parse("nested:\n  - flag: ${WORD}\n").unwrap_err().to_string();
        assert!(e.contains("${WORD}") && !e.contains("hunter2") && e.contains("line 2"), "{e}");
        assert!(
            matches!(parse("password: ${NOPE}\n"), Err(ConfigError::MissingEnv { name, .. }) if name == "NOPE")
        );
        // Keys are not interpolated; comments are not read at all.
        assert!(parse("${WORD}: x\n").unwrap_err().to_string().contains("unknown field `${WORD}`"));
        assert_eq!(parse("# ${NOPE}\njobs: 1\n").unwrap().jobs, Some(1));
        let e = parse("list: [${JOBS}]\n").unwrap_err().to_string();
        assert!(e.contains(r#"quote a variable: ["${NAME}"]"#), "{e}");
    }

    #[test]
    fn secret_files_others_can_read_are_told_apart() {
        assert_eq!(other_readers(0o100600, 1000), None);
        assert_eq!(other_readers(0o100400, 0), None);
        assert_eq!(other_readers(0o100440, 0), None, "root-owned, shared with a group (fsGroup)");
        assert_eq!(other_readers(0o100640, 1000), Some("its group"));
        assert_eq!(other_readers(0o100644, 1000), Some("its group and everyone else"));
        assert_eq!(other_readers(0o100604, 0), Some("everyone"));
    }

    #[test]
    fn secret_files_lose_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret_file(&f).unwrap(), "s3cret");
    }
}
