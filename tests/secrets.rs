//! Secrets stay secret: every form a credential takes (URL userinfo, a raw
//! `@` in a password, `password=` query and keyword parameters, S3 keys and
//! session tokens, locations of backends cairn does not support, values
//! interpolated into cairn.yaml) goes through failing commands, in text logs
//! (at debug level), JSON logs and `--json` output, and the output is
//! searched for it. Each case also asserts the error it expects, so it
//! cannot pass by failing for another reason. Plus: unsupported `scheme:`
//! locations create nothing, password files others can read are warned
//! about, and an interpolated secret cannot rewrite cairn.yaml.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::*;

/// One failing command and the error it must report.
struct Case {
    what: &'static str,
    /// Arguments after the global flags; `{json}` marks where `--json` goes
    /// for commands that take it (dropped in the runs without it).
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    unset: Vec<&'static str>,
    expect: String,
}

fn case(what: &'static str, args: &[&str], expect: &str) -> Case {
    let args = args.iter().map(|a| a.to_string()).collect();
    Case { what, args, env: Vec::new(), unset: Vec::new(), expect: expect.into() }
}

impl Case {
    fn env(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.env.push((name, value.into()));
        self
    }

    fn unset(mut self, name: &'static str) -> Case {
        self.unset.push(name);
        self
    }
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `case` with debug text logs, with debug JSON logs, and (if it takes
/// it) with `--json`: each run must fail with the expected error and show
/// none of `secrets`.
fn assert_fails_without_showing(env: &Env, case: &Case, secrets: &[&str]) {
    let takes_json = case.args.iter().any(|a| a == "{json}");
    let mut modes: Vec<(&[&str], bool)> = vec![(&["-vv"], false), (&["-vv", "--log-format", "json"], false)];
    if takes_json {
        modes.push((&["--log-format", "json"], true));
    }
    for (globals, json) in modes {
        let args: Vec<&str> = case
            .args
            .iter()
            .filter_map(|a| match a.as_str() {
                "{json}" => json.then_some("--json"),
                other => Some(other),
            })
            .collect();
        let mut c = env.cairn_cmd();
        c.args(globals).args(&args).current_dir(env.dir.path());
        for name in &case.unset {
            c.env_remove(name);
        }
        for (name, value) in &case.env {
            c.env(name, value);
        }
        let out = c.output().unwrap();
        let text = output_text(&out);
        let run = format!("{} ({globals:?}, --json {json})", case.what);
        assert!(!out.status.success(), "{run}: succeeded: {}", describe(&out));
        assert!(text.contains(&case.expect), "{run}: expected {:?}: {}", case.expect, describe(&out));
        for secret in secrets {
            assert!(!text.contains(secret), "{run}: shows {secret:?}: {}", describe(&out));
        }
    }
}

/// A repository (with one volume snapshot) to run failing commands against.
fn env_with_repository() -> Env {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    env.backup(&src);
    env
}

fn write_config(env: &Env, name: &str, text: &str) -> String {
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn postgres_credentials_never_appear_in_errors_logs_or_json() {
    let env = env_with_repository();
    let secrets =
        ["SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4", "SECRET-5", "SECRET-6", "SECRET-7", "SECRET-8"];
    let source = write_config(
        &env,
        "pg.yaml",
        "sources:\n  - name: db\n    kind: postgres\n    url: ${PG_URL}\n    jobs: 1\n",
    );
    fn backup(url: &str) -> [&str; 5] {
        ["backup", "{json}", "postgres", "--url", url]
    }
    let cases = [
        case(
            "userinfo, bad port",
            &backup("postgresql://u:SECRET-1@127.0.0.1:notaport/db"),
            "invalid PostgreSQL URL",
        ),
        case(
            "password= query parameter, bad port",
            &backup("postgresql://u@127.0.0.1/db?password=SECRET-2&port=notaport"),
            "invalid PostgreSQL URL",
        ),
        case(
            "sslpassword keyword",
            &backup("host=127.0.0.1 sslpassword=SECRET-3 port=1 dbname=db"),
            "invalid PostgreSQL URL",
        ),
        case("raw @ in the password", &backup("postgresql://u:p@SECRET-4@127.0.0.1:1/db"), "raw '@'"),
        case(
            "unreachable server, userinfo",
            &backup("postgresql://u:SECRET-5@127.0.0.1:1/db?sslmode=disable"),
            "cannot connect to PostgreSQL at postgresql://127.0.0.1:1/db",
        ),
        case(
            "unreachable server, query password",
            &backup("postgresql://u@127.0.0.1:1/db?sslmode=disable&password=SECRET-6"),
            "cannot connect to PostgreSQL at postgresql://127.0.0.1:1/db",
        ),
        case(
            "restore into a bad URL",
            &["restore", "latest", "--to", "postgresql://u@127.0.0.1/db?password=SECRET-7&port=x"],
            "invalid PostgreSQL URL",
        ),
        case(
            "a source's URL from the environment",
            &["--config", &source, "backup", "{json}", "--source", "db"],
            "invalid PostgreSQL URL",
        )
        .env("PG_URL", "postgresql://u:SECRET-8@127.0.0.1/db?port=x"),
    ];
    for c in &cases {
        assert_fails_without_showing(&env, c, &secrets);
    }
}

#[test]
fn unsupported_and_malformed_locations_never_show_their_credentials() {
    let env = env_with_repository();
    let secrets =
        ["SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4", "SECRET-5", "SECRET-6", "SECRET-7", "SECRET-8"];
    let in_config = write_config(&env, "repo.yaml", "repository: ${REPO}\n");
    let replicas =
        write_config(&env, "replicas.yaml", "replicas:\n  - rest:https://user:SECRET-8@host:8000/\n");
    let src = env.path("src");
    let src = src.to_str().unwrap();
    let cases = [
        case(
            "rest: as --repo",
            &["--repo", "rest:https://user:SECRET-1@host:8000/", "snapshots"],
            "cairn does not support rest: repositories",
        ),
        case(
            "rest: in cairn.yaml",
            &["--config", &in_config, "snapshots"],
            "cairn does not support rest: repositories",
        )
        .env("REPO", "rest:https://user:SECRET-2@host:8000/")
        .unset("CAIRN_REPOSITORY"),
        case(
            "rest: as a replica",
            &["replicate", "{json}", "--to", "rest:https://user:SECRET-3@host:8000/"],
            "cairn does not support rest: repositories",
        ),
        case(
            "S3 keys in an endpoint URL",
            &["--repo", "s3:https://AKIA:SECRET-4@127.0.0.1:1/bucket/repo", "snapshots"],
            "credentials do not belong in the location",
        ),
        case(
            "S3 keys in the endpoint parameter",
            &["--repo", "s3://bucket/repo?endpoint=http://AKIA:SECRET-5@127.0.0.1:1", "snapshots"],
            "credentials do not belong in the location",
        ),
        case(
            "S3 session token as a parameter",
            &["--repo", "s3://bucket/repo?aws_session_token=SECRET-6", "snapshots"],
            "unknown parameter",
        ),
        case(
            "sftp: with a password",
            &["--repo", "sftp:user:SECRET-7@host:/srv/repo", "init"],
            "cairn does not support sftp: repositories",
        ),
        case(
            "a configured replica after a backup",
            &["--config", &replicas, "backup", "{json}", "volume", src],
            "snapshot saved, but replicating to rest:https://user:***@host:8000/ failed",
        ),
    ];
    for c in &cases {
        assert_fails_without_showing(&env, c, &secrets);
    }
}

#[test]
fn aws_credentials_never_appear_even_in_debug_logs() {
    let server = cairn_testkit::ceph_rgw();
    let env = Env::new();
    let bucket = cairn_testkit::unique_bucket("cairn-secrets");
    let url = format!("s3://{bucket}/repo?endpoint={}&region={}", server.endpoint, server.region);
    let wrong_keys = case("a wrong secret key and a session token", &["init"], "check the AWS credentials")
        .env("CAIRN_REPOSITORY", url)
        .env("AWS_ACCESS_KEY_ID", server.access_key.clone())
        .env("AWS_SECRET_ACCESS_KEY", "SECRET-KEY-1")
        .env("AWS_SESSION_TOKEN", "SESSION-TOKEN-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .unset("AWS_PROFILE")
        .unset("AWS_ENDPOINT_URL");
    assert_fails_without_showing(&env, &wrong_keys, &["SECRET-KEY-1", "SESSION-TOKEN-1"]);
}

#[test]
fn interpolated_config_values_are_not_echoed_in_errors() {
    let env = env_with_repository();
    let cfg = write_config(
        &env,
        "jobs.yaml",
        "sources:\n  - name: db\n    kind: postgres\n    url: postgresql://127.0.0.1:1/db\n    jobs: ${JOBS}\n",
    );
    let c = case(
        "a secret where a number belongs",
        &["--config", &cfg, "backup", "{json}", "--source", "db"],
        "${JOBS}",
    )
    .env("JOBS", "SECRET-JOBS");
    assert_fails_without_showing(&env, &c, &["SECRET-JOBS"]);
}

#[test]
fn help_does_not_show_the_repository_from_the_environment() {
    let env = Env::new();
    let mut c = env.cairn_cmd();
    c.env("CAIRN_REPOSITORY", "rest:https://user:SECRET-HELP@host/").arg("--help");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = output_text(&out);
    assert!(text.contains("CAIRN_REPOSITORY") && !text.contains("SECRET-HELP"), "{text}");
}

/// Every `scheme:` cairn cannot store a repository in is refused with one
/// line, and nothing is created (before, `sftp:…` became a directory).
#[test]
fn unsupported_schemes_are_refused_and_create_nothing() {
    let env = Env::new();
    let cwd = env.path("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    for location in [
        "rest:https://user:SECRET@host:8000/repo/",
        "rest:http://host:8000/",
        "sftp:user@host:/srv/repo",
        "b2:bucket:path/to/repo",
        "azure:container:/repo",
        "gs:bucket:/repo",
        "swift:container:/repo",
        "rclone:remote:repo",
        "backup:2024",
    ] {
        for json in [false, true] {
            let mut c = env.cairn_cmd();
            c.env("CAIRN_REPOSITORY", location).current_dir(&cwd);
            if json {
                c.args(["--log-format", "json"]);
            }
            let out = c.arg("init").output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{location}: {}", describe(&out));
            let text = output_text(&out);
            let scheme = location.split(':').next().unwrap();
            assert!(
                text.contains(&format!("cairn does not support {scheme}: repositories")),
                "{location}: {text}"
            );
            assert!(text.contains(&format!("./{scheme}:")), "{location}: the hint: {text}");
            assert_eq!(text.trim().lines().count(), 1, "{location}: one line: {text}");
            assert!(!text.contains("SECRET"), "{location}: {text}");
            let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
            assert!(left.is_empty(), "{location}: created {left:?}");
        }
    }
    // The hint holds: such a name is a directory when written as a path,
    // and `local:` is restic's spelling of one.
    for (location, dir) in
        [("./backup:2024", cwd.join("backup:2024")), ("local:spelled", cwd.join("spelled"))]
    {
        let mut c = env.cairn_cmd();
        let out = c.env("CAIRN_REPOSITORY", location).current_dir(&cwd).arg("init").output().unwrap();
        assert!(out.status.success(), "{location}: {}", describe(&out));
        assert!(dir.join("config").is_file(), "{location}");
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn warnings(out: &Output) -> Vec<String> {
    output_text(out).lines().filter(|l| l.contains("can be read by")).map(str::to_string).collect()
}

#[test]
fn password_files_others_can_read_are_warned_about_once_each() {
    let env = Env::new();
    env.init();
    let pw = env.path("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    set_mode(&pw, 0o644);
    let with_file = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        c.env_remove("CAIRN_PASSWORD").env("CAIRN_PASSWORD_FILE", &pw).args(args);
        c.output().unwrap()
    };

    let out = with_file(&["snapshots"]);
    assert!(out.status.success(), "{}", describe(&out));
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "{}", describe(&out));
    let line = &warned[0];
    assert!(line.contains(pw.to_str().unwrap()) && line.contains("everyone"), "{line}");
    assert!(line.contains("chmod 600") && line.contains("defaultMode: 0400"), "{line}");

    // JSON logs carry it as a warning too.
    let out = with_file(&["--log-format", "json", "snapshots"]);
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "{}", describe(&out));
    let event: serde_json::Value = serde_json::from_str(&warned[0]).unwrap();
    assert_eq!(event["level"], "WARN", "{event}");

    // The same file as the new password too: still one warning. A second
    // file its group can read: one more.
    let out = with_file(&["key", "add", "--new-password-file", pw.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(warnings(&out).len(), 1, "{}", describe(&out));
    let other = env.path("other-password");
    std::fs::write(&other, "another password\n").unwrap();
    set_mode(&other, 0o640);
    if cairn_testkit::is_root() {
        // A root-owned file may be shared with its group (Kubernetes' fsGroup); an ordinary user's may not.
        std::os::unix::fs::chown(&other, Some(65534), None).unwrap();
    }
    let out = with_file(&["key", "add", "--new-password-file", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let warned = warnings(&out);
    assert_eq!(warned.len(), 2, "{}", describe(&out));
    assert!(warned.iter().any(|l| l.contains("other-password") && l.contains("its group")), "{warned:?}");

    // From cairn.yaml, and a source's password file.
    let cfg = write_config(
        &env,
        "cairn.yaml",
        &format!(
            "password_file: {}\nsources:\n  - name: db\n    kind: postgres\n    url: postgresql://u@127.0.0.1:1/db?sslmode=disable\n    password_file: {}\n",
            pw.display(),
            other.display()
        ),
    );
    let mut c = env.cairn_cmd();
    let out =
        c.env_remove("CAIRN_PASSWORD").args(["--config", &cfg, "backup", "--source", "db"]).output().unwrap();
    assert!(output_text(&out).contains("cannot connect to PostgreSQL"), "{}", describe(&out));
    assert_eq!(warnings(&out).len(), 2, "{}", describe(&out));

    // Private files: no warning.
    set_mode(&pw, 0o600);
    let out = with_file(&["snapshots"]);
    assert!(out.status.success() && warnings(&out).is_empty(), "{}", describe(&out));
}

/// A secret interpolated into cairn.yaml is one value, whatever it holds:
/// before, `${PW}` was pasted into the text, where a newline added a key
/// (`repository:`, here) and quotes, `: ` or `]` broke the file.
#[test]
fn an_interpolated_secret_cannot_rewrite_the_config() {
    let env = Env::new();
    let evil = env.path("evil-repo");
    let cfg = write_config(&env, "cairn.yaml", "password: ${PW}\n");
    let injects = format!("pass # word\nrepository: {}", evil.display());
    let breaks = "p: \"q' ]\n- x\n  {a: b}".to_string();
    for (n, pw) in [injects, breaks].iter().enumerate() {
        let run = |args: &[&str]| {
            let mut c = env.cairn_cmd();
            c.env_remove("CAIRN_PASSWORD").env_remove("CAIRN_REPOSITORY").env("PW", pw);
            c.arg("--config").arg(&cfg).args(args).output().unwrap()
        };
        let out = run(&["init"]);
        assert_eq!(out.status.code(), Some(1), "{pw:?}: {}", describe(&out));
        assert!(output_text(&out).contains("no repository given"), "{pw:?}: {}", describe(&out));
        assert!(!evil.exists(), "{pw:?}: the interpolated value added a repository: key");

        // The whole value is the password.
        let repo = env.path(&format!("repo-{n}"));
        let out = run(&["--repo", repo.to_str().unwrap(), "init"]);
        assert!(out.status.success(), "{pw:?}: {}", describe(&out));
        let mut c = env.cairn_cmd();
        let out =
            c.env("CAIRN_REPOSITORY", &repo).env("CAIRN_PASSWORD", pw).arg("snapshots").output().unwrap();
        assert!(out.status.success(), "{pw:?}: {}", describe(&out));
    }
}
