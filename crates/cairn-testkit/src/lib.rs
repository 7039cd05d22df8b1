//! Real S3, DynamoDB and PostgreSQL servers for cairn's tests, the fault
//! proxy ([`proxy`]) and the source conformance suite ([`conformance`]).
//!
//! cairn's S3 code is tested against real servers rather than mocks, because
//! what matters is how a server actually behaves: which requests it accepts,
//! how it signs, whether a conditional write is atomic. Two kinds are used:
//!
//! * [`moto()`]: `moto_server`, S3 **and** DynamoDB in one in-memory process.
//!   Starts in about a second, covers most of the API, accepts any access key.
//!   It does not check signatures or Content-MD5, and has no
//!   GetObjectRetention.
//! * [`ceph_rgw()`]: a single-node Ceph cluster with the RADOS gateway. Real
//!   S3 semantics: SigV4 is checked, Object Lock (with GetObjectRetention),
//!   versioning, Content-MD5 checks, `If-None-Match: *` atomic under races,
//!   the storage classes `STANDARD_IA` and `GLACIER_IR` beside `STANDARD`,
//!   and SSE-KMS with the key [`RGW_KMS_KEY_ID`] (Ceph's `testing` KMS, plain
//!   HTTP allowed). Starts in about 15 s, once per machine.
//!
//! Tests run in parallel in separate processes (cargo nextest), so each server
//! is a machine-wide singleton: `scripts/test-servers.sh ensure moto|rgw`
//! starts it on the first call (under a file lock, so concurrent callers share
//! one start) and only checks its health afterwards. The servers keep running
//! between tests; `scripts/test.sh` stops them when the suite ends. Within one
//! process the answer is memoised, so asking again costs nothing.
//!
//! Servers are shared: a test must not assume it is alone on one. Give every
//! test its own bucket ([`unique_bucket`]) or table, and never reset a server.
//!
//! A test that cannot get its server panics with a message saying why and how
//! to fix it (usually: run `scripts/install-test-deps.sh`); it never skips.
//!
//! Machines with servers of their own can bypass the script: set
//! `CAIRN_TEST_MOTO_ENDPOINT` or `CAIRN_TEST_RGW_ENDPOINT`, with optional
//! `..._ACCESS_KEY`, `..._SECRET_KEY` and `..._REGION` beside it (defaults:
//! the keys the script's servers use, region `us-east-1`).
//!
//! Both servers want path-style addressing (`http://127.0.0.1:PORT/bucket/key`).
//!
//! ```no_run
//! let s3 = cairn_testkit::ceph_rgw();
//! let bucket = cairn_testkit::unique_bucket("locks");
//! println!("{} {} {} {bucket}", s3.endpoint, s3.region, s3.access_key);
//! ```

pub mod conformance;
pub mod proxy;
pub mod redis;
pub use proxy::{Fault, FaultCounts, FaultKind, FaultPolicy, FaultProxy, FaultRule};
pub use redis::{RedisInstance, RedisServer, StreamFault, TcpFaultProxy, redis};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How to reach one S3 (and, for moto, DynamoDB) test server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Server {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:40123`. Use path-style addressing.
    pub endpoint: String,
    /// Region to sign requests for (`us-east-1`).
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub kind: ServerKind,
}

/// Which server an [`S3Server`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `moto_server`: S3 and DynamoDB, in memory, no signature checks.
    Moto,
    /// Ceph's RADOS gateway on a single-node cluster: real S3 semantics.
    CephRgw,
}

impl ServerKind {
    /// The name `scripts/test-servers.sh` knows the server by.
    pub fn script_name(self) -> &'static str {
        match self {
            ServerKind::Moto => "moto",
            ServerKind::CephRgw => "rgw",
        }
    }

    /// Prefix of the environment variables that point the tests at an existing server.
    pub fn env_prefix(self) -> &'static str {
        match self {
            ServerKind::Moto => "CAIRN_TEST_MOTO",
            ServerKind::CephRgw => "CAIRN_TEST_RGW",
        }
    }

    fn default_keys(self) -> (&'static str, &'static str) {
        match self {
            ServerKind::Moto => ("testing", "testing"),
            ServerKind::CephRgw => ("AKIATEST", "SECRETTEST"),
        }
    }
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerKind::Moto => "moto",
            ServerKind::CephRgw => "Ceph RGW",
        })
    }
}

const DEFAULT_REGION: &str = "us-east-1";

/// The SSE-KMS key id the Ceph RGW test server knows (`sse_kms_key_id=` of an
/// S3 location). `scripts/test-servers.sh` configures it; an RGW given by
/// `CAIRN_TEST_RGW_ENDPOINT` needs a key of this id for the SSE-KMS tests.
pub const RGW_KMS_KEY_ID: &str = "cairn-test-key";

/// The moto server (S3 and DynamoDB), started if it is not running.
///
/// # Panics
/// If the server cannot be started or reached; the message says why and how to fix it.
pub fn moto() -> S3Server {
    server(ServerKind::Moto)
}

/// The Ceph RGW server (S3 with real semantics), started if it is not running.
///
/// # Panics
/// If the server cannot be started or reached; the message says why and how to fix it.
pub fn ceph_rgw() -> S3Server {
    server(ServerKind::CephRgw)
}

fn server(kind: ServerKind) -> S3Server {
    static MOTO: OnceLock<Result<S3Server, String>> = OnceLock::new();
    static RGW: OnceLock<Result<S3Server, String>> = OnceLock::new();
    let cell = match kind {
        ServerKind::Moto => &MOTO,
        ServerKind::CephRgw => &RGW,
    };
    match cell.get_or_init(|| locate(kind, &|name| std::env::var(name).ok())) {
        Ok(server) => server.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The server given by the environment, else the one the script ensures.
fn locate(kind: ServerKind, env: &dyn Fn(&str) -> Option<String>) -> Result<S3Server, String> {
    match from_env(kind, env) {
        Some(server) => Ok(server),
        None => ensure_with_script(kind),
    }
}

/// `CAIRN_TEST_<KIND>_ENDPOINT` (+ `_ACCESS_KEY`, `_SECRET_KEY`, `_REGION`), if the endpoint is set.
fn from_env(kind: ServerKind, env: &dyn Fn(&str) -> Option<String>) -> Option<S3Server> {
    let var = |suffix: &str| env(&format!("{}_{suffix}", kind.env_prefix())).filter(|v| !v.is_empty());
    let endpoint = var("ENDPOINT")?;
    let (access_key, secret_key) = kind.default_keys();
    Some(S3Server {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        region: var("REGION").unwrap_or_else(|| DEFAULT_REGION.to_owned()),
        access_key: var("ACCESS_KEY").unwrap_or_else(|| access_key.to_owned()),
        secret_key: var("SECRET_KEY").unwrap_or_else(|| secret_key.to_owned()),
        kind,
    })
}

fn ensure_with_script(kind: ServerKind) -> Result<S3Server, String> {
    let script = repo_root().join("scripts").join("test-servers.sh");
    let command = format!("{} ensure {}", script.display(), kind.script_name());
    let help = format!(
        "Install what the test servers need with scripts/install-test-deps.sh (as root), \
         or point the tests at a running server with {prefix}_ENDPOINT \
         (and {prefix}_ACCESS_KEY, {prefix}_SECRET_KEY, {prefix}_REGION).",
        prefix = kind.env_prefix()
    );
    let output = Command::new("bash")
        .arg(&script)
        .arg("ensure")
        .arg(kind.script_name())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot get the {kind} test server: cannot run `{command}`: {e}\n{help}"))?;
    if !output.status.success() {
        return Err(format!(
            "cannot get the {kind} test server: `{command}` failed ({}):\n{}\n{help}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    parse_settings(kind, &String::from_utf8_lossy(&output.stdout))
        .map_err(|e| format!("cannot get the {kind} test server: `{command}` printed {e}\n{help}"))
}

/// Reads the `key=value` lines `test-servers.sh ensure` prints; unknown keys are ignored.
fn parse_settings(kind: ServerKind, text: &str) -> Result<S3Server, String> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|line| line.trim().split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| format!("no `{key}=` line in its output:\n{text}"))
    };
    Ok(S3Server {
        endpoint: value("endpoint")?.trim_end_matches('/').to_owned(),
        region: value("region")?,
        access_key: value("access_key")?,
        secret_key: value("secret_key")?,
        kind,
    })
}

/// A valid S3 bucket name that starts with (a cleaned-up) `prefix` and is
/// unique per call, across processes and runs: the prefix, then the process
/// id, a per-process counter and the time.
///
/// The name is at most 63 characters of lowercase letters, digits and single
/// hyphens; other characters in `prefix` become hyphens, and a long prefix is
/// shortened.
pub fn unique_bucket(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // The low 64 bits of the time in nanoseconds: unique enough with pid and counter.
    let suffix = format!("{}-{n}-{}", std::process::id(), base36(nanos as u64));

    let mut clean = String::new();
    for c in prefix.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (clean.is_empty() || clean.ends_with('-'))) {
            clean.push(c);
        }
    }
    // Names AWS reserves by prefix.
    if clean.starts_with("xn-") || clean.starts_with("sthree-") || clean.starts_with("amzn-s3-demo-") {
        clean.insert_str(0, "t-");
    }
    clean.truncate(63 - 1 - suffix.len());
    let clean = clean.trim_end_matches('-');
    let prefix = if clean.is_empty() { "cairn-test" } else { clean };
    format!("{prefix}-{suffix}")
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// The workspace root (where `Cargo.toml`, `scripts/` and `target/` are).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .expect("crates/cairn-testkit lies two levels below the workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// GET `path` from an `http://host:port` endpoint with extra header lines
    /// (each ending in CRLF): (status code, whole response as text).
    fn http_get(endpoint: &str, path: &str, headers: &str) -> (u16, String) {
        let authority = endpoint.strip_prefix("http://").expect("an http:// endpoint");
        let mut stream =
            TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}Connection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap_or_else(|e| panic!("read from {endpoint}: {e}"));
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response from {endpoint}: {response:?}"));
        (status, response)
    }

    fn assert_lists_buckets(server: &S3Server) {
        let (status, response) = http_get(&server.endpoint, "/", "");
        assert_eq!(status, 200, "GET / on {} ({}):\n{response}", server.endpoint, server.kind);
        assert!(response.contains("<?xml"), "GET / on {} gave no XML:\n{response}", server.endpoint);
        assert!(response.contains("ListAllMyBucketsResult"), "GET / on {}:\n{response}", server.endpoint);
    }

    #[test]
    fn moto_answers_s3_requests() {
        let server = moto();
        assert_eq!(server.kind, ServerKind::Moto);
        assert!(server.endpoint.starts_with("http://"), "{server:?}");
        assert_lists_buckets(&server);
        assert_eq!(moto(), server, "memoised per process");
    }

    #[test]
    fn ceph_rgw_answers_s3_requests() {
        let server = ceph_rgw();
        assert_eq!(server.kind, ServerKind::CephRgw);
        assert!(server.endpoint.starts_with("http://"), "{server:?}");
        assert_lists_buckets(&server);
        // SigV4 is checked, and the test user exists: a bad signature with its access
        // key is a signature mismatch, with an unknown key an unknown key.
        let (status, response) = http_get(&server.endpoint, "/", &bad_sigv4_headers(&server.access_key));
        assert_eq!(status, 403, "badly signed GET / on RGW:\n{response}");
        assert!(response.contains("SignatureDoesNotMatch"), "badly signed GET / on RGW:\n{response}");
        let (status, response) = http_get(&server.endpoint, "/", &bad_sigv4_headers("AKIANOSUCHKEY"));
        assert_eq!(status, 403, "GET / with an unknown key on RGW:\n{response}");
        assert!(response.contains("InvalidAccessKeyId"), "GET / with an unknown key on RGW:\n{response}");
        assert_eq!(ceph_rgw(), server, "memoised per process");
    }

    /// SigV4 headers for `GET /` that are well formed and current but carry a wrong signature.
    fn bad_sigv4_headers(access_key: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (days, secs) = (now / 86_400, now % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        let date = format!("{y:04}{m:02}{d:02}");
        let time = format!("{date}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60);
        format!(
            "x-amz-date: {time}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential={access_key}/{date}/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}\r\n",
            "0".repeat(64)
        )
    }

    /// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
    /// (Howard Hinnant's `civil_from_days`).
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn moto_accepts_any_signature() {
        // What sets the two apart: moto does not check signatures.
        let server = moto();
        let (status, response) = http_get(&server.endpoint, "/", &bad_sigv4_headers("AKIANOSUCHKEY"));
        assert_eq!(status, 200, "badly signed GET / on moto:\n{response}");
    }

    #[test]
    fn both_servers_are_distinct() {
        assert_ne!(moto().endpoint, ceph_rgw().endpoint);
    }

    fn valid_bucket_name(name: &str) -> bool {
        (3..=63).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
            && !name.contains("--")
            && !name.starts_with("xn-")
            && !name.starts_with("sthree-")
    }

    #[test]
    fn unique_bucket_names_are_valid_and_distinct() {
        let prefixes = [
            "",
            "s3",
            "locks",
            "Upper_Case.Name",
            "--leading-and-trailing--",
            "xn--punycode",
            "sthree-reserved",
            "ünïcödé ✓",
            &"long".repeat(40),
        ];
        let mut seen = HashSet::new();
        for prefix in prefixes {
            for _ in 0..50 {
                let name = unique_bucket(prefix);
                assert!(valid_bucket_name(&name), "invalid bucket name {name:?} from prefix {prefix:?}");
                assert!(seen.insert(name.clone()), "duplicate bucket name {name}");
            }
        }
        assert!(unique_bucket("locks").starts_with("locks-"));
        assert!(unique_bucket("Upper_Case.Name").starts_with("upper-case-name-"));
        assert!(unique_bucket("").starts_with("cairn-test-"));
    }

    #[test]
    fn script_output_is_parsed() {
        let out =
            "kind=rgw\nendpoint=http://127.0.0.1:4321/\nregion=us-east-1\naccess_key=AK\nsecret_key=S=K\n";
        let server = parse_settings(ServerKind::CephRgw, out).unwrap();
        assert_eq!(
            server,
            S3Server {
                endpoint: "http://127.0.0.1:4321".into(),
                region: "us-east-1".into(),
                access_key: "AK".into(),
                secret_key: "S=K".into(),
                kind: ServerKind::CephRgw,
            }
        );
        let err = parse_settings(ServerKind::Moto, "endpoint=http://x\n").unwrap_err();
        assert!(err.contains("region="), "{err}");
    }

    #[test]
    fn environment_overrides_the_script() {
        let vars: HashMap<&str, &str> = [
            ("CAIRN_TEST_RGW_ENDPOINT", "http://rgw.example:7480/"),
            ("CAIRN_TEST_RGW_SECRET_KEY", "sekrit"),
            ("CAIRN_TEST_MOTO_ENDPOINT", ""),
        ]
        .into();
        let env = |name: &str| vars.get(name).map(|v| v.to_string());
        let rgw = locate(ServerKind::CephRgw, &env).unwrap();
        assert_eq!(rgw.endpoint, "http://rgw.example:7480");
        assert_eq!((rgw.access_key.as_str(), rgw.secret_key.as_str()), ("AKIATEST", "sekrit"));
        assert_eq!(rgw.region, "us-east-1");
        // An empty endpoint variable counts as unset.
        assert_eq!(from_env(ServerKind::Moto, &env), None);
    }

    #[test]
    fn repo_root_is_the_workspace() {
        let root = repo_root();
        assert!(root.join("scripts/test-servers.sh").is_file(), "{}", root.display());
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
    }
}

/// The scratch PostgreSQL cluster the tests share (`scripts/test-servers.sh
/// ensure postgres`): trust authentication on 127.0.0.1, user `postgres`.
/// Tests create their own databases on it ([`unique_bucket`] makes good
/// names) and never drop someone else's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgServer {
    /// `postgresql://postgres@127.0.0.1:PORT` (append `/DATABASE`).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The server's bin directory (`initdb`, `psql`, `pgbench`, `pg_dump`, ...).
    pub bin: PathBuf,
}

impl PgServer {
    /// The URL of one database on the server.
    pub fn db_url(&self, database: &str) -> String {
        format!("{}/{database}", self.url)
    }

    /// A command for one of the server's client tools, pointed at the server.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env("PGHOST", &self.host).env("PGPORT", self.port.to_string()).env("PGUSER", &self.user);
        c.env_remove("PGDATABASE").env_remove("PGPASSWORD");
        c
    }

    /// Runs `psql -X -At -v ON_ERROR_STOP=1 -d DATABASE -c SQL` and returns its output.
    ///
    /// # Panics
    /// If psql fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self
            .tool("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql -d {database} -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

/// The shared PostgreSQL test server, started if it is not running.
/// `CAIRN_TEST_PG_URL` (+ `CAIRN_TEST_PG_BIN`) points the tests at another one.
///
/// # Panics
/// If the server cannot be started or reached; the message says why and how to fix it.
pub fn postgres() -> PgServer {
    static PG: OnceLock<Result<PgServer, String>> = OnceLock::new();
    match PG.get_or_init(locate_postgres) {
        Ok(server) => server.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn locate_postgres() -> Result<PgServer, String> {
    let text = match std::env::var("CAIRN_TEST_PG_URL").ok().filter(|v| !v.is_empty()) {
        Some(url) => {
            let rest = url.split_once('@').map(|(_, r)| r).unwrap_or(&url);
            let rest = rest.trim_start_matches("postgresql://").trim_start_matches("postgres://");
            let (host, port) = rest.split_once(':').unwrap_or((rest, "5432"));
            format!(
                "url={url}\nhost={host}\nport={port}\nuser=postgres\nbin={}\n",
                std::env::var("CAIRN_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
            )
        }
        None => {
            let script = repo_root().join("scripts").join("test-servers.sh");
            let output = Command::new("bash")
                .arg(&script)
                .args(["ensure", "postgres"])
                .current_dir(repo_root())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| {
                    format!("cannot get the PostgreSQL test server: cannot run {}: {e}", script.display())
                })?;
            if !output.status.success() {
                return Err(format!(
                    "cannot get the PostgreSQL test server: `{} ensure postgres` failed ({}):\n{}\n\
                     Install the server with scripts/install-test-deps.sh, or set CAIRN_TEST_PG_URL.",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim_end()
                ));
            }
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let value = |key: &str| {
        text.lines()
            .filter_map(|line| line.trim().split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| format!("PostgreSQL test server settings lack `{key}=`:\n{text}"))
    };
    Ok(PgServer {
        url: value("url")?,
        host: value("host")?,
        port: value("port")?.parse().map_err(|e| format!("bad port in the PostgreSQL settings: {e}"))?,
        user: value("user")?,
        bin: PathBuf::from(value("bin")?),
    })
}

/// A private PostgreSQL cluster for one test (WAL archiving and recovery
/// tests need their own `archive_command` and data directory). Started by
/// [`PgCluster::start`], stopped (immediate mode) when dropped.
#[derive(Debug)]
pub struct PgCluster {
    pub data_dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
    pub log: PathBuf,
}

/// Runs a command as the `postgres` OS user when we are root (initdb and
/// postgres refuse to run as root), else as ourselves.
pub fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Whether the tests run as root (then clusters run as `postgres`, and
/// files they must reach are handed to that user with [`give_to_postgres`]).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Hands `path` (recursively) to the `postgres` OS user when we are root,
/// and opens its ancestors for traversal, so a cluster's
/// `archive_command` can reach it.
pub fn give_to_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "chown -R postgres {} failed", path.display());
    for dir in path.ancestors().skip(1) {
        if dir == Path::new("/") {
            break;
        }
        let _ = Command::new("chmod").arg("o+x").arg(dir).status();
    }
}

impl PgCluster {
    /// `initdb` into `data_dir` (which must not exist; its parent is handed
    /// to the postgres user), append `extra_conf` to postgresql.conf, start
    /// on a free loopback port.
    ///
    /// # Panics
    /// If the server binaries are missing or the cluster does not start.
    pub fn start(data_dir: &Path, extra_conf: &str) -> PgCluster {
        let bin = postgres().bin;
        let parent = data_dir.parent().expect("data dir has a parent");
        std::fs::create_dir_all(parent).expect("creating the cluster's parent directory");
        give_to_postgres(parent);
        let out = as_postgres_user(&bin.join("initdb"))
            .arg("-D")
            .arg(data_dir)
            // --no-sync: a scratch cluster that runs with fsync off need not wait for initdb's.
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_wal_senders = 4\nwal_level = replica\n{extra_conf}\n",
            data_dir.display()
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(data_dir.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let log = parent.join(format!("postgres-{port}.log"));
        let cluster = PgCluster { data_dir: data_dir.to_path_buf(), port, bin, log };
        cluster.pg_ctl_start();
        cluster
    }

    /// Turns TLS on with this server certificate and key (PEM; copied into
    /// the data directory, the key private to the server's user as
    /// PostgreSQL demands) and makes every TCP connection use it: pg_hba.conf
    /// gets `hostssl` lines only, so plain TCP logins are refused. Unix
    /// sockets stay open without TLS.
    ///
    /// # Panics
    /// If the files cannot be installed or the server does not take them.
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = self.data_dir.join(name);
            std::fs::copy(from, &to)
                .unwrap_or_else(|e| panic!("copying {} into the cluster: {e}", from.display()));
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            give_to_postgres(&to);
        }
        self.write_hba("");
        self.append_conf("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        self.reload_until("ssl", "on");
    }

    /// After [`PgCluster::enable_tls`]: TCP logins as `users` (a pg_hba.conf
    /// user list, e.g. `alice,bob`), replication included, must present a
    /// client certificate that `ca` signed and whose CN is the user name
    /// (`cert` authentication). Every other user still logs in without one,
    /// so [`PgCluster::psql`] keeps working.
    ///
    /// # Panics
    /// If the CA cannot be installed or the server does not take it.
    pub fn require_client_certs(&self, ca: &Path, users: &str) {
        let to = self.data_dir.join("client-ca.crt");
        std::fs::copy(ca, &to).unwrap_or_else(|e| panic!("copying {} into the cluster: {e}", ca.display()));
        give_to_postgres(&to);
        // pg_hba.conf takes the first line that matches, so these go first.
        self.write_hba(&format!(
            "hostssl all {users} 127.0.0.1/32 cert\nhostssl replication {users} 127.0.0.1/32 cert\n"
        ));
        self.append_conf("ssl_ca_file = 'client-ca.crt'\n");
        self.reload_until("ssl_ca_file", "client-ca.crt");
    }

    /// pg_hba.conf: `first` lines, then TLS-only TCP logins without a password.
    fn write_hba(&self, first: &str) {
        let hba = self.data_dir.join("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "local all all trust\n{first}hostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n"
            ),
        )
        .unwrap();
        give_to_postgres(&hba);
    }

    /// Puts `lines` at the top of pg_hba.conf (the first line that matches
    /// a login decides) and reloads; every later login sees them.
    ///
    /// # Panics
    /// If the file cannot be written or the server does not reload.
    pub fn prepend_hba(&self, lines: &str) {
        let hba = self.data_dir.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
        std::fs::write(&hba, format!("{lines}{rest}")).expect("writing pg_hba.conf");
        give_to_postgres(&hba);
        // A setting that changes in the same reload tells when it is done.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default();
        self.append_conf(&format!("cairn.hba_generation = '{generation}'\n"));
        self.reload_until("cairn.hba_generation", &generation);
    }

    fn append_conf(&self, lines: &str) {
        let mut f =
            std::fs::OpenOptions::new().append(true).open(self.data_dir.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, lines.as_bytes()).unwrap();
    }

    /// Reloads the configuration and waits until `setting` reads `value`.
    /// The ssl settings and pg_hba.conf are reloadable: no restart needed.
    /// The postmaster rereads pg_hba.conf in the same reload, before it
    /// starts another backend, so once a new session sees the setting,
    /// every later login sees the new pg_hba.conf too.
    fn reload_until(&self, setting: &str, value: &str) {
        let out = as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("reload")
            .stdin(Stdio::null())
            .output()
            .expect("running pg_ctl reload");
        assert!(out.status.success(), "pg_ctl reload failed: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.psql("postgres", &format!("SHOW {setting}")) != value {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not take {setting} = {value}:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn pg_ctl_start(&self) {
        let out = as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stops the cluster (fast shutdown: a clean checkpoint).
    pub fn stop(&self) {
        let _ = as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `psql -X -At -v ON_ERROR_STOP=1 -c SQL` against `database` and returns its output.
    ///
    /// # Panics
    /// If psql fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql])
            .output()
            .expect("running psql");
        assert!(out.status.success(), "psql -c {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// The server log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
    }
}

/// A free TCP port on 127.0.0.1 (released before returning; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
