//! The source conformance suite: the rules of the adapter contract
//! (`docs/DESIGN.md`, "Writing a source adapter"), checked end to end by
//! running the real `cairn` binary against a real source.
//!
//! An adapter's test implements [`Fixture`] — how to make its source, back
//! it up, change it a little, make it big, restore it into a new target,
//! compare source and target (bytes or a semantic digest), and make it
//! unreachable — and calls one function per rule, each with a fresh
//! [`Harness`] (a scratch directory with an initialised repository):
//!
//! * [`round_trip_is_identical`]
//! * [`a_small_change_stores_little`]
//! * [`kill_9_mid_backup_leaves_a_sound_repository_and_the_next_run_reuses_it`]
//! * [`a_damaged_blob_makes_restore_refuse_and_name_it`]
//! * [`sigterm_mid_backup_stops_cleanly`] and [`sigterm_mid_restore_stops_cleanly`]
//! * [`an_unreachable_source_fails_in_one_line`]
//! * [`settings_defaults_agree`] and [`unknown_settings_keys_are_refused`]
//!
//! Interrupting a run must hit it mid-way, never sooner or later: the rules
//! wait for a sign the work is under way (packs landing in the repository,
//! the fixture's [`Fixture::restore_started`]), freeze the process
//! (`SIGSTOP`), send the signal and let it run again, so the signal is
//! handled exactly where the run stood. A run that finishes before it could
//! be frozen fails the rule (its fixture's big state is too small) instead
//! of passing it.
//!
//! The same [`terminate`] and [`Harness`] serve the tests of commands that
//! are not sources (`check`, `verify`, `replicate`, `wal drain`).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_repo::tree::NodeType;
use cairn_repo::{BlobType, Id, Repository};
use cairn_source::Source;

/// The password of every repository the tests make.
pub const PASSWORD: &str = "correct horse battery staple";

/// How long a SIGTERM may take to end a run: Kubernetes gives a pod 30 s
/// by default before it sends SIGKILL, and a third of that is plenty.
pub const SIGTERM_LIMIT: Duration = Duration::from_secs(10);

/// The exit code of a run ended by SIGTERM (`cairn_engine::exit::TERMINATED`).
pub const TERMINATED: i32 = 143;

/// `cairn` at `exe` with none of the caller's `CAIRN_*` settings, so a
/// developer's environment cannot change what a test sees.
pub fn cairn_command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CAIRN_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

/// A command's exit code and output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// All files under a repository directory (`data`, `index`, `locks`, ...), sorted.
pub fn repo_files(repo: &Path, dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Flips one bit of a file inside a repository (files there are read-only);
/// flipping it again undoes it.
pub fn flip_byte(path: &Path, offset: u64) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut data = std::fs::read(path).unwrap();
    let i = (offset as usize).min(data.len() - 1);
    data[i] ^= 0x01;
    std::fs::write(path, data).unwrap();
}

/// Damages the middle data blob of the first file of `snapshot` (in the local
/// repository at `repo`) whose path ends with `suffix`, and returns the pack
/// holding it. Damaging the same file again undoes it.
///
/// # Panics
/// If the repository cannot be read or no such file (with content) exists.
pub fn damage_blob_of_file(repo: &Path, password: &str, snapshot: &str, suffix: &str) -> Id {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let location = runtime.block_on(async {
        let backend: std::sync::Arc<dyn cairn_store::Backend> =
            std::sync::Arc::new(cairn_store::LocalBackend::new(repo));
        let repo = Repository::open(backend, password).await.unwrap();
        let (_, snap) = repo.find_snapshot(snapshot).await.unwrap();
        let index = repo.load_index().await.unwrap();
        let mut stack = vec![(snap.tree, String::new())];
        while let Some((tree, path)) = stack.pop() {
            for node in repo.load_tree(&index, &tree).await.unwrap().nodes {
                let child = format!("{path}/{}", node.name_lossy());
                match node.node_type {
                    NodeType::Dir => stack.push((node.subtree.unwrap(), child)),
                    NodeType::File if child.ends_with(suffix) => {
                        let content = node.content.unwrap_or_default();
                        assert!(!content.is_empty(), "{child} is empty: no blob to damage");
                        return index.get(&content[content.len() / 2], BlobType::Data).unwrap();
                    }
                    _ => {}
                }
            }
        }
        panic!("no file ending with {suffix} in snapshot {snapshot}");
    });
    let pack = location.pack.to_hex();
    flip_byte(
        &repo.join("data").join(&pack[..2]).join(&pack),
        u64::from(location.offset + location.length / 2),
    );
    location.pack
}

/// A scratch directory holding one initialised repository, and the `cairn`
/// binary to run against it (password from a file, as CronJobs give it).
pub struct Harness {
    dir: tempfile::TempDir,
    exe: PathBuf,
    repo: PathBuf,
    password_file: PathBuf,
}

impl Harness {
    /// A new scratch directory with an initialised repository at `repo/`.
    ///
    /// # Panics
    /// If the directory or the repository cannot be made.
    pub fn new(exe: impl AsRef<Path>) -> Harness {
        let dir = tempfile::Builder::new().prefix("cairn-conformance-").tempdir().expect("a temp dir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let h =
            Harness { repo: dir.path().join("repo"), exe: exe.as_ref().to_path_buf(), password_file, dir };
        h.ok(["init"]);
        h
    }

    /// Another harness for the same binary, with a repository of its own.
    pub fn sibling(&self) -> Harness {
        Harness::new(&self.exe)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> &Path {
        &self.repo
    }

    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// `cairn` pointed at this repository.
    pub fn command(&self) -> Command {
        let mut c = cairn_command(&self.exe);
        c.env("CAIRN_REPOSITORY", &self.repo).env("CAIRN_PASSWORD_FILE", &self.password_file);
        c
    }

    /// Runs `cairn ARGS` to the end.
    pub fn run<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().expect("running cairn")
    }

    /// Runs `cairn ARGS`; panics (showing the output) unless it exits 0.
    pub fn ok<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> String {
        let args = os_args(args);
        let out = self.run(&args);
        assert!(out.status.success(), "cairn {args:?} failed: {}", describe(&out));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs `cairn ARGS` (which must succeed and print JSON) and parses the last JSON line.
    pub fn json<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> serde_json::Value {
        last_json(&self.ok(args))
    }

    /// Starts `cairn ARGS`, its output collected as it comes.
    pub fn spawn<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Running {
        Running::spawn(self.command().args(args))
    }

    /// The snapshots, as `cairn snapshots --json` lists them.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        self.json(["snapshots", "--json"]).as_array().cloned().unwrap_or_default()
    }

    /// Lock files in the repository.
    pub fn locks(&self) -> Vec<PathBuf> {
        repo_files(&self.repo, "locks")
    }

    /// Pack files in the repository.
    pub fn packs(&self) -> Vec<PathBuf> {
        repo_files(&self.repo, "data")
    }

    /// The bytes of all pack files (partly written ones included).
    pub fn pack_bytes(&self) -> u64 {
        self.packs().iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    /// `restic ARGS` against this repository (restic must be installed).
    pub fn restic<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Output {
        Command::new("restic")
            .args(args)
            .env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", self.path("restic-cache"))
            .env_remove("RESTIC_PASSWORD")
            .output()
            .expect("restic is not installed: run scripts/install-test-deps.sh")
    }
}

fn os_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Vec<OsString> {
    args.into_iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// The last line of `text` that is a JSON object or array, parsed.
pub fn last_json(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .unwrap_or_else(|| panic!("no JSON line in:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A running command whose stdout and stderr are read on threads (a chatty
/// child never blocks on a full pipe).
pub struct Running {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    /// Starts `cmd` with its output collected.
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = child.stdout.take().map(|s| collect(Box::new(s)));
        let stderr = child.stderr.take().map(|s| collect(Box::new(s)));
        Running { child, stdout, stderr }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for the child")
    }

    /// Waits for the end (at most `limit`, then SIGKILL and a panic).
    pub fn wait(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("waiting for the child");
                let out = self.collect(status);
                panic!("still running after {limit:?}; killed: {}", describe(&out));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.collect(status)
    }

    /// SIGKILL, then its output.
    pub fn kill(mut self) -> Output {
        let _ = self.child.kill();
        let status = self.child.wait().expect("waiting for the child");
        self.collect(status)
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        let take =
            |h: &mut Option<JoinHandle<Vec<u8>>>| h.take().map(|h| h.join().unwrap()).unwrap_or_default();
        Output { status, stdout: take(&mut self.stdout), stderr: take(&mut self.stderr) }
    }

    /// Polls `sign` until it holds; panics (with the output) if the command
    /// ends first or `limit` passes.
    pub fn wait_for(&mut self, what: &str, limit: Duration, mut sign: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if sign() {
                return;
            }
            if let Some(status) = self.try_wait() {
                let out = self.collect(status);
                panic!("the command ended before {what}: {}", describe(&out));
            }
            assert!(Instant::now() < deadline, "no sign of {what} after {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
}

/// How a run ended after [`terminate`].
#[derive(Debug)]
pub struct Terminated {
    pub output: Output,
    /// From the signal to the end of the process.
    pub took: Duration,
}

/// Sends SIGTERM to a running command exactly where it stands (frozen with
/// SIGSTOP, signalled, let go with SIGCONT) and waits for it to end (at
/// most a minute). Panics if it had already ended.
pub fn terminate(mut run: Running) -> Terminated {
    let pid = run.id();
    signal(pid, "STOP");
    if let Some(status) = run.try_wait() {
        let out = run.collect(status);
        panic!("the command ended before SIGTERM could reach it mid-way: {}", describe(&out));
    }
    signal(pid, "TERM");
    let sent = Instant::now();
    signal(pid, "CONT");
    let output = run.wait(Duration::from_secs(60));
    Terminated { output, took: sent.elapsed() }
}

/// Asserts a run ended by SIGTERM the way every command must: exit code
/// 143 within [`SIGTERM_LIMIT`] and no lock of it left in `repo` (a local
/// repository; `None` for others, whose locks the caller checks).
pub fn assert_terminated(what: &str, t: &Terminated, repo: Option<&Path>) {
    assert_eq!(t.output.status.code(), Some(TERMINATED), "{what}: {}", describe(&t.output));
    assert!(
        t.took < SIGTERM_LIMIT,
        "{what} took {:?} to stop after SIGTERM: {}",
        t.took,
        describe(&t.output)
    );
    if let Some(repo) = repo {
        let locks = repo_files(repo, "locks");
        assert!(locks.is_empty(), "{what} left its lock behind: {locks:?}");
    }
}

/// What a source adapter's test provides to run the rules: one source,
/// owned by the fixture, in one of three states (as made; changed a
/// little; big), plus restore targets for it.
pub trait Fixture {
    /// A target a restore writes into (a directory, a database, a data directory).
    type Target;

    /// What messages call the source (`volume`, `postgres/logical`).
    fn name(&self) -> String;

    /// The arguments of `cairn backup` for the source (`volume /src`,
    /// `postgres --url …`), without `--json`.
    fn backup_args(&self) -> Vec<String>;

    /// Changes the source a little: one small file, a few rows.
    fn change_a_little(&mut self);

    /// Makes the source big enough that a backup or a restore of it is
    /// still running well after its first pack lands (tens of MiB of data
    /// that compresses poorly), so it can be interrupted mid-way.
    fn make_big(&mut self);

    /// Makes the source unreachable (a path gone, a server down).
    fn make_unreachable(&mut self);

    /// What the one error line of a backup of the unreachable source must
    /// name (the path, the host and port).
    fn unreachable_names(&self) -> String;

    /// The path (a suffix) of a file in every snapshot of the source that a
    /// restore needs, with content: the damage rule damages one of its blobs.
    fn damage_path(&self) -> String;

    /// A new, empty restore target.
    fn new_target(&mut self, harness: &Harness) -> Self::Target;

    /// The arguments of `cairn restore SNAPSHOT` that restore into `target`.
    fn restore_args(&self, target: &Self::Target) -> Vec<String>;

    /// Whether a restore into `target` has begun writing.
    fn restore_started(&self, target: &Self::Target) -> bool;

    /// The source's content, as bytes or a semantic digest (rows and their
    /// content), comparable with [`Fixture::target_digest`].
    fn source_digest(&self) -> String;

    /// The restored target's content, the same way.
    fn target_digest(&self, target: &Self::Target) -> String;
}

/// `cairn backup --json ARGS` of the fixture's source; its job report.
fn backup<F: Fixture>(h: &Harness, f: &F) -> serde_json::Value {
    let mut args = vec!["backup".to_string(), "--json".to_string()];
    args.extend(f.backup_args());
    h.json(&args)
}

fn restore_args<F: Fixture>(snapshot: &str, f: &F, target: &F::Target) -> Vec<String> {
    let mut args = vec!["restore".to_string(), snapshot.to_string()];
    args.extend(f.restore_args(target));
    args
}

fn snapshot_of(report: &serde_json::Value) -> String {
    report["snapshot"].as_str().unwrap_or_else(|| panic!("no snapshot in {report}")).to_string()
}

fn bytes(report: &serde_json::Value, what: &str) -> u64 {
    report["bytes"][what].as_u64().unwrap_or_else(|| panic!("no bytes.{what} in {report}"))
}

/// Rule: what a backup took is what a restore gives back.
pub fn round_trip_is_identical<F: Fixture>(h: &Harness, f: &mut F) {
    let report = backup(h, f);
    assert_eq!(report["exit_code"], 0, "{}: {report}", f.name());
    let snapshot = snapshot_of(&report);
    let target = f.new_target(h);
    h.ok(restore_args(&snapshot, f, &target));
    assert_eq!(
        f.target_digest(&target),
        f.source_digest(),
        "{}: the restore differs from the source",
        f.name()
    );
}

/// Rule: after a small change, the next backup stores little (a tenth of
/// the first at most, in new data and in stored bytes) and still restores
/// the changed source.
pub fn a_small_change_stores_little<F: Fixture>(h: &Harness, f: &mut F) {
    let first = backup(h, f);
    f.change_a_little();
    let second = backup(h, f);
    for what in ["added", "stored"] {
        let (a, b) = (bytes(&first, what), bytes(&second, what));
        assert!(a > 0, "{}: the first backup stored nothing: {first}", f.name());
        assert!(
            b * 10 <= a,
            "{}: after a small change bytes.{what} was {b}, the first backup's {a}",
            f.name()
        );
    }
    let target = f.new_target(h);
    h.ok(restore_args(&snapshot_of(&second), f, &target));
    assert_eq!(f.target_digest(&target), f.source_digest(), "{}: the second snapshot differs", f.name());
}

/// Rule: a backup killed with SIGKILL mid-way leaves a repository that
/// `cairn check --read-data` and `restic check --read-data` accept and no
/// snapshot, and the next run reuses what it uploaded: it stores less than
/// a whole backup by at least half of what had landed (at least a third of
/// the whole).
pub fn kill_9_mid_backup_leaves_a_sound_repository_and_the_next_run_reuses_it<F: Fixture>(
    h: &Harness,
    f: &mut F,
) {
    f.make_big();
    // What a whole backup stores, measured in a repository of its own.
    let whole = {
        let reference = h.sibling();
        bytes(&backup(&reference, f), "stored")
    };
    let mut args = vec!["backup".to_string()];
    args.extend(f.backup_args());
    let mut run = h.spawn(&args);
    run.wait_for("a third of the backup landing in packs", Duration::from_secs(120), || {
        h.pack_bytes() >= whole / 3
    });
    run.kill();
    assert!(h.snapshots().is_empty(), "{}: a killed backup wrote a snapshot", f.name());
    h.ok(["check", "--read-data"]);
    let restic = h.restic(["check", "--read-data"]);
    assert!(restic.status.success(), "{}: restic check: {}", f.name(), describe(&restic));
    let landed = h.pack_bytes();
    let resumed = backup(h, f);
    let stored = bytes(&resumed, "stored");
    assert!(
        stored + landed / 2 <= whole,
        "{}: the resumed backup stored {stored} bytes; a whole one stores {whole}, and {landed} had landed",
        f.name()
    );
}

/// Rule: a restore that meets a damaged blob refuses (exit 4), names the
/// damaged pack, and does not claim success.
pub fn a_damaged_blob_makes_restore_refuse_and_name_it<F: Fixture>(h: &Harness, f: &mut F) {
    let snapshot = snapshot_of(&backup(h, f));
    let pack = damage_blob_of_file(h.repo(), PASSWORD, &snapshot, &f.damage_path()).to_hex();
    let target = f.new_target(h);
    let out = h.run(restore_args(&snapshot, f, &target));
    assert_eq!(out.status.code(), Some(4), "{}: {}", f.name(), describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&pack), "{}: the error must name pack {pack}: {stderr}", f.name());
    assert!(h.locks().is_empty(), "{}: the failed restore left its lock", f.name());
}

/// Rule: SIGTERM mid-backup ends it within 10 s with exit 143, its lock
/// released and no snapshot written.
pub fn sigterm_mid_backup_stops_cleanly<F: Fixture>(h: &Harness, f: &mut F) {
    f.make_big();
    let mut args = vec!["backup".to_string()];
    args.extend(f.backup_args());
    let mut run = h.spawn(&args);
    run.wait_for("a pack landing", Duration::from_secs(120), || !h.packs().is_empty());
    let t = terminate(run);
    assert_terminated(&format!("{} backup", f.name()), &t, Some(h.repo()));
    assert!(h.snapshots().is_empty(), "{}: a terminated backup wrote a snapshot", f.name());
}

/// Rule: SIGTERM mid-restore ends it within 10 s with exit 143 and its
/// lock released.
pub fn sigterm_mid_restore_stops_cleanly<F: Fixture>(h: &Harness, f: &mut F) {
    f.make_big();
    let snapshot = snapshot_of(&backup(h, f));
    let target = f.new_target(h);
    let mut run = h.spawn(restore_args(&snapshot, f, &target));
    run.wait_for("the restore writing", Duration::from_secs(120), || f.restore_started(&target));
    let t = terminate(run);
    assert_terminated(&format!("{} restore", f.name()), &t, Some(h.repo()));
}

/// Rule: a backup of an unreachable source fails with one line naming it
/// and exit code 1 (`cairn_engine::exit::FAILURE`), in text and in JSON
/// (one error in the report), writing nothing and leaving no lock.
pub fn an_unreachable_source_fails_in_one_line<F: Fixture>(h: &Harness, f: &mut F) {
    f.make_unreachable();
    let mut args = vec!["backup".to_string()];
    args.extend(f.backup_args());
    let out = h.run(&args);
    assert_eq!(out.status.code(), Some(1), "{}: {}", f.name(), describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}: one line expected: {stderr}", f.name());
    assert!(lines[0].starts_with("cairn: "), "{}: {stderr}", f.name());
    assert!(
        lines[0].contains(&f.unreachable_names()),
        "{}: must name {}: {stderr}",
        f.name(),
        f.unreachable_names()
    );
    args.insert(1, "--json".into());
    let out = h.run(&args);
    assert_eq!(out.status.code(), Some(1), "{}: {}", f.name(), describe(&out));
    let report = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["exit_code"], 1, "{}: {report}", f.name());
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(1), "{}: {report}", f.name());
    assert!(h.snapshots().is_empty(), "{}: a failed backup wrote a snapshot", f.name());
    assert!(h.locks().is_empty(), "{}: a failed backup left its lock", f.name());
}

/// Rule: `Default`, the flags with only the required ones given, and a
/// `cairn.yaml` mapping with only the required keys give the same settings
/// (`required_flags` and `required_yaml` give the same values; with none
/// given, `Default` equals an empty mapping).
pub fn settings_defaults_agree<S: Source>(source: &S, required_flags: &[&str], required_yaml: &str) {
    let kind = source.descriptor().kind;
    let yaml = |text: &str| -> S::Settings {
        let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        cairn_source::config::from_value(value, Path::new("cairn.yaml"), &|_| None)
            .unwrap_or_else(|e| panic!("{kind}: {text:?}: {e}"))
    };
    let empty = yaml("{}");
    assert_eq!(
        format!("{:?}", S::Settings::default()),
        format!("{empty:?}"),
        "{kind}: Default and an empty cairn.yaml mapping differ"
    );
    let command = <S::Settings as clap::Args>::augment_args(clap::Command::new(kind));
    let matches = command
        .try_get_matches_from(std::iter::once(kind).chain(required_flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{kind} {required_flags:?}: {e}"));
    let flags = <S::Settings as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
    assert_eq!(
        format!("{flags:?}"),
        format!("{:?}", yaml(required_yaml)),
        "{kind}: the flags {required_flags:?} and the keys {required_yaml:?} give different settings"
    );
}

/// Rule: a `cairn.yaml` source of `kind` with a key its adapter does not
/// know is refused (exit 1, one line) naming the key, before anything runs.
pub fn unknown_settings_keys_are_refused(h: &Harness, kind: &str, required_yaml: &str) {
    let config = h.path("cairn.yaml");
    let keys: String = required_yaml.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(&config, format!("sources:\n  - name: odd\n    kind: {kind}\n{keys}    no_such_key: 1\n"))
        .unwrap();
    let out = h.run([
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("backup"),
        OsStr::new("--source"),
        OsStr::new("odd"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{kind}: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{kind}: one line: {stderr}");
    assert!(stderr.contains("no_such_key"), "{kind}: the key must be named: {stderr}");
    assert!(h.snapshots().is_empty(), "{kind}: a refused source wrote a snapshot");
}
