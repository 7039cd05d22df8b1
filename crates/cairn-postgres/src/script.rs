//! `pg_restore` scripts run inside cairn's own transaction.
//!
//! A restore into an existing database must leave it as it was if anything
//! fails: a damaged blob, a repository that goes away halfway, a killed
//! process. PostgreSQL's DDL is transactional, so cairn runs the whole
//! restore — drops, schema, rows, indexes, constraints, verification — in
//! one transaction on one connection and commits only at the end. The
//! schema comes from `pg_restore --single-transaction -f -`, which writes
//! the section as SQL instead of executing it; this module turns that text
//! into statements cairn can run itself:
//!
//! * the `BEGIN;` / `COMMIT;` pair `--single-transaction` wraps the script
//!   in is taken out (cairn's transaction is the one that counts; with
//!   `--single-transaction` pg_restore also leaves out the `BEGIN`/`COMMIT`
//!   it would otherwise put around large objects, which would commit cairn's
//!   transaction early);
//! * the `\restrict KEY` / `\unrestrict KEY` lines newer pg_restore versions
//!   write for psql are dropped (only those exact lines: the key is random,
//!   so no line of SQL text can be mistaken for them);
//! * in the data section, `COPY … FROM stdin;` blocks (tables whose rows
//!   pg_dump kept, such as extension configuration tables) become separate
//!   parts, loaded with `COPY FROM STDIN` on the same connection.
//!
//! Nothing else is interpreted. A psql meta-command other than the two
//! above would reach the server as SQL and fail there, which rolls the
//! whole restore back.

use std::fmt;

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScriptPart {
    /// Statements for the simple-query protocol.
    Sql(String),
    /// `COPY … FROM STDIN` (the statement without its `;`) and its rows.
    Copy { statement: String, rows: String },
}

/// Why a script cannot run inside cairn's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScriptError {
    NotUtf8,
    Encoding(String),
    Shape(&'static str),
    UnterminatedCopy(String),
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptError::NotUtf8 | ScriptError::Encoding(_) => {
                let which = match self {
                    ScriptError::Encoding(e) => format!(" (it is {e})"),
                    _ => String::new(),
                };
                write!(
                    f,
                    "the snapshot's schema is not UTF-8 encoded{which}, and cairn restores into an existing database only as UTF-8; restore into a new database name instead"
                )
            }
            ScriptError::Shape(what) => write!(f, "pg_restore wrote an unexpected script: {what}"),
            ScriptError::UnterminatedCopy(statement) => {
                write!(f, "pg_restore wrote an unterminated COPY block ({statement})")
            }
        }
    }
}

/// Splits the output of `pg_restore --single-transaction -f -` into the
/// parts to run; `copy_blocks` for the data section (the only one whose
/// script carries rows).
pub(crate) fn parse(script: &[u8], copy_blocks: bool) -> Result<Vec<ScriptPart>, ScriptError> {
    let text = std::str::from_utf8(script).map_err(|_| ScriptError::NotUtf8)?;
    let lines: Vec<&str> = text.split('\n').collect();
    let restrict_key =
        lines.iter().find_map(|l| l.strip_prefix("\\restrict ")).map(|k| k.trim_end_matches('\r'));
    let begin = lines.iter().position(|l| *l == "BEGIN;").ok_or(ScriptError::Shape("no BEGIN;"))?;
    let commit = lines.iter().rposition(|l| *l == "COMMIT;").ok_or(ScriptError::Shape("no COMMIT;"))?;
    if commit < begin {
        return Err(ScriptError::Shape("COMMIT; before BEGIN;"));
    }
    let is_restrict_line = |line: &str| {
        restrict_key.is_some_and(|key| {
            line.strip_prefix("\\restrict ") == Some(key) || line.strip_prefix("\\unrestrict ") == Some(key)
        })
    };

    let mut parts = Vec::new();
    let mut sql = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if i - 1 == begin || i - 1 == commit || is_restrict_line(line) {
            continue;
        }
        if let Some(encoding) = line.strip_prefix("SET client_encoding = '") {
            let encoding = encoding.trim_end_matches("';");
            if !encoding.eq_ignore_ascii_case("UTF8") {
                return Err(ScriptError::Encoding(encoding.to_string()));
            }
        }
        if copy_blocks && line.starts_with("COPY ") && line.ends_with(" FROM stdin;") {
            let end = lines[i..]
                .iter()
                .position(|l| *l == "\\.")
                .ok_or_else(|| ScriptError::UnterminatedCopy(line.to_string()))?;
            let mut rows = lines[i..i + end].join("\n");
            if end > 0 {
                rows.push('\n');
            }
            if !only_comments(&sql) {
                parts.push(ScriptPart::Sql(std::mem::take(&mut sql)));
            }
            sql.clear();
            parts.push(ScriptPart::Copy { statement: line.trim_end_matches(';').to_string(), rows });
            i += end + 1;
            continue;
        }
        sql.push_str(line);
        sql.push('\n');
    }
    if !only_comments(&sql) {
        parts.push(ScriptPart::Sql(sql));
    }
    Ok(parts)
}

/// Whether SQL text holds nothing but `--` comments and blank lines.
fn only_comments(sql: &str) -> bool {
    sql.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE_DATA: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict K3y\n\n\
        -- Dumped from database version 15.18\n\nBEGIN;\n\nSET client_encoding = 'UTF8';\n\
        SELECT pg_catalog.set_config('search_path', '', false);\nDROP TABLE IF EXISTS public.t;\n\
        CREATE TABLE public.t (\n    id integer NOT NULL\n);\n\
        COMMENT ON TABLE public.t IS 'a\n\\b line\nBEGIN;\nCOMMIT;\n\\restrict other';\n\n\
        COMMIT;\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict K3y\n\n";

    #[test]
    fn the_transaction_pair_and_the_psql_guard_lines_go_and_nothing_else() {
        let parts = parse(PRE_DATA.as_bytes(), false).unwrap();
        let [ScriptPart::Sql(sql)] = parts.as_slice() else { panic!("{parts:?}") };
        assert!(!sql.contains("\\restrict K3y") && !sql.contains("\\unrestrict"), "{sql}");
        // Lines inside the string literal stay, even those that look like the
        // removed ones.
        assert!(sql.contains("'a\n\\b line\nBEGIN;\nCOMMIT;\n\\restrict other';"), "{sql}");
        assert!(sql.contains("DROP TABLE IF EXISTS public.t;"), "{sql}");
        assert_eq!(sql.matches("BEGIN;").count(), 1, "only the literal's");
    }

    #[test]
    fn copy_blocks_of_the_data_section_become_their_own_parts() {
        let data = "BEGIN;\nSELECT pg_catalog.setval('public.s', 42, true);\n\n\
            COPY public.cfg (k, v) FROM stdin;\na\t1\nb\t\\\\.\n\\.\n\nCOPY public.empty (k) FROM stdin;\n\\.\n\
            SELECT pg_catalog.lo_open('16392', 131072);\nCOMMIT;\n";
        let parts = parse(data.as_bytes(), true).unwrap();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert!(matches!(&parts[0], ScriptPart::Sql(s) if s.contains("setval")));
        assert_eq!(
            parts[1],
            ScriptPart::Copy {
                statement: "COPY public.cfg (k, v) FROM stdin".into(),
                rows: "a\t1\nb\t\\\\.\n".into()
            }
        );
        assert_eq!(
            parts[2],
            ScriptPart::Copy { statement: "COPY public.empty (k) FROM stdin".into(), rows: "".into() }
        );
        assert!(matches!(&parts[3], ScriptPart::Sql(s) if s.contains("lo_open") && !s.contains("COMMIT")));
        // Outside the data section a COPY line is just text.
        let parts = parse(data.as_bytes(), false).unwrap();
        assert_eq!(parts.len(), 1);
    }

    #[test]
    fn scripts_that_cannot_run_inside_the_transaction_are_refused() {
        assert_eq!(parse(b"SELECT 1;\n", false), Err(ScriptError::Shape("no BEGIN;")));
        assert_eq!(parse(b"BEGIN;\nSELECT 1;\n", false), Err(ScriptError::Shape("no COMMIT;")));
        assert_eq!(parse(b"BEGIN;\n\xff\nCOMMIT;\n", false), Err(ScriptError::NotUtf8));
        assert_eq!(
            parse(b"BEGIN;\nSET client_encoding = 'LATIN1';\nCOMMIT;\n", false),
            Err(ScriptError::Encoding("LATIN1".into()))
        );
        assert!(matches!(
            parse(b"BEGIN;\nCOPY t FROM stdin;\nrow\nCOMMIT;\n", true),
            Err(ScriptError::UnterminatedCopy(_))
        ));
        // Nothing but the header: nothing to run.
        assert_eq!(parse(b"-- header\nBEGIN;\n\nCOMMIT;\n", false), Ok(vec![]));
    }
}
