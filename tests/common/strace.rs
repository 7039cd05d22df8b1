//! Watching what a command makes durable: the command runs under
//! `strace -f -y`, and the trace of its file-system system calls is checked
//! against the rules a crash-safe writer follows. A test cannot pull the
//! plug, but it can prove every write was followed by the fsync that makes
//! it survive one, in the right order, before the command said it was done.

use std::collections::HashMap;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{describe, which};

/// The system calls traced: syncs, everything that writes data or metadata,
/// and everything that adds, removes or renames a directory entry. A `?`
/// lets strace skip the ones an architecture does not have.
const TRACED: &str = "fsync,fdatasync,syncfs,write,pwrite64,pwritev,pwritev2,ftruncate,?truncate,fallocate,\
fchmod,fchmodat,?chmod,fchown,fchownat,?chown,?lchown,utimensat,fsetxattr,setxattr,lsetxattr,\
openat,?open,?creat,?rename,renameat,renameat2,?mkdir,mkdirat,?rmdir,?unlink,unlinkat,\
?symlink,symlinkat,?link,linkat,?mknod,mknodat";

/// One completed system call. strace runs with `-xx`, so every string and
/// descriptor path arrives hex-escaped and decodes without ambiguity,
/// whatever bytes a file name holds.
#[derive(Debug, Clone)]
pub struct Syscall {
    pub name: String,
    pub args: String,
    pub result: String,
}

/// A descriptor's path (`5<…>`) or a quoted string argument, decoded.
enum Token {
    Fd(PathBuf),
    Str(Vec<u8>),
}

fn unhex(escaped: &str) -> Vec<u8> {
    escaped
        .split("\\x")
        .filter(|h| !h.is_empty())
        .map(|h| u8::from_str_radix(&h[..2], 16).expect("strace -xx escapes"))
        .collect()
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['<', '"']) {
        let close = if rest.as_bytes()[i] == b'<' { '>' } else { '"' };
        let Some(len) = rest[i + 1..].find(close) else { break };
        let bytes = unhex(&rest[i + 1..i + 1 + len]);
        out.push(if close == '>' {
            Token::Fd(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
        } else {
            Token::Str(bytes)
        });
        rest = &rest[i + len + 2..];
    }
    out
}

impl Syscall {
    fn ok(&self) -> bool {
        !self.result.starts_with('-') && !self.result.starts_with('?')
    }

    /// The first file path strace printed for a descriptor argument.
    fn fd_path(&self) -> Option<PathBuf> {
        tokens(&self.args).into_iter().find_map(|t| match t {
            Token::Fd(p) if p.is_absolute() => Some(p),
            _ => None,
        })
    }

    /// Quoted path arguments, made absolute against the directory
    /// descriptor printed before each (`AT_FDCWD</cwd>`, `3</dir>`).
    fn quoted_paths(&self) -> Vec<PathBuf> {
        let mut base: Option<PathBuf> = None;
        let mut out = Vec::new();
        for t in tokens(&self.args) {
            match t {
                Token::Fd(p) => base = Some(p),
                Token::Str(bytes) => {
                    let p = PathBuf::from(std::ffi::OsString::from_vec(bytes));
                    out.push(match &base {
                        Some(b) if p.is_relative() => b.join(p),
                        _ => p,
                    });
                }
            }
        }
        out
    }

    /// The first quoted argument as text (a `write`'s data).
    fn text(&self) -> String {
        tokens(&self.args)
            .into_iter()
            .find_map(|t| match t {
                Token::Str(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                Token::Fd(_) => None,
            })
            .unwrap_or_default()
    }

    /// The path a call returned a descriptor for (`= 7<…>`).
    fn result_path(&self) -> Option<PathBuf> {
        tokens(&self.result).into_iter().find_map(|t| match t {
            Token::Fd(p) => Some(p),
            Token::Str(_) => None,
        })
    }

    /// A rename's old and new path.
    fn renamed(&self) -> Option<(PathBuf, PathBuf)> {
        if !self.ok() || !self.name.starts_with("rename") {
            return None;
        }
        let mut q = self.quoted_paths().into_iter();
        Some((q.next()?, q.next()?))
    }
}

/// What one call did to the file system, as far as durability goes.
enum Effect {
    /// Made a file's data and inode durable (`fsync`), or everything (`syncfs`).
    Sync(Option<PathBuf>),
    /// Changed the data or metadata of this path.
    Change(PathBuf),
    /// Added, removed or renamed the entry at this path (a change to its directory).
    Entry(PathBuf),
}

fn effects(call: &Syscall) -> Vec<Effect> {
    use Effect::*;
    if !call.ok() {
        return vec![];
    }
    let fd = || call.fd_path();
    let quoted = || call.quoted_paths();
    match call.name.as_str() {
        "fsync" | "fdatasync" => fd().map(|p| vec![Sync(Some(p))]).unwrap_or_default(),
        "syncfs" => vec![Sync(None)],
        "write" | "pwrite64" | "pwritev" | "pwritev2" | "ftruncate" | "fallocate" | "fchmod" | "fchown"
        | "fsetxattr" => fd().map(|p| vec![Change(p)]).unwrap_or_default(),
        // utimensat(fd, NULL, ...) names its file by descriptor, otherwise by path.
        "utimensat" if call.args.contains(", NULL,") => fd().map(|p| vec![Change(p)]).unwrap_or_default(),
        "utimensat" | "truncate" | "fchmodat" | "chmod" | "fchownat" | "chown" | "lchown" | "setxattr"
        | "lsetxattr" => quoted().into_iter().next().map(|p| vec![Change(p)]).unwrap_or_default(),
        "openat" | "open" | "creat" if call.name == "creat" || call.args.contains("O_CREAT") => {
            call.result_path().map(|p| vec![Change(p.clone()), Entry(p)]).unwrap_or_default()
        }
        "rename" | "renameat" | "renameat2" => quoted().into_iter().map(Entry).collect(),
        "mkdir" | "mkdirat" | "mknod" | "mknodat" => {
            quoted().into_iter().next().map(|p| vec![Change(p.clone()), Entry(p)]).unwrap_or_default()
        }
        // A hard link or symlink is a new entry; the last quoted path is where it goes.
        "unlink" | "unlinkat" | "rmdir" => {
            quoted().into_iter().next().map(|p| vec![Entry(p)]).unwrap_or_default()
        }
        "symlink" | "symlinkat" | "link" | "linkat" => {
            quoted().into_iter().last().map(|p| vec![Entry(p)]).unwrap_or_default()
        }
        _ => vec![],
    }
}

/// The file-system system calls of one traced run, in the order they completed.
pub struct SyscallTrace {
    pub calls: Vec<Syscall>,
}

/// Runs `cmd` under strace; returns its output and the trace.
pub fn traced(cmd: &Command, trace_file: &Path) -> (Output, SyscallTrace) {
    let strace = which("strace").expect("strace is not installed: run scripts/install-test-deps.sh");
    let mut c = Command::new(strace);
    c.args(["-f", "-y", "-xx", "-qq", "-s", "64", "-o"]).arg(trace_file).args([
        "-e",
        &format!("trace={TRACED}"),
        "--",
    ]);
    c.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    let out = c.output().expect("running strace");
    let text = std::fs::read_to_string(trace_file).expect("reading the strace output");
    (out, SyscallTrace::parse(&text))
}

impl SyscallTrace {
    pub fn parse(text: &str) -> SyscallTrace {
        let mut pending: HashMap<&str, String> = HashMap::new();
        let mut calls = Vec::new();
        for line in text.lines() {
            let Some((pid, rest)) = line.split_once(' ') else { continue };
            let rest = rest.trim_start();
            if rest.starts_with("+++") || rest.starts_with("---") {
                continue;
            }
            if let Some(start) = rest.strip_suffix(" <unfinished ...>") {
                pending.insert(pid, start.to_string());
                continue;
            }
            let full = match rest.strip_prefix("<... ") {
                Some(resumed) => {
                    let tail = resumed.split_once("resumed>").map(|(_, t)| t).unwrap_or("");
                    format!("{}{tail}", pending.remove(pid).unwrap_or_default())
                }
                None => rest.to_string(),
            };
            let Some(open) = full.find('(') else { continue };
            // The result follows the last `)` that is followed by `= `.
            let close = full
                .match_indices(')')
                .rev()
                .map(|(i, _)| i)
                .find(|&i| full[i + 1..].trim_start().starts_with("= "));
            let Some(close) = close else { continue };
            calls.push(Syscall {
                name: full[..open].to_string(),
                args: full[open + 1..close].to_string(),
                result: full[close + 1..].trim_start()[2..].to_string(),
            });
        }
        SyscallTrace { calls }
    }

    /// Where the command wrote `marker` to stdout (its success line).
    pub fn stdout_line(&self, marker: &str) -> Option<usize> {
        self.calls
            .iter()
            .position(|c| c.name == "write" && c.args.starts_with("1<") && c.text().contains(marker))
    }

    /// Every way in which what the command wrote under `root` was not made
    /// durable in order (empty: all is well), before call `end`:
    /// * each file and directory under `root` (and `root`) that it changed
    ///   is fsynced after its last change of data or metadata;
    /// * each directory gaining or losing an entry (including `root`'s
    ///   parent, if `root` was made) is fsynced after that;
    /// * each regular file renamed into place was fsynced before the rename;
    /// * symlinks and other entries that cannot be fsynced changed before
    ///   their directory's fsync.
    pub fn durability_violations(&self, root: &Path, end: usize) -> Vec<String> {
        let relevant = |p: &Path| p.starts_with(root) || Some(p) == root.parent();
        // Temporary names lead to where their file ended up.
        let mut renamed: HashMap<PathBuf, PathBuf> = HashMap::new();
        for (from, to) in self.calls.iter().filter_map(Syscall::renamed) {
            renamed.insert(from, to);
        }
        let final_of = |p: &Path| {
            let mut p = p.to_path_buf();
            for _ in 0..8 {
                match renamed.get(&p) {
                    Some(next) => p = next.clone(),
                    None => break,
                }
            }
            p
        };
        // Identity is the inode the name ends up at (hard links share one).
        let ids: std::cell::RefCell<HashMap<PathBuf, String>> = Default::default();
        let id = |p: &Path| -> String {
            ids.borrow_mut()
                .entry(p.to_path_buf())
                .or_insert_with(|| {
                    let f = final_of(p);
                    match std::fs::symlink_metadata(&f) {
                        Ok(m) => format!("inode {}", m.ino()),
                        Err(_) => f.display().to_string(),
                    }
                })
                .clone()
        };
        let mut syncs: HashMap<String, Vec<usize>> = HashMap::new();
        let mut everything_synced: Vec<usize> = Vec::new();
        // When each identity changed, in order.
        let mut changed_at: HashMap<String, Vec<usize>> = HashMap::new();
        let mut entries: Vec<(usize, PathBuf)> = Vec::new();
        let mut changes: Vec<(usize, PathBuf)> = Vec::new();
        for (i, c) in self.calls.iter().enumerate() {
            for effect in effects(c) {
                match effect {
                    Effect::Sync(Some(p)) => syncs.entry(id(&p)).or_default().push(i),
                    Effect::Sync(None) => everything_synced.push(i),
                    Effect::Change(p) if relevant(&p) => {
                        changed_at.entry(id(&p)).or_default().push(i);
                        changes.push((i, p));
                    }
                    Effect::Entry(p) if p.parent().is_some_and(&relevant) => entries.push((i, p)),
                    _ => {}
                }
            }
        }
        let synced_between = |key: &str, after: Option<usize>, before: usize| {
            let after = after.map_or(0, |a| a + 1);
            syncs.get(key).into_iter().flatten().chain(&everything_synced).any(|&s| s >= after && s < before)
        };
        let mut problems = Vec::new();

        for path in walk(root) {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if !(meta.is_file() || meta.is_dir()) {
                continue;
            }
            let key = id(&path);
            let Some(&after) = changed_at.get(&key).and_then(|at| at.last()) else { continue };
            if !synced_between(&key, Some(after), end) {
                problems.push(format!("{} is not fsynced after its last change", path.display()));
            }
        }
        for (i, entry) in &entries {
            let dir = entry.parent().unwrap();
            if !synced_between(&id(dir), Some(*i), end) {
                problems.push(format!(
                    "directory {} is not fsynced after its entry {:?} changed ({})",
                    dir.display(),
                    entry.file_name().unwrap_or_default(),
                    self.calls[*i].name
                ));
            }
        }
        for (r, (_, dest)) in self.calls.iter().enumerate().filter_map(|(r, c)| Some((r, c.renamed()?))) {
            if !relevant(&dest) || !std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let key = id(&dest);
            let last = changed_at.get(&key).and_then(|at| at.iter().rev().find(|&&i| i < r).copied());
            if !synced_between(&key, last, r) {
                problems.push(format!("{} was renamed into place before it was fsynced", dest.display()));
            }
        }
        for (i, p) in &changes {
            let unsyncable = std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir());
            if unsyncable && !synced_between(&id(p.parent().unwrap()), Some(*i), end) {
                problems.push(format!("{} changed after its directory's fsync", p.display()));
            }
        }
        problems.sort();
        problems.dedup();
        problems
    }

    /// Calls that synced anything under `root`, or the whole file system.
    pub fn syncs_under(&self, root: &Path) -> Vec<&Syscall> {
        self.calls
            .iter()
            .filter(|c| {
                effects(c).iter().any(|e| match e {
                    Effect::Sync(Some(p)) => p.starts_with(root),
                    Effect::Sync(None) => true,
                    _ => false,
                })
            })
            .collect()
    }
}

/// `root` and everything under it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let mut children: Vec<_> = std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// Runs `cmd` under strace, requires success, and asserts that everything
/// it wrote under `root` was durable, in order, before it printed
/// `success` (or, with `None`, before it exited).
pub fn assert_durable(cmd: &Command, trace_file: &Path, root: &Path, success: Option<&str>) -> Output {
    let (out, trace) = traced(cmd, trace_file);
    assert!(out.status.success(), "{}", describe(&out));
    let end = match success {
        Some(marker) => trace
            .stdout_line(marker)
            .unwrap_or_else(|| panic!("no {marker:?} on stdout in the trace {}", trace_file.display())),
        None => trace.calls.len(),
    };
    let problems = trace.durability_violations(root, end);
    assert!(
        problems.is_empty(),
        "{} durability problems under {} (trace: {}):\n{}",
        problems.len(),
        root.display(),
        trace_file.display(),
        problems.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    out
}
