//! Real Redis servers for the tests: the shared one of
//! `scripts/test-servers.sh ensure redis`, private ones for tests that need
//! a key space or settings of their own ([`RedisInstance`]), and a TCP
//! proxy that cuts or damages what a server sends ([`TcpFaultProxy`]).
//!
//! Fixtures are written with the real `redis-cli` (`--pipe` for bulk
//! loads), never with cairn's own client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::{free_port, repo_root};

/// The shared Redis test server: no password, no persistence, DEBUG enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisServer {
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The directory of `redis-server` and `redis-cli`.
    pub bin: PathBuf,
}

/// The shared Redis test server, started if it is not running.
/// `CAIRN_TEST_REDIS_URL` (`redis://HOST:PORT`) points the tests at another one.
///
/// # Panics
/// If the server cannot be started or reached; the message says why and how to fix it.
pub fn redis() -> RedisServer {
    static REDIS: OnceLock<Result<RedisServer, String>> = OnceLock::new();
    match REDIS.get_or_init(locate_redis) {
        Ok(server) => server.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn locate_redis() -> Result<RedisServer, String> {
    let text = match std::env::var("CAIRN_TEST_REDIS_URL").ok().filter(|v| !v.is_empty()) {
        Some(url) => {
            let rest = url.trim_start_matches("redis://");
            let (host, port) = rest.split_once(':').unwrap_or((rest, "6379"));
            format!("url={url}\nhost={host}\nport={port}\nbin=/usr/bin\n")
        }
        None => {
            let script = repo_root().join("scripts").join("test-servers.sh");
            let output = Command::new("bash")
                .arg(&script)
                .args(["ensure", "redis"])
                .current_dir(repo_root())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| {
                    format!("cannot get the Redis test server: cannot run {}: {e}", script.display())
                })?;
            if !output.status.success() {
                return Err(format!(
                    "cannot get the Redis test server: `{} ensure redis` failed ({}):\n{}\n\
                     Install redis-server with scripts/install-test-deps.sh, or set CAIRN_TEST_REDIS_URL.",
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
            .ok_or_else(|| format!("Redis test server settings lack `{key}=`:\n{text}"))
    };
    Ok(RedisServer {
        url: value("url")?,
        host: value("host")?,
        port: value("port")?.parse().map_err(|e| format!("bad port in the Redis settings: {e}"))?,
        bin: PathBuf::from(value("bin")?),
    })
}

/// `redis-cli` against `port`, with `args`; its output, trimmed. Panics
/// if it fails or answers with an error.
fn cli(bin: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new(bin.join("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    assert!(
        out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"),
        "redis-cli {args:?} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Bulk load through `redis-cli --pipe`: each command is its arguments.
fn pipe(bin: &Path, port: u16, commands: &mut dyn Iterator<Item = Vec<Vec<u8>>>) {
    let mut child = Command::new(bin.join("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running redis-cli --pipe");
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
        for args in commands {
            write!(stdin, "*{}\r\n", args.len()).unwrap();
            for a in args {
                write!(stdin, "${}\r\n", a.len()).unwrap();
                stdin.write_all(&a).unwrap();
                stdin.write_all(b"\r\n").unwrap();
            }
        }
    }
    let out = child.wait_with_output().expect("redis-cli --pipe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("errors: 0"), "redis-cli --pipe failed: {text}");
}

impl RedisServer {
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.bin, self.port, args)
    }

    pub fn pipe(&self, commands: impl IntoIterator<Item = Vec<Vec<u8>>>) {
        pipe(&self.bin, self.port, &mut commands.into_iter())
    }
}

/// A private `redis-server` for one test, on a free loopback port, with its
/// data directory `dir`; stopped when dropped. No persistence unless the
/// extra arguments say otherwise; DEBUG enabled; no diskless-sync delay.
#[derive(Debug)]
pub struct RedisInstance {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub pid: u32,
}

impl RedisInstance {
    /// # Panics
    /// If `redis-server` is missing or does not start.
    pub fn start(dir: &Path, extra: &[&str]) -> RedisInstance {
        let bin = redis().bin;
        std::fs::create_dir_all(dir).expect("creating the Redis data directory");
        for _ in 0..3 {
            let port = free_port();
            let pidfile = dir.join("test-redis.pid");
            let _ = std::fs::remove_file(&pidfile);
            let out = Command::new(bin.join("redis-server"))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes"])
                .arg("--dir")
                .arg(dir)
                .arg("--pidfile")
                .arg(&pidfile)
                .arg("--logfile")
                .arg(dir.join("test-redis.log"))
                .args(["--save", "", "--appendonly", "no", "--enable-debug-command", "yes"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(extra)
                .stdin(Stdio::null())
                .output()
                .expect("running redis-server");
            assert!(out.status.success(), "redis-server failed: {}", String::from_utf8_lossy(&out.stderr));
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok())
                {
                    let ping = Command::new(bin.join("redis-cli"))
                        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
                        .output()
                        .map(|o| o.stdout.starts_with(b"PONG"))
                        .unwrap_or(false);
                    if ping {
                        return RedisInstance { port, dir: dir.to_path_buf(), bin, pid };
                    }
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        break; // the port was taken meanwhile
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "redis-server did not start in {}: {}",
            dir.display(),
            std::fs::read_to_string(dir.join("test-redis.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server (see [`RedisServer::cli`]).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.bin, self.port, args)
    }

    pub fn pipe(&self, commands: impl IntoIterator<Item = Vec<Vec<u8>>>) {
        pipe(&self.bin, self.port, &mut commands.into_iter())
    }

    /// One field of `INFO` (`role`, `master_link_status`, ...).
    pub fn info(&self, field: &str) -> Option<String> {
        self.cli(&["INFO"]).lines().find_map(|l| {
            l.strip_prefix(field).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string())
        })
    }
}

impl Drop for RedisInstance {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}/cmdline", self.pid)).exists()
            && std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| !c.is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What [`TcpFaultProxy`] does to the bytes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// Close both connections after this many bytes from the server.
    CloseAfter(u64),
    /// Flip the lowest bit of the byte at this offset of what the server sends.
    FlipByteAt(u64),
}

/// A TCP proxy in front of a real server that cuts or damages what the
/// server sends, for every connection, and counts the bytes it passed on.
#[derive(Debug)]
pub struct TcpFaultProxy {
    pub port: u16,
    pub forwarded: Arc<AtomicU64>,
    /// Whether the fault has been applied (the test asserts it happened).
    pub applied: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl TcpFaultProxy {
    pub fn start(upstream_port: u16, fault: StreamFault) -> TcpFaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let applied = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, a, s) = (forwarded.clone(), applied.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let (f, a) = (f.clone(), a.clone());
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || downstream(server, client, fault, &f, &a));
            }
        });
        TcpFaultProxy { port, forwarded, applied, stop }
    }
}

fn downstream(
    mut server: TcpStream,
    mut client: TcpStream,
    fault: StreamFault,
    sent: &AtomicU64,
    applied: &AtomicBool,
) {
    let mut offset = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        match fault {
            StreamFault::CloseAfter(limit) if offset + n as u64 >= limit => {
                let keep = (limit - offset) as usize;
                let _ = client.write_all(&chunk[..keep]);
                sent.fetch_add(keep as u64, Ordering::Relaxed);
                applied.store(true, Ordering::Relaxed);
                break;
            }
            StreamFault::FlipByteAt(at) if (offset..offset + n as u64).contains(&at) => {
                chunk[(at - offset) as usize] ^= 0x01;
                applied.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        if client.write_all(chunk).is_err() {
            break;
        }
        offset += n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

impl Drop for TcpFaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
