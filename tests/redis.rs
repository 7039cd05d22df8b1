//! Redis backups against real `redis-server`s (Debian's 7.0): private
//! servers per test (`cairn_testkit::RedisInstance`, started on free
//! loopback ports; the shared one of `scripts/test-servers.sh ensure redis`
//! where a test does not need a key space of its own), fixtures written
//! with the real `redis-cli`, restored data loaded by a real server and
//! compared with `DEBUG DIGEST`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_testkit::{RedisInstance, StreamFault, TcpFaultProxy};
use common::*;

fn cmd(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

fn text(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// Every type in several encodings, in two databases: strings (small,
/// integer, compressible, a 100 MiB random value), lists (a listpack and a
/// quicklist of many nodes), sets (an intset and a table), sorted sets (a
/// listpack and a skiplist), hashes (a listpack and a table), a stream with
/// two consumer groups and pending entries, keys with TTLs, a function
/// library.
fn fill_every_type(r: &RedisInstance) {
    let mut c: Vec<Vec<Vec<u8>>> = Vec::new();
    let big = pseudo_random(7, 100 << 20);
    c.push(cmd(&[b"SET", b"str:big", &big]));
    drop(big);
    c.push(text(&["SET", "str:lzf", &"abcdefgh".repeat(5000)]));
    c.push(text(&["SET", "str:int", "123456789"]));
    for i in 0..200 {
        c.push(text(&["SET", &format!("str:small:{i}"), &format!("value {i}")]));
    }
    c.push(text(&["RPUSH", "list:small", "a", "2", "-3", "four", ""]));
    for i in 0..3000 {
        c.push(text(&["RPUSH", "list:big", &format!("element number {i} of the big list, padded")]));
    }
    for i in 0..200 {
        c.push(text(&["SADD", "set:int", &i.to_string()]));
    }
    for i in 0..1000 {
        c.push(text(&["SADD", "set:big", &format!("member-{i}")]));
    }
    c.push(text(&["ZADD", "zset:small", "1.5", "x", "-3", "y", "+inf", "z", "0", "w"]));
    for i in 0..500 {
        c.push(text(&["ZADD", "zset:big", &format!("{}.25", i * 7 % 91), &format!("player:{i}")]));
    }
    c.push(text(&["HSET", "hash:small", "name", "cairn", "n", "42", "neg", "-70000"]));
    for i in 0..1000 {
        c.push(text(&["HSET", "hash:big", &format!("field:{i}"), &format!("{}", i * i)]));
    }
    for i in 0..200 {
        c.push(text(&["XADD", "stream", "*", "event", &format!("e{i}"), "n", &i.to_string()]));
    }
    c.push(text(&["XGROUP", "CREATE", "stream", "g1", "0"]));
    c.push(text(&["XREADGROUP", "GROUP", "g1", "alice", "COUNT", "50", "STREAMS", "stream", ">"]));
    c.push(text(&["XREADGROUP", "GROUP", "g1", "bob", "COUNT", "20", "STREAMS", "stream", ">"]));
    c.push(text(&["XGROUP", "CREATE", "stream", "g2", "$"]));
    for i in 0..50 {
        c.push(text(&["SET", &format!("ttl:{i}"), "volatile", "EX", "3600"]));
    }
    c.push(text(&["HSET", "ttl:hash", "f", "v"]));
    c.push(text(&["PEXPIRE", "ttl:hash", "7200000"]));
    c.push(text(&["SELECT", "3"]));
    c.push(text(&["SET", "other:string", "in db 3"]));
    c.push(text(&["RPUSH", "other:list", "x", "y"]));
    c.push(text(&["SADD", "other:set", "p", "q"]));
    c.push(text(&["SELECT", "0"]));
    r.pipe(c);
    // Acknowledge some of alice's entries, so the group's pending list and hers differ.
    let ids = r.cli(&["XRANGE", "stream", "-", "+", "COUNT", "5"]);
    let first: Vec<&str> = ids.lines().filter(|l| l.contains('-') && l.len() > 10).take(3).collect();
    assert_eq!(first.len(), 3, "{ids}");
    let mut ack = vec!["XACK", "stream", "g1"];
    ack.extend(first);
    r.cli(&ack);
    r.cli(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=cairnlib\nredis.register_function('hello', function() return 'hi' end)",
    ]);
}

fn total_keys(r: &RedisInstance) -> u64 {
    r.cli(&["INFO", "keyspace"])
        .lines()
        .filter_map(|l| {
            l.split_once(":keys=").and_then(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
        })
        .sum()
}

fn snapshot_count(env: &Env) -> usize {
    env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().len()
}

/// Stops a server cairn started (pid from the restore's report) and waits until it has gone.
fn stop_pid(pid: u64) {
    let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        assert!(Instant::now() < deadline, "redis-server {pid} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Backup, restore into a new data directory with the server started,
/// comparison with the snapshot, and the data loaded by a plain
/// redis-server: `DEBUG DIGEST` equal to the source's, TTLs kept, functions
/// kept; a change on the restored side is found by `verify --against`.
#[test]
fn every_type_round_trips_through_a_restored_data_directory() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    fill_every_type(&src);
    let keys = total_keys(&src);
    let backup = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()]);
    assert_eq!(
        (backup["kind"].as_str(), backup["mode"].as_str()),
        (Some("redis"), Some("physical")),
        "{backup}"
    );
    assert_eq!(backup["exit_code"], 0, "{backup}");
    assert_eq!(backup["objects"]["keys"].as_u64(), Some(keys), "{backup}");
    assert_eq!(backup["objects"]["databases"], 2, "{backup}");
    assert_eq!(backup["objects"]["expires"], 51, "{backup}");
    assert_eq!(backup["objects"]["functions"], 1, "{backup}");
    assert!(backup["bytes"]["read"].as_u64().unwrap() > 100 << 20, "{backup}");
    assert_eq!(backup["details"]["replication"]["diskless"], true, "streamed from the fork: {backup}");
    let db0 = &backup["details"]["databases"]["0"]["types"];
    for kind in ["string", "list", "set", "zset", "hash", "stream"] {
        assert!(db0[kind]["keys"].as_u64().unwrap() > 0, "no {kind} counted: {backup}");
    }
    let snap = backup["snapshot"].as_str().unwrap().to_string();
    // Read back: every blob, and the envelope's streams.
    env.cairn_ok(&["verify", &snap]);

    let dir = env.path("restored");
    let port = cairn_testkit::free_port();
    let restore = env.cairn_json(&[
        "restore",
        "--json",
        &snap,
        "--redis-data-dir",
        dir.to_str().unwrap(),
        "--start",
        "--port",
        &port.to_string(),
        "--verify",
    ]);
    let pid = restore["details"]["server"]["pid"].as_u64().expect("the started server's pid");
    assert!(restore["objects"]["verified_objects"].as_u64().unwrap() > 10, "{restore}");
    assert!(dir.join("dump.rdb").is_file());
    let target = format!("redis://127.0.0.1:{port}");
    let verify = env.cairn_json(&["verify", "--json", &snap, "--against", &target]);
    assert_eq!(verify["objects"]["differing"], 0, "{verify}");
    stop_pid(pid);

    // A plain redis-server loads it (DEBUG enabled, so the digests can be compared).
    let restored = RedisInstance::start(&dir, &[]);
    assert_eq!(total_keys(&restored), keys);
    assert_eq!(restored.cli(&["DEBUG", "DIGEST"]), src.cli(&["DEBUG", "DIGEST"]), "the data differs");
    for key in ["ttl:0", "ttl:49", "ttl:hash"] {
        let a: i64 = src.cli(&["PTTL", key]).parse().unwrap();
        let b: i64 = restored.cli(&["PTTL", key]).parse().unwrap();
        assert!(a > 0 && (a - b).abs() < 1000, "{key}: TTL {a} ms on the source, {b} ms restored");
    }
    assert!(restored.cli(&["FCALL", "hello", "0"]).contains("hi"), "the function library is missing");
    assert_eq!(restored.cli(&["XPENDING", "stream", "g1"]), src.cli(&["XPENDING", "stream", "g1"]));

    // A change on the restored side is a difference, named.
    restored.cli(&["SET", "str:small:7", "changed"]);
    let out = env.cairn(&["verify", &snap, "--against", &restored.url()]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("db0") && report.contains("CONTENT DIFFERS"), "{}", describe(&out));
    assert!(
        report.contains("db3") && report.lines().any(|l| l.starts_with("db3 ") && l.ends_with("ok")),
        "{report}"
    );
}

/// A scratch-sized night: 40 000 keys, 10 of them rewritten; the second
/// backup adds a small fraction of what it read. restic restores the same
/// `dump.rdb`.
#[test]
fn the_next_night_stores_little() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    src.pipe((0..40_000u64).map(|i| cmd(&[b"SET", format!("key:{i}").as_bytes(), &pseudo_random(i, 200)])));
    let first = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()]);
    let read = first["bytes"]["read"].as_u64().unwrap();
    assert!(read > 8 << 20, "{first}");
    src.pipe(
        (0..10u64)
            .map(|i| cmd(&[b"SET", format!("key:{}", i * 3917).as_bytes(), &pseudo_random(i + 99, 200)])),
    );
    let second = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()]);
    let added = second["bytes"]["added"].as_u64().unwrap();
    // The same keys and sizes; only the header's fields (memory used, time) differ.
    assert!(second["bytes"]["read"].as_u64().unwrap().abs_diff(read) < 64, "{first}\n{second}");
    assert!(added * 10 < read, "10 rewritten keys added {added} of {read} bytes (10% or more)");
    assert_eq!(snapshot_count(&env), 2);
    // restic reads the same snapshot: its dump.rdb is the one cairn restores.
    let dir = env.path("restored");
    env.cairn_ok(&["restore", "latest", "--redis-data-dir", dir.to_str().unwrap()]);
    let by_restic = env.path("by-restic");
    env.restic_ok(&["restore", "latest", "--target", by_restic.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(by_restic.join("dump.rdb")).unwrap(),
        std::fs::read(dir.join("dump.rdb")).unwrap()
    );
}

/// A server whose replication stream ends in the middle of the RDB, and one
/// whose RDB arrives with a byte flipped: the backup fails with one line
/// saying which, and writes no snapshot.
#[test]
fn a_truncated_or_damaged_rdb_fails_the_backup_and_writes_no_snapshot() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    src.pipe((0..20_000u64).map(|i| cmd(&[b"SET", format!("key:{i}").as_bytes(), &pseudo_random(i, 200)])));
    for (fault, expected) in [
        (StreamFault::CloseAfter(1_000_000), "closed the replication stream after"),
        (StreamFault::FlipByteAt(2_000_000), "is unusable"),
    ] {
        let proxy = TcpFaultProxy::start(src.port, fault);
        let out = env.cairn(&["backup", "redis", "--url", &format!("redis://127.0.0.1:{}", proxy.port)]);
        assert!(proxy.applied.load(std::sync::atomic::Ordering::Relaxed), "{fault:?} never happened");
        assert_eq!(out.status.code(), Some(1), "{fault:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.contains(expected)).collect();
        assert_eq!(errors.len(), 1, "{fault:?}: one line saying so: {}", describe(&out));
        assert_eq!(snapshot_count(&env), 0, "{fault:?} wrote a snapshot");
    }
    // Straight from the server, the same data backs up.
    env.cairn_ok(&["backup", "redis", "--url", &src.url()]);
    assert_eq!(snapshot_count(&env), 1);
}

/// An ACL user with only the replication commands, its password in a file
/// (a `kind: redis` source in cairn.yaml): the backup works and the
/// password appears nowhere, even with debug logs; a user without the
/// permission and a wrong password fail with one line saying what to do.
#[test]
fn acl_users_with_a_password_file_and_the_password_is_never_printed() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    const PW: &str = "pw-Kq8-zz91-secret";
    src.cli(&["ACL", "SETUSER", "backup", "on", &format!(">{PW}"), "+psync", "+replconf", "+sync"]);
    src.cli(&["ACL", "SETUSER", "reader", "on", &format!(">{PW}"), "+get", "~*"]);
    src.cli(&["CONFIG", "SET", "requirepass", "default-pass-xyz"]);
    src.cli(&["-a", "default-pass-xyz", "--no-auth-warning", "SET", "k", "v"]);
    let secret = env.path("redis-password");
    std::fs::write(&secret, format!("{PW}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = env.path("cairn.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: cache\n    kind: redis\n    url: redis://backup@127.0.0.1:{}\n    password_file: {}\n",
            src.port,
            secret.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = env.cairn(&["--config", cfg, "-vv", "backup", "--json", "--source", "cache"]);
    assert!(out.status.success(), "{}", describe(&out));
    let all = describe(&out);
    assert!(!all.contains(PW), "the password was printed: {all}");
    assert_eq!(snapshot_count(&env), 1);

    // The password in the URL works too, and is masked.
    let url = format!("redis://backup:{PW}@127.0.0.1:{}", src.port);
    let out = env.cairn(&["-vv", "backup", "redis", "--url", &url]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!describe(&out).contains(PW), "the password was printed: {}", describe(&out));

    let reader = format!("redis://reader@127.0.0.1:{}", src.port);
    let out =
        env.cairn(&["backup", "redis", "--url", &reader, "--redis-password-file", secret.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ACL SETUSER reader +psync +replconf +sync"), "{}", describe(&out));
    assert!(!describe(&out).contains(PW));

    let wrong = env.path("wrong-password");
    std::fs::write(&wrong, "not-the-password-777").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = env.cairn(&[
        "backup",
        "redis",
        "--url",
        &format!("redis://backup@127.0.0.1:{}", src.port),
        "--redis-password-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the login"), "{}", describe(&out));
    assert!(!describe(&out).contains("not-the-password-777"));
    assert_eq!(snapshot_count(&env), 2, "failed backups wrote snapshots");
}

/// SIGTERM while the RDB streams (the server is slowed to a millisecond per
/// key): exit 143, no snapshot, no lock left.
#[test]
fn sigterm_mid_backup_exits_143_without_a_snapshot() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &["--rdb-key-save-delay", "1000"]);
    src.pipe((0..10_000u64).map(|i| cmd(&[b"SET", format!("key:{i}").as_bytes(), &pseudo_random(i, 100)])));
    let child = env
        .cairn_cmd()
        .args(["backup", "redis", "--url", &src.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server's fork is writing keys to cairn: mid-RDB.
    let deadline = Instant::now() + Duration::from_secs(60);
    while src.info("current_save_keys_processed").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the RDB transfer never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "stopping took {:?}", started.elapsed());
    assert_eq!(snapshot_count(&env), 0);
    assert!(repo_files(&env.repo, "locks").is_empty(), "the lock was left behind");
}

/// A replica backs up like its primary; the snapshot matches the primary.
#[test]
fn a_replica_is_backed_up_and_matches_its_primary() {
    let env = Env::new();
    env.init();
    let primary = RedisInstance::start(&env.path("primary"), &[]);
    primary.pipe(
        (0..2000u64).map(|i| cmd(&[b"HSET", format!("h:{i}").as_bytes(), b"f", &pseudo_random(i, 64)])),
    );
    let replica =
        RedisInstance::start(&env.path("replica"), &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.info("master_link_status").as_deref() != Some("up") || total_keys(&replica) != 2000 {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let backup = env.cairn_json(&["backup", "--json", "redis", "--url", &replica.url()]);
    assert_eq!(backup["objects"]["keys"], 2000, "{backup}");
    let snap = backup["snapshot"].as_str().unwrap();
    let verify = env.cairn_json(&["verify", "--json", snap, "--against", &primary.url()]);
    assert_eq!(verify["objects"]["differing"], 0, "{verify}");
}

/// Refusals and plans write nothing: a dry run, an existing dump.rdb
/// without --overwrite, a live target; a damaged blob in the repository
/// stops the restore (exit 4) before any dump.rdb is in place.
#[test]
fn restores_refuse_plan_and_stop_at_damage_without_leaving_a_dump() {
    let env = Env::new();
    env.init();
    let redis = cairn_testkit::redis();
    // The shared server: what it holds does not matter here.
    redis.cli(&["SET", &format!("restore-test:{}", std::process::id()), &"x".repeat(1000)]);
    let snap = env.cairn_json(&["backup", "--json", "redis", "--url", &redis.url])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = env.path("data");

    let plan =
        env.cairn_json(&["restore", "--json", &snap, "--redis-data-dir", dir.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert!(plan["details"]["plan"]["rdb_bytes"].as_u64().unwrap() > 0, "{plan}");
    assert!(!dir.exists(), "a dry run created the directory");

    let out = env.cairn(&["restore", &snap, "--redis-data-dir", dir.to_str().unwrap(), "--match", "a*"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to redis://"), "{}", describe(&out));
    let out = env.cairn(&["restore", &snap, "--redis-data-dir", dir.to_str().unwrap(), "--verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --start"), "{}", describe(&out));
    assert!(!dir.exists(), "a refused restore created the directory");

    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dump.rdb"), b"someone's data").unwrap();
    let out = env.cairn(&["restore", &snap, "--redis-data-dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"), "{}", describe(&out));
    assert_eq!(std::fs::read(dir.join("dump.rdb")).unwrap(), b"someone's data");

    // A big value spans many blobs; damage one in the middle.
    let src = RedisInstance::start(&env.path("src"), &[]);
    src.pipe([cmd(&[b"SET", b"big", &pseudo_random(3, 4 << 20)])]);
    let big = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    damage_blob_of_file(&env, &big, "dump.rdb");
    let out = env.cairn(&["restore", &big, "--redis-data-dir", dir.to_str().unwrap(), "--overwrite"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged repository object data/"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(dir.join("dump.rdb")).unwrap(), b"someone's data", "the old file was replaced");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["dump.rdb"], "a partial file was left behind");

    // With --overwrite, an intact snapshot replaces it.
    env.cairn_ok(&["restore", &snap, "--redis-data-dir", dir.to_str().unwrap(), "--overwrite"]);
    assert!(std::fs::read(dir.join("dump.rdb")).unwrap().starts_with(b"REDIS00"));
}

/// Keys of every type under `t:`, hashes under `user:`, strings with a TTL
/// under `session:`, and others that a pattern leaves out, in databases 0
/// and 2; how many keys `user:*`/`session:*`/`t:*` select in database 0.
fn fill_for_live_restore(r: &RedisInstance) -> usize {
    let mut c: Vec<Vec<Vec<u8>>> = Vec::new();
    for i in 0..300 {
        c.push(text(&["HSET", &format!("user:{i}"), "name", &format!("n{i}"), "age", &i.to_string()]));
        c.push(text(&["SET", &format!("cache:{i}"), "left out"]));
    }
    for i in 0..100 {
        c.push(text(&["SET", &format!("session:{i}"), &format!("s{i}"), "EX", &(3600 + i).to_string()]));
    }
    c.push(cmd(&[b"SET", b"t:big", &pseudo_random(11, 3 << 20)]));
    c.push(text(&["SET", "t:lzf", &"compressible ".repeat(2000)]));
    c.push(text(&["SET", "t:int", "-987654"]));
    for i in 0..1000 {
        c.push(text(&["RPUSH", "t:list", &format!("element {i}")]));
        c.push(text(&["SADD", "t:set", &format!("m{i}")]));
        c.push(text(&["ZADD", "t:zset", &format!("{}.5", i % 37), &format!("p{i}")]));
        c.push(text(&["HSET", "t:hash", &format!("f{i}"), &i.to_string()]));
    }
    c.push(text(&["SADD", "t:intset", "1", "2", "3", "-70000"]));
    for i in 0..100 {
        c.push(text(&["XADD", "t:stream", "*", "n", &i.to_string()]));
    }
    c.push(text(&["XGROUP", "CREATE", "t:stream", "g", "0"]));
    c.push(text(&["XREADGROUP", "GROUP", "g", "c1", "COUNT", "30", "STREAMS", "t:stream", ">"]));
    c.push(text(&["SET", "t:ttl", "v", "PX", "5000000"]));
    c.push(text(&["SELECT", "2"]));
    c.push(text(&["SET", "user:in-db2", "from db 2"]));
    c.push(text(&["SET", "cache:in-db2", "left out"]));
    r.pipe(c);
    300 + 100 + 10
}

fn keys_of(r: &RedisInstance, db: &str, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> =
        r.cli(&["-n", db, "--scan", "--pattern", pattern]).lines().map(str::to_string).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// A pattern and db-map restore into a live server that holds keys of its
/// own: the chosen keys arrive (DEBUG DIGEST-VALUE equal to the source's,
/// TTLs within a second), nothing else does, the target's own keys stay.
/// Again without --replace: refused before anything is written, naming
/// the keys; with --replace: the changed key is replaced. A damaged blob
/// writes nothing, even with --replace.
#[test]
fn live_restore_by_pattern_and_db_map_keeps_values_and_ttls() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    let chosen = fill_for_live_restore(&src);
    let backup = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()]);
    let snap = backup["snapshot"].as_str().unwrap().to_string();
    let dst = RedisInstance::start(&env.path("dst"), &[]);
    dst.cli(&["-n", "3", "SET", "own:key", "the target's"]);
    dst.cli(&["-n", "0", "SET", "user:0", "in db 0 of the target: not where db 0 goes"]);
    let dst_url = dst.url();
    let live = |extra: &[&str]| {
        let mut args = vec!["restore", "--json", &snap, "--to", &dst_url];
        args.extend(["--match", "user:*", "--match", "session:*", "--match", "t:*", "--db-map", "0=3"]);
        args.extend(extra);
        env.cairn(&args)
    };

    let out = live(&["--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    let plan = cairn_testkit::conformance::last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(plan["objects"]["keys"].as_u64(), Some(chosen as u64 + 1), "{plan}");
    assert_eq!(dst.cli(&["-n", "3", "DBSIZE"]), "1", "a dry run wrote");

    let out = live(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    let report = cairn_testkit::conformance::last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["objects"]["restored"].as_u64(), Some(chosen as u64 + 1), "{report}");
    let restored = keys_of(&dst, "3", "*");
    assert_eq!(restored.len(), chosen + 1, "{restored:?}");
    assert!(restored.iter().all(|k| !k.starts_with("cache:")), "a key outside the patterns came");
    assert_eq!(dst.cli(&["-n", "3", "GET", "own:key"]), "the target's");
    assert_eq!(dst.cli(&["-n", "0", "DBSIZE"]), "1", "db 0 was written to");
    assert_eq!(
        dst.cli(&["-n", "2", "GET", "user:in-db2"]),
        "from db 2",
        "unmapped databases keep their number"
    );
    assert_eq!(dst.cli(&["-n", "2", "EXISTS", "cache:in-db2"]), "0");
    for key in restored.iter().filter(|k| *k != "own:key") {
        let a = src.cli(&["-n", "0", "DEBUG", "DIGEST-VALUE", key]);
        let b = dst.cli(&["-n", "3", "DEBUG", "DIGEST-VALUE", key]);
        assert_eq!(a, b, "{key} differs");
        let ttl_a: i64 = src.cli(&["-n", "0", "PTTL", key]).parse().unwrap();
        let ttl_b: i64 = dst.cli(&["-n", "3", "PTTL", key]).parse().unwrap();
        assert!(
            (ttl_a - ttl_b).abs() < 1000 && (ttl_a > 0) == (ttl_b > 0),
            "{key}: TTL {ttl_a} ms, restored {ttl_b} ms"
        );
    }
    assert!(dst.cli(&["-n", "3", "PTTL", "session:7"]).parse::<i64>().unwrap() > 3_000_000);
    assert_eq!(dst.cli(&["-n", "3", "XPENDING", "t:stream", "g"]), src.cli(&["XPENDING", "t:stream", "g"]));

    // Again: every key exists now. Refused, one line, nothing written.
    dst.cli(&["-n", "3", "HSET", "user:5", "name", "changed on the target"]);
    let before = dst.cli(&["DEBUG", "DIGEST"]);
    let out = live(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("already holds")).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].contains(&format!("{} of the keys", chosen + 1)) && lines[0].contains("--replace"),
        "{}",
        lines[0]
    );
    assert_eq!(dst.cli(&["DEBUG", "DIGEST"]), before, "a refused restore wrote");
    let out = live(&["--replace"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        dst.cli(&["-n", "3", "DEBUG", "DIGEST-VALUE", "user:5"]),
        src.cli(&["-n", "0", "DEBUG", "DIGEST-VALUE", "user:5"])
    );

    // A damaged blob (in the big value): exit 4, not one key written.
    damage_blob_of_file(&env, &snap, "dump.rdb");
    let fresh = RedisInstance::start(&env.path("fresh"), &[]);
    fresh.cli(&["SET", "t:lzf", "the target's"]);
    let before = fresh.cli(&["DEBUG", "DIGEST"]);
    let out = env.cairn(&["restore", &snap, "--to", &fresh.url(), "--replace"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"), "{}", describe(&out));
    assert_eq!(fresh.cli(&["DEBUG", "DIGEST"]), before, "a damaged snapshot wrote");
    assert_eq!(fresh.cli(&["DBSIZE"]), "1");
}

/// `--logical`: SCAN + DUMP + PEXPIRETIME, stored as an RDB of its own
/// (mode redis/logical). A pattern-and-database backup holds just those
/// keys and restores into a live server with --db-map; a whole one
/// compares equal with `verify --against` and loads into a new instance
/// whose `DEBUG DIGEST` is the source's.
#[test]
fn logical_backups_select_keys_and_restore_like_physical_ones() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    fill_for_live_restore(&src);
    let part = env.cairn_json(&[
        "backup",
        "--json",
        "redis",
        "--url",
        &src.url(),
        "--logical",
        "--match",
        "user:*",
        "--db",
        "0",
    ]);
    assert_eq!((part["kind"].as_str(), part["mode"].as_str()), (Some("redis"), Some("logical")), "{part}");
    assert_eq!(part["objects"]["keys"], 300, "{part}");
    assert_eq!(part["objects"]["databases"], 1, "{part}");
    let out = env.cairn(&["backup", "redis", "--url", &src.url(), "--db", "0"]);
    assert_eq!(out.status.code(), Some(2), "--db without --logical: {}", describe(&out));

    let dst = RedisInstance::start(&env.path("dst"), &[]);
    let snap = part["snapshot"].as_str().unwrap();
    let restored = env.cairn_json(&["restore", "--json", snap, "--to", &dst.url(), "--db-map", "0=5"]);
    assert_eq!(restored["objects"]["restored"], 300, "{restored}");
    assert_eq!(dst.cli(&["-n", "5", "DBSIZE"]), "300");
    for key in ["user:0", "user:123", "user:299"] {
        assert_eq!(
            dst.cli(&["-n", "5", "DEBUG", "DIGEST-VALUE", key]),
            src.cli(&["-n", "0", "DEBUG", "DIGEST-VALUE", key])
        );
    }

    let whole = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url(), "--logical"]);
    assert_eq!(whole["objects"]["keys"].as_u64(), Some(total_keys(&src)), "{whole}");
    let snap = whole["snapshot"].as_str().unwrap().to_string();
    let verify = env.cairn_json(&["verify", "--json", &snap, "--against", &src.url()]);
    assert_eq!(verify["objects"]["differing"], 0, "{verify}");
    let dir = env.path("restored");
    let port = cairn_testkit::free_port();
    let restore = env.cairn_json(&[
        "restore",
        "--json",
        &snap,
        "--redis-data-dir",
        dir.to_str().unwrap(),
        "--start",
        "--port",
        &port.to_string(),
        "--verify",
    ]);
    let pid = restore["details"]["server"]["pid"].as_u64().expect("the started server's pid");
    stop_pid(pid);
    let loaded = RedisInstance::start(&dir, &[]);
    assert_eq!(loaded.cli(&["DEBUG", "DIGEST"]), src.cli(&["DEBUG", "DIGEST"]), "the data differs");
}

/// A writer runs throughout the backup, each write a transaction that adds
/// `seq:N` and sets `last` to N (N counting up). The RDB is the fork's, so
/// the snapshot must hold exactly `seq:0..=last` — a prefix, with nothing
/// after `last` and nothing missing before it — and the fork point must lie
/// between what was written when the backup began and when it ended. The
/// server is slowed to 200 µs per key while it writes the RDB, so the
/// writer keeps writing while the RDB streams.
#[test]
fn a_backup_under_a_writer_is_consistent_to_the_fork_point() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &["--rdb-key-save-delay", "200"]);
    const FILL: u64 = 10_000;
    src.pipe((0..FILL).map(|i| cmd(&[b"SET", format!("fill:{i}").as_bytes(), &pseudo_random(i, 100)])));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, port) = (stop.clone(), written.clone(), src.port);
        std::thread::spawn(move || {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let expected = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+OK\r\n";
            let mut reply = [0u8; 37];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("seq:{n}"), n.to_string());
                let mut out = Vec::new();
                for args in [
                    text(&["MULTI"]),
                    text(&["SET", &key, &value]),
                    text(&["SET", "last", &value]),
                    text(&["EXEC"]),
                ] {
                    out.extend(format!("*{}\r\n", args.len()).into_bytes());
                    for a in args {
                        out.extend(format!("${}\r\n", a.len()).into_bytes());
                        out.extend(a);
                        out.extend(b"\r\n");
                    }
                }
                conn.write_all(&out).unwrap();
                conn.read_exact(&mut reply).unwrap();
                assert_eq!(&reply, expected, "the writer's transaction failed");
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "the writer never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = written.load(Ordering::Relaxed);
    let backup = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()]);
    let after = written.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let snap = backup["snapshot"].as_str().unwrap().to_string();
    env.cairn_ok(&["verify", &snap]);

    let dir = env.path("restored");
    env.cairn_ok(&["restore", &snap, "--redis-data-dir", dir.to_str().unwrap()]);
    let restored = RedisInstance::start(&dir, &[]);
    let last: u64 = restored.cli(&["GET", "last"]).parse().expect("last is in the backup");
    let seq = keys_of(&restored, "0", "seq:*");
    assert_eq!(seq.len() as u64, last + 1, "the seq keys are not the prefix 0..={last}");
    assert_eq!(restored.cli(&["GET", &format!("seq:{last}")]), last.to_string());
    assert_eq!(restored.cli(&["EXISTS", &format!("seq:{}", last + 1)]), "0");
    assert_eq!(backup["objects"]["keys"].as_u64(), Some(FILL + 1 + last + 1), "{backup}");
    assert!(
        before <= last + 1 && last + 1 < after,
        "the fork point ({} writes) is not between the backup's start ({before}) and end ({after})",
        last + 1
    );
}

/// A live restore as an ACL user whose password is in a file: with
/// `+restore +exists +select +time` it works and the password is printed
/// nowhere; a user without `+restore` fails with one line naming the
/// `ACL SETUSER` to run, and nothing is written.
#[test]
fn live_restores_log_in_as_acl_users_and_name_missing_permissions() {
    let env = Env::new();
    env.init();
    let src = RedisInstance::start(&env.path("src"), &[]);
    src.pipe((0..50u64).map(|i| cmd(&[b"SET", format!("k:{i}").as_bytes(), &pseudo_random(i, 50)])));
    let snap = env.cairn_json(&["backup", "--json", "redis", "--url", &src.url()])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let dst = RedisInstance::start(&env.path("dst"), &[]);
    const PW: &str = "restore-pw-77-Qx-secret";
    dst.cli(&[
        "ACL",
        "SETUSER",
        "restorer",
        "on",
        &format!(">{PW}"),
        "+restore",
        "+exists",
        "+select",
        "+time",
        "~*",
    ]);
    dst.cli(&["ACL", "SETUSER", "lacking", "on", &format!(">{PW}"), "+exists", "+select", "+time", "~*"]);
    let secret = env.path("pw");
    std::fs::write(&secret, format!("{PW}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let secret = secret.to_str().unwrap();

    let out = env.cairn(&[
        "restore",
        &snap,
        "--to",
        &format!("redis://lacking@127.0.0.1:{}", dst.port),
        "--redis-password-file",
        secret,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(lines[0].contains("ACL SETUSER lacking +restore"), "{}", describe(&out));
    assert_eq!(dst.cli(&["DBSIZE"]), "0");

    let out = env.cairn(&[
        "-vv",
        "restore",
        &snap,
        "--to",
        &format!("redis://restorer@127.0.0.1:{}", dst.port),
        "--redis-password-file",
        secret,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!describe(&out).contains(PW), "the password was printed");
    assert_eq!(dst.cli(&["DBSIZE"]), "50");
    assert_eq!(dst.cli(&["DEBUG", "DIGEST"]), src.cli(&["DEBUG", "DIGEST"]));
}
