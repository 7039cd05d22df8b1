//! cairn's own PostgreSQL connections and the client tools it runs over TLS,
//! against a private cluster that accepts TCP logins only over TLS
//! (`hostssl` in pg_hba.conf), with a throwaway CA made by `openssl`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_testkit::PgCluster;
use common::*;

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, a
/// client certificate it signed for the user `backup`, and an unrelated
/// second CA, which signed another certificate for `backup` with the same key.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca_client_cert: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let openssl = which("openssl").expect("openssl is not installed: run scripts/install-test-deps.sh");
    let out = Command::new(openssl).args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", describe(&out));
}

const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, pem, subject) =
        (format!("{name}.key"), format!("{name}.pem"), format!("/CN=cairn test {name}"));
    let mut args = vec!["req", "-x509"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    dir.join(pem)
}

/// A new key `NAME.key` and a signing request `NAME.csr` for this CN.
fn make_request(dir: &Path, name: &str, cn: &str) {
    let (key, csr, subject) = (format!("{name}.key"), format!("{name}.csr"), format!("/CN={cn}"));
    let mut args = vec!["req"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(dir, &args);
}

/// Signs `request.csr` with the CA `ca` (made by [`make_ca`]) into `out`,
/// with the X.509 extensions in `extensions`.
fn sign(dir: &Path, request: &str, ca: &str, extensions: &str, out: &str) -> PathBuf {
    let ext_file = format!("{out}.ext");
    std::fs::write(dir.join(&ext_file), extensions).unwrap();
    let (csr, ca_pem, ca_key) = (format!("{request}.csr"), format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            out,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    );
    dir.join(out)
}

fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let ca = make_ca(dir, "ca");
    let other_ca = make_ca(dir, "other-ca");
    make_request(dir, "server", "localhost");
    let server_cert = sign(
        dir,
        "server",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        "server.pem",
    );
    // `cert` authentication takes the user name from the CN.
    make_request(dir, "backup", "backup");
    let client_ext =
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
    let client_cert = sign(dir, "backup", "ca", client_ext, "backup.pem");
    let other_ca_client_cert = sign(dir, "backup", "other-ca", client_ext, "backup-other-ca.pem");
    // libpq refuses a key file others can read; do not depend on openssl's
    // choice of mode.
    std::fs::set_permissions(dir.join("backup.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    Certs {
        ca,
        other_ca,
        server_cert,
        server_key: dir.join("server.key"),
        client_cert,
        client_key: dir.join("backup.key"),
        other_ca_client_cert,
    }
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
    assert_eq!(backup["objects"]["rows"], 2000, "{backup}");
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();
    let copy = tls_url("copy", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let done = env.cairn_json(&["restore", &snapshot, "--to", &copy, "--verify", "--json"]);
    assert_eq!(done["objects"]["rows"], 2000, "{done}");
    assert_eq!(done["objects"]["verified_tables"], 1, "{done}");
    assert_eq!(pg.psql("copy", "SELECT count(*), sum(id) FROM items"), "2000|2001000");
    // A drill's check, over the same settings.
    let check = env.cairn_json(&["verify", &snapshot, "--against", &copy, "--json"]);
    assert_eq!(check["exit_code"], 0, "{check}");

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
    assert_eq!(out["objects"]["rows"], 2000, "{out}");

    // A missing CA file.
    let missing = tls_url("app", "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
    let out = env.cairn(&["backup", "postgres", "--url", &missing]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read sslrootcert /nonexistent/ca.pem"), "{err}");

    // require: encrypted, not verified; the keyword form works the same.
    let out = env.cairn_json(&["backup", "--json", "postgres", "--url", &tls_url("app", "sslmode=require")]);
    assert_eq!(out["objects"]["rows"], 2000, "{out}");
    let keywords = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app sslmode=verify-ca sslrootcert='{ca}'",
        pg.port
    );
    let out = env.cairn_json(&["backup", "--json", "postgres", "--url", &keywords]);
    assert_eq!(out["objects"]["rows"], 2000, "{out}");
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

/// A TLS-only cluster where the user `backup` (a superuser, allowed to
/// replicate) logs in over TCP only with a client certificate our CA signed
/// for it, holding the `items` table in the database `app`. The user
/// `intruder` needs a certificate too, and has none of its own.
fn client_cert_cluster(env: &Env) -> (Certs, PgCluster) {
    let certs = make_certs(&env.path("certs"));
    let pg = PgCluster::start(&env.path("pg/data"), "");
    pg.enable_tls(&certs.server_cert, &certs.server_key);
    pg.require_client_certs(&certs.ca, "backup,intruder");
    pg.psql("postgres", "CREATE ROLE backup LOGIN SUPERUSER REPLICATION");
    pg.psql("postgres", "CREATE ROLE intruder LOGIN");
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 2000) i;",
    );
    (certs, pg)
}

/// `postgresql://backup@127.0.0.1:PORT/DB` verifying the server fully, with
/// `extra` parameters appended.
fn backup_url(pg: &PgCluster, certs: &Certs, db: &str, extra: &str) -> String {
    format!(
        "postgresql://backup@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}{extra}",
        pg.port,
        certs.ca.display()
    )
}

fn client_cert_params(cert: &Path, key: &Path) -> String {
    format!("&sslcert={}&sslkey={}", cert.display(), key.display())
}

#[test]
fn client_certificates_authenticate_backups_and_restores() {
    let env = Env::new();
    env.init();
    let (certs, pg) = client_cert_cluster(&env);
    let with_cert = client_cert_params(&certs.client_cert, &certs.client_key);

    // pg_hba.conf lets `backup` in over TCP only with the certificate, so
    // each success below is a certificate login, by cairn and by the tools.
    let backup = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--url",
        &backup_url(&pg, &certs, "app", &with_cert),
    ]);
    assert_eq!(backup["objects"]["rows"], 2000, "{backup}");
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();
    let copy = backup_url(&pg, &certs, "copy", &with_cert);
    let done = env.cairn_json(&["restore", &snapshot, "--to", &copy, "--verify", "--json"]);
    assert_eq!(done["objects"]["rows"], 2000, "{done}");
    assert_eq!(done["objects"]["verified_tables"], 1, "{done}");
    assert_eq!(pg.psql("copy", "SELECT count(*), sum(id) FROM items"), "2000|2001000");
    assert_eq!(
        pg.psql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'copy'"),
        "backup"
    );
    let check = env.cairn_json(&["verify", &snapshot, "--against", &copy, "--json"]);
    assert_eq!(check["exit_code"], 0, "{check}");

    // The libpq environment instead of the URL; cairn hands the settings on
    // to pg_dump and pg_dumpall in their conninfo.
    let out = env
        .cairn_cmd()
        .env("PGSSLCERT", &certs.client_cert)
        .env("PGSSLKEY", &certs.client_key)
        .args(["backup", "--json", "postgres", "--url", &backup_url(&pg, &certs, "app", "")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let json: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(json["objects"]["rows"], 2000, "{json}");

    // pg_basebackup's replication connection, through its own pg_hba.conf line.
    let base = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--physical",
        "--url",
        &backup_url(&pg, &certs, "postgres", &with_cert),
    ]);
    assert_eq!(base["mode"], "physical", "{base}");
    assert!(base["objects"]["files"].as_u64().unwrap() > 100, "{base}");
}

#[test]
fn rejected_client_certificates_fail_in_one_clear_line() {
    let env = Env::new();
    env.init();
    let (certs, pg) = client_cert_cluster(&env);
    let fails = |params: &str| {
        let out = env.cairn(&["backup", "postgres", "--url", &backup_url(&pg, &certs, "app", params)]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        err
    };

    // No certificate: the server refuses the login, and cairn names the settings.
    let err = fails("");
    assert!(
        err.contains("requires a valid client certificate") && err.contains("sslcert and sslkey"),
        "{err}"
    );

    // Signed by a CA the server does not trust: refused in the handshake.
    let err = fails(&client_cert_params(&certs.other_ca_client_cert, &certs.client_key));
    let shown = format!("sslcert={}", certs.other_ca_client_cert.display());
    assert!(err.contains("rejected the client certificate") && err.contains(&shown), "{err}");
    assert!(err.contains("ssl_ca_file"), "{err}");

    // A good certificate, for another user: `cert` matches the CN to the user.
    let with_cert = client_cert_params(&certs.client_cert, &certs.client_key);
    let url = backup_url(&pg, &certs, "app", &with_cert).replace("backup@", "intruder@");
    let out = env.cairn(&["backup", "postgres", "--url", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate authentication failed") && err.contains("(CN)"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    // The key: missing, or another certificate's.
    let err = fails(&client_cert_params(&certs.client_cert, Path::new("/nonexistent/backup.key")));
    assert!(err.contains("cannot read the client key sslkey=/nonexistent/backup.key"), "{err}");
    let err = fails(&client_cert_params(&certs.client_cert, &certs.server_key));
    assert!(err.contains("is not the private key of the certificate in sslcert="), "{err}");

    // libpq refuses a key others can read, so cairn does so too, before it
    // starts: otherwise its own connections would work and the tools fail.
    let loose = env.path("certs/loose.key");
    std::fs::copy(&certs.client_key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&client_cert_params(&certs.client_cert, &loose));
    assert!(err.contains("open to other users (mode 0644)") && err.contains("chmod 600"), "{err}");
    let libpq = Command::new(pg.bin.join("psql"))
        .args(["-X", "-At", "-c", "SELECT 1"])
        .arg(backup_url(&pg, &certs, "app", &client_cert_params(&certs.client_cert, &loose)))
        .output()
        .unwrap();
    let libpq_err = String::from_utf8_lossy(&libpq.stderr);
    assert!(!libpq.status.success() && libpq_err.contains("group or world access"), "{}", describe(&libpq));
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--url",
        &backup_url(&pg, &certs, "app", &client_cert_params(&certs.client_cert, &loose)),
    ]);
    assert_eq!(out["objects"]["rows"], 2000, "{out}");
}

/// SCRAM logins over TLS bind to the TLS session (SCRAM-SHA-256-PLUS with
/// `tls-server-end-point`) on every connection a backup makes: cairn's own,
/// the copy tap's, the replication connection and the client tools'. With
/// `channel_binding=require` anything less is refused, as libpq does.
#[test]
fn scram_logins_bind_to_the_tls_session() {
    let env = Env::new();
    env.init();
    let certs = make_certs(&env.path("certs"));
    let pg = PgCluster::start(&env.path("pg/data"), "");
    pg.enable_tls(&certs.server_cert, &certs.server_key);
    pg.psql("postgres", "SET password_encryption = 'scram-sha-256'; CREATE ROLE bound LOGIN SUPERUSER REPLICATION PASSWORD 'bound-secret'");
    pg.psql("postgres", "SET password_encryption = 'md5'; CREATE ROLE unbound LOGIN SUPERUSER REPLICATION PASSWORD 'md5-secret'");
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE items AS SELECT generate_series(1, 1500) AS id");
    pg.prepend_hba(
        "hostssl all bound 127.0.0.1/32 scram-sha-256\nhostssl replication bound 127.0.0.1/32 scram-sha-256\n\
         hostssl all unbound 127.0.0.1/32 md5\nhostssl replication unbound 127.0.0.1/32 md5\n",
    );
    let url = |user: &str, password: &str, db: &str| {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}&channel_binding=require",
            pg.port,
            certs.ca.display()
        )
    };

    let logical =
        env.cairn_json(&["backup", "--json", "postgres", "--url", &url("bound", "bound-secret", "app")]);
    assert_eq!(logical["objects"]["rows"], 1500, "{logical}");
    let physical = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--physical",
        "--url",
        &url("bound", "bound-secret", "postgres"),
    ]);
    assert_eq!(physical["mode"], "physical", "{physical}");
    let snapshot = logical["snapshot"].as_str().unwrap().to_string();
    let restored = env.cairn_json(&[
        "restore",
        &snapshot,
        "--to",
        &url("bound", "bound-secret", "copy"),
        "--verify",
        "--json",
    ]);
    assert_eq!(restored["objects"]["rows"], 1500, "{restored}");

    // MD5 cannot bind: refused on cairn's first connection and on the replication one.
    for extra in [&[][..], &["--physical"][..]] {
        let mut args = vec!["backup", "postgres"];
        args.extend(extra);
        let unbound = url("unbound", "md5-secret", "postgres");
        args.extend(["--url", &unbound]);
        let out = env.cairn(&args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("channel binding"), "{err}");
        assert!(!err.contains("md5-secret"), "{err}");
    }
}
