//! cairn's own PostgreSQL connections and the client tools it runs over TLS,
//! against a private cluster that accepts TCP logins only over TLS
//! (`hostssl` in pg_hba.conf), with a throwaway CA made by `openssl`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_testkit::PgCluster;
use common::*;

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, and
/// an unrelated second CA.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let openssl = which("openssl").expect("openssl is not installed: run scripts/install-test-deps.sh");
    let out = Command::new(openssl).args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", describe(&out));
}

fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=cairn test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.pem"))
}

fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let ca = make_ca(dir, "ca");
    let other_ca = make_ca(dir, "other-ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Certs { ca, other_ca, server_cert: dir.join("server.pem"), server_key: dir.join("server.key") }
}

#[test]
fn backups_and_restores_run_over_verified_tls() {
    let env = Env::new();
    env.init();
    let certs = make_certs(&env.path("certs"));
    let pg = PgCluster::start(&env.path("pg/data"), "");
    pg.enable_tls(&certs.server_cert, &certs.server_key);
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 2000) i;",
    );
    let ca = certs.ca.to_str().unwrap();
    let tls_url = |db: &str, params: &str| format!("{}?{params}", pg.url(db));

    // Plain TCP is refused, so everything below that works went over TLS.
    let out = env.cairn(&["backup", "postgres", "--url", &tls_url("app", "sslmode=disable")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accepts only TLS connections") && err.contains("sslmode=require"), "{err}");

    // verify-full: the chain against our CA and the host name (127.0.0.1 is in the certificate).
    let verified = tls_url("app", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let backup = env.cairn_json(&["backup", "--json", "postgres", "--url", &verified]);
    assert_eq!(backup["rows"], 2000, "{backup}");
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();
    let copy = tls_url("copy", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let done = env.cairn_json(&["restore", &snapshot, "--to", &copy, "--verify", "--json"]);
    assert_eq!(done["rows"], 2000, "{done}");
    assert_eq!(done["verified_tables"], 1, "{done}");
    assert_eq!(pg.psql("copy", "SELECT count(*), sum(id) FROM items"), "2000|2001000");
    // A drill's check, over the same settings.
    let check = env.cairn_json(&["verify", &snapshot, "--against", &copy, "--json"]);
    assert_eq!(check["ok"], true, "{check}");

    // A CA that did not sign the server's certificate: refused, saying what to fix.
    let wrong = tls_url("app", &format!("sslmode=verify-full&sslrootcert={}", certs.other_ca.display()));
    let out = env.cairn(&["backup", "postgres", "--url", &wrong]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not verify against") && err.contains("sslrootcert"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    // verify-full with a host name the certificate does not list (reached
    // through hostaddr); verify-ca checks only the chain, so it connects.
    let other_name = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=app sslmode={mode} sslrootcert='{ca}'",
            pg.port
        )
    };
    let out = env.cairn(&["backup", "postgres", "--url", &other_name("verify-full")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not valid for the host name") && err.contains("sslmode=verify-ca"), "{err}");
    let out = env.cairn_json(&["backup", "--json", "postgres", "--url", &other_name("verify-ca")]);
    assert_eq!(out["rows"], 2000, "{out}");

    // A missing CA file.
    let missing = tls_url("app", "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
    let out = env.cairn(&["backup", "postgres", "--url", &missing]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read sslrootcert /nonexistent/ca.pem"), "{err}");

    // require: encrypted, not verified; the keyword form works the same.
    let out = env.cairn_json(&["backup", "--json", "postgres", "--url", &tls_url("app", "sslmode=require")]);
    assert_eq!(out["rows"], 2000, "{out}");
    let keywords = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app sslmode=verify-ca sslrootcert='{ca}'",
        pg.port
    );
    let out = env.cairn_json(&["backup", "--json", "postgres", "--url", &keywords]);
    assert_eq!(out["rows"], 2000, "{out}");
}

#[test]
fn require_fails_clearly_when_the_server_has_no_tls() {
    let env = Env::new();
    env.init();
    let pg = PgCluster::start(&env.path("pg/data"), "ssl = off");
    pg.psql("postgres", "CREATE DATABASE app");
    let url = format!("{}?sslmode=require", pg.url("app"));
    let out = env.cairn(&["backup", "postgres", "--url", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not accept TLS connections") && err.contains("sslmode=require"), "{err}");
    // prefer (libpq's default, and cairn's) falls back to plain TCP.
    let url = format!("{}?sslmode=prefer", pg.url("app"));
    env.cairn_ok(&["backup", "postgres", "--url", &url]);
}
