//! PostgreSQL logical backups against a real server: the shared scratch
//! cluster from `scripts/test-servers.sh ensure postgres`, the real client
//! tools (`pg_dump`, `pg_restore`, `psql`, `pgbench`), real data.

mod common;

use cairn_testkit::PgServer;
use common::*;

/// A pgbench database plus the awkward bits a dump must carry: a second
/// schema, a generated column, a sequence, a comment, a view, a foreign key.
fn make_database(pg: &PgServer, scale: u32) -> String {
    let db = unique_db("src");
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    let out = pg.tool("pgbench").args(["-i", "-q", "-s", &scale.to_string(), &db]).output().unwrap();
    assert!(out.status.success(), "pgbench -i failed: {}", describe(&out));
    pg.psql(
        &db,
        "CREATE SCHEMA shop;
         CREATE TABLE shop.customers (id serial PRIMARY KEY, name text NOT NULL,
             doubled int GENERATED ALWAYS AS (id * 2) STORED);
         CREATE TABLE shop.orders (id bigserial PRIMARY KEY,
             customer int NOT NULL REFERENCES shop.customers(id), note text, total numeric(10,2));
         CREATE INDEX orders_customer ON shop.orders (customer);
         COMMENT ON TABLE shop.orders IS 'every order';
         INSERT INTO shop.customers (name) SELECT 'customer ' || i FROM generate_series(1, 500) i;
         INSERT INTO shop.orders (customer, note, total)
             SELECT 1 + i % 500, E'tab\\there, newline\\nand \\\\ backslash ' || i, i * 1.25
             FROM generate_series(1, 3000) i;
         CREATE VIEW shop.big_orders AS SELECT * FROM shop.orders WHERE total > 100;",
    );
    db
}

fn restore_args<'a>(snapshot: &'a str, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["restore", snapshot, "--to", url];
    args.extend_from_slice(extra);
    args
}

#[test]
fn logical_round_trip_keeps_every_row_and_object() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = make_database(&pg, 1);
    let backup = env.cairn_json(&["backup", "--json", "postgres", "--url", &pg.db_url(&src)]);
    assert_eq!(backup["kind"], "postgres");
    assert_eq!(backup["objects"]["tables"], 6, "{backup}");
    let expected_rows = 100_000 + 1 + 10 + 500 + 3000;
    assert_eq!(backup["objects"]["rows"], expected_rows, "{backup}");
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();

    // The snapshot is an ordinary restic snapshot: restic verifies every byte.
    env.restic_ok(&["check", "--read-data"]);

    let copy = unique_db("copy");
    let url = pg.db_url(&copy);
    let done = env.cairn_json(&restore_args(&snapshot, &url, &["--verify", "--json"]));
    assert_eq!(done["objects"]["rows"], expected_rows, "{done}");
    assert_eq!(done["objects"]["verified_tables"], 6, "{done}");
    assert_eq!(table_digests(&|sql| pg.psql(&src, sql)), table_digests(&|sql| pg.psql(&copy, sql)));
    // Objects beyond rows: view, comment, foreign key, sequence position, index.
    assert_eq!(
        pg.psql(&copy, "SELECT count(*) FROM shop.big_orders"),
        pg.psql(&src, "SELECT count(*) FROM shop.big_orders")
    );
    assert_eq!(pg.psql(&copy, "SELECT obj_description('shop.orders'::regclass)"), "every order");
    assert_eq!(pg.psql(&copy, "SELECT nextval('shop.orders_id_seq')"), "3001");
    let fk = pg.psql(
        &copy,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'shop.orders'::regclass",
    );
    assert_eq!(fk, "1");
    let idx = pg.psql(&copy, "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer'");
    assert_eq!(idx, "1");
    // A drill's check: the restored database against the snapshot's manifest.
    let check = env.cairn_json(&["verify", &snapshot, "--against", &url, "--json"]);
    assert_eq!(check["exit_code"], 0, "{check}");
    pg.psql(&copy, "UPDATE shop.customers SET name = 'changed' WHERE id = 7; DELETE FROM pgbench_history");
    pg.psql(&copy, "DELETE FROM pgbench_tellers WHERE tid = 3");
    let out = env.cairn(&["verify", &snapshot, "--against", &url]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shop.customers") && text.contains("CONTENT DIFFERS"), "{text}");
    assert!(text.contains("ROWS 9, expected 10"), "{text}");
    // The manifest's row counts were taken in the dump's snapshot.
    let manifest = env.cairn_ok(&["ls", "--json", &snapshot]);
    assert!(manifest.contains("/databases/") && manifest.contains("schema.dump"), "{manifest}");
}

#[test]
fn big_tables_are_copied_in_block_ranges_and_verified_range_by_range() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = unique_db("parts");
    pg.psql("postgres", &format!("CREATE DATABASE {src}"));
    // About 5600 heap blocks: two ranges of 4096. The child table's rows
    // belong to it alone; a range copy must not pull them into the parent.
    // The first range's rows are all deleted (and not vacuumed), so that
    // range copies to nothing.
    pg.psql(
        &src,
        "CREATE TABLE big (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO big SELECT i, repeat(md5(i::text), 5) FROM generate_series(1, 240000) i;
         CREATE TABLE big_child (extra int) INHERITS (big);
         INSERT INTO big_child SELECT i, 'child', i FROM generate_series(1, 50) i;
         DELETE FROM ONLY big WHERE ctid < '(4096,0)'::tid;",
    );
    let blocks: u64 = pg.psql(&src, "SELECT pg_relation_size('big') / 8192").parse().unwrap();
    assert!(blocks > 4096 && blocks < 8192, "{blocks} blocks");
    let rows: u64 = pg.psql(&src, "SELECT count(*) FROM ONLY big").parse().unwrap();
    assert!(rows > 0 && rows < 100_000, "{rows} rows left");

    // The test server's shared_buffers is 128MB (16384 blocks): the table is
    // over a quarter of it, so by default it is one plain COPY, which reads
    // through a ring buffer and leaves the cache alone.
    let whole = env.cairn_json(&["backup", "--json", "postgres", "--url", &pg.db_url(&src)]);
    assert_eq!(whole["objects"]["rows"], rows + 50, "{whole}");
    let files = env.cairn_ok(&["ls", whole["snapshot"].as_str().unwrap()]);
    assert!(files.contains("public.big.copy") && !files.contains("part0001"), "{files}");

    let backup =
        env.cairn_json(&["backup", "--json", "postgres", "--split-large-tables", "--url", &pg.db_url(&src)]);
    assert_eq!(backup["objects"]["rows"], rows + 50, "{rows} + 50 rows expected: {backup}");
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();
    let files = env.cairn_ok(&["ls", &snapshot]);
    for part in ["public.big.part0001.copy", "public.big.part0002.copy"] {
        assert!(files.contains(part), "{part} missing from:\n{files}");
    }
    assert!(!files.contains("public.big.copy") && files.contains("public.big_child.copy"), "{files}");
    env.restic_ok(&["check", "--read-data"]);

    let copy = unique_db("parts_copy");
    let url = pg.db_url(&copy);
    let done = env.cairn_json(&restore_args(&snapshot, &url, &["--verify", "--json"]));
    assert_eq!(done["objects"]["rows"], rows + 50, "{done}");
    assert_eq!(done["objects"]["verified_tables"], 2, "{done}");
    assert_eq!(table_digests(&|sql| pg.psql(&src, sql)), table_digests(&|sql| pg.psql(&copy, sql)));
    let check = env.cairn_json(&["verify", &snapshot, "--against", &url, "--json"]);
    assert_eq!(check["exit_code"], 0, "{check}");

    // One changed value in the second range is found, though the row count
    // is unchanged.
    pg.psql(&copy, "UPDATE big SET pad = 'changed' WHERE id = 200000");
    let out = env.cairn(&["verify", &snapshot, "--against", &url]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("big") && text.contains("CONTENT DIFFERS"), "{text}");
}

#[test]
fn one_table_restores_alone_with_its_indexes_and_without_dangling_foreign_keys() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = make_database(&pg, 1);
    let snap = env.cairn_json(&["backup", "--json", "postgres", "--url", &pg.db_url(&src)])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let only = unique_db("one");
    env.cairn_ok(&restore_args(&snap, &pg.db_url(&only), &["--table", "shop.orders", "--verify"]));
    let tables = pg.psql(
        &only,
        "SELECT string_agg(format('%I.%I', schemaname, tablename), ',' ORDER BY 1) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    );
    assert_eq!(tables, "shop.orders");
    assert_eq!(pg.psql(&only, "SELECT count(*) FROM shop.orders"), "3000");
    assert_eq!(
        pg.psql(
            &only,
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('orders_customer', 'orders_pkey')"
        ),
        "2"
    );
    assert_eq!(
        pg.psql(&only, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"),
        "0",
        "the referenced table was not restored"
    );

    // Both ends of the foreign key: it comes along.
    let both = unique_db("both");
    env.cairn_ok(&restore_args(
        &snap,
        &pg.db_url(&both),
        &["--table", "shop.orders", "--table", "shop.customers"],
    ));
    assert_eq!(pg.psql(&both, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"), "1");

    // A whole schema.
    let schema = unique_db("schema");
    env.cairn_ok(&restore_args(&snap, &pg.db_url(&schema), &["--schema", "shop"]));
    assert_eq!(
        pg.psql(&schema, "SELECT count(*) FROM shop.big_orders"),
        pg.psql(&src, "SELECT count(*) FROM shop.big_orders")
    );
    assert_eq!(pg.psql(&schema, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");

    // Restoring one table back into the damaged source database.
    pg.psql(&src, "DELETE FROM shop.orders WHERE id > 10");
    let refused = env.cairn(&restore_args(&snap, &pg.db_url(&src), &["--table", "shop.orders"]));
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("already holds") && err.contains("--overwrite"), "{err}");
    assert_eq!(pg.psql(&src, "SELECT count(*) FROM shop.orders"), "10", "a refused restore changes nothing");
    // A view on the table would be lost with it: refused, naming the view.
    let blocked =
        env.cairn(&restore_args(&snap, &pg.db_url(&src), &["--table", "shop.orders", "--overwrite"]));
    assert_eq!(blocked.status.code(), Some(1), "{}", describe(&blocked));
    let err = String::from_utf8_lossy(&blocked.stderr);
    assert!(err.contains("shop.big_orders"), "{err}");
    assert_eq!(pg.psql(&src, "SELECT count(*) FROM shop.orders"), "10", "a refused restore changes nothing");
    pg.psql(&src, "DROP VIEW shop.big_orders");
    env.cairn_ok(&restore_args(
        &snap,
        &pg.db_url(&src),
        &["--table", "shop.orders", "--overwrite", "--verify"],
    ));
    assert_eq!(pg.psql(&src, "SELECT count(*) FROM shop.orders"), "3000");
    assert_eq!(
        pg.psql(&src, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"),
        "1",
        "the kept table's key remains"
    );

    let missing = env.cairn(&restore_args(&snap, &pg.db_url(&unique_db("x")), &["--table", "shop.nope"]));
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("shop.nope") && err.contains("shop.orders"), "{err}");
}

#[test]
fn dry_run_and_refusals_write_nothing() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = make_database(&pg, 1);
    let snap = env.cairn_json(&["backup", "--json", "postgres", "--url", &pg.db_url(&src)])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let target = unique_db("dry");
    let plan = env.cairn_json(&restore_args(&snap, &pg.db_url(&target), &["--dry-run", "--json"]));
    assert_eq!(plan["details"]["plan"]["create_database"], true, "{plan}");
    assert_eq!(plan["details"]["plan"]["tables"].as_array().unwrap().len(), 6, "{plan}");
    let exists = pg.psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"));
    assert_eq!(exists, "0", "a dry run must not create the database");

    env.cairn_ok(&restore_args(&snap, &pg.db_url(&target), &[]));
    let again = env.cairn(&restore_args(&snap, &pg.db_url(&target), &[]));
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"), "{}", describe(&again));
    env.cairn_ok(&restore_args(&snap, &pg.db_url(&target), &["--overwrite", "--verify"]));
    assert_eq!(table_digests(&|sql| pg.psql(&src, sql)), table_digests(&|sql| pg.psql(&target, sql)));

    let no_db = env.cairn(&restore_args(&snap, &pg.url, &[]));
    assert_eq!(no_db.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&no_db.stderr).contains("must name the database"),
        "{}",
        describe(&no_db)
    );
}

#[test]
fn next_night_uploads_only_what_changed() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = make_database(&pg, 4);
    // The nightly job, as a CronJob runs it: a named source in cairn.yaml,
    // the password from a mounted secret file (trust auth ignores it).
    let secret = env.path("pg-password");
    std::fs::write(&secret, "not-needed-with-trust\n").unwrap();
    let config = env.path("cairn.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: app\n    kind: postgres\n    url: {}\n    password_file: {}\n    databases: [{src}]\n    jobs: 2\n",
            pg.url,
            secret.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let first = env.cairn_json(&["--config", cfg, "backup", "--json", "--source", "app"]);
    let full = first["bytes"]["read"].as_u64().unwrap();
    assert!(full > 30 << 20, "{first}");
    // The benchmark's night (pgbench -t 1000 on 5 million accounts) is one
    // update per 5000 rows; the same density here is 80 on 400 000.
    let out = pg.tool("pgbench").args(["-n", "-t", "80", "--random-seed=7", &src]).output().unwrap();
    assert!(out.status.success(), "pgbench failed: {}", describe(&out));
    let second = env.cairn_json(&["--config", cfg, "backup", "--json", "--source", "app"]);
    let added = second["bytes"]["added"].as_u64().unwrap();
    assert!(added * 100 < full * 15, "300 scattered updates re-uploaded {added} of {full} bytes (over 15%)");
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2);
}

#[test]
fn missing_or_too_old_pg_dump_is_a_clear_error() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = unique_db("tools");
    pg.psql("postgres", &format!("CREATE DATABASE {src}"));
    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out =
        env.cairn(&["backup", "postgres", "--url", &pg.db_url(&src), "--pg-bin", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_dump not found") && err.contains("postgresql-client-"), "{err}");

    // An old client: this machine has one PostgreSQL version, so a stand-in
    // prints the banner an old pg_dump prints; cairn must refuse before using it.
    let old = env.path("old-bin");
    std::fs::create_dir_all(&old).unwrap();
    let fake = old.join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out =
        env.cairn(&["backup", "postgres", "--url", &pg.db_url(&src), "--pg-bin", old.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_dump 12 cannot dump a PostgreSQL 15 server"), "{err}");
    assert!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty(), "nothing half-written");

    let out = env.cairn(&["backup", "postgres", "--url", &pg.db_url("no_such_database")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{}", describe(&out));
    let out = env.cairn(&["backup", "postgres", "--url", "postgresql://postgres@127.0.0.1:1/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"), "{}", describe(&out));
}

#[test]
fn damaged_table_data_stops_the_restore() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = make_database(&pg, 1);
    let snap = env.cairn_json(&["backup", "--json", "postgres", "--url", &pg.db_url(&src)])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    damage_blob_of_file(&env, &snap, "public.pgbench_accounts.copy");
    let target = unique_db("damaged");
    let out = env.cairn(&restore_args(&snap, &pg.db_url(&target), &[]));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged repository object data/"),
        "{}",
        describe(&out)
    );
    let left = pg.psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"));
    assert_eq!(left, "0", "a failed restore into a new database leaves none behind");
}

#[test]
fn a_copy_the_server_cancels_fails_the_backup_with_the_servers_reason() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let db = unique_db("cancel");
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    // Big enough (~250 MiB, dozens of block ranges) that its copies are
    // still running when one of them is cancelled.
    pg.psql(
        &db,
        "CREATE TABLE big AS SELECT i, repeat(md5(i::text), 3) AS pad FROM generate_series(1, 2000000) i",
    );
    let mut backup = env.cairn_cmd();
    backup.args(["backup", "postgres", "--url", &pg.db_url(&db)]);
    backup.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = backup.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let cancelled = loop {
        let hit = pg.psql(
            "postgres",
            &format!(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND query LIKE 'COPY%big%' AND state = 'active'"
            ),
        );
        if hit != "0" {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(cancelled, "no COPY of the table was seen running: {}", describe(&out));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("canceling statement due to user request"), "{err}");
    assert!(err.contains("copying"), "says which copy failed: {err}");
    assert!(
        env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty(),
        "a snapshot was written"
    );
}

/// Waits until the restore's `COPY … FROM STDIN` into `table` runs on `db`.
fn wait_for_load(pg: &PgServer, db: &str, table: &str, child: &mut std::process::Child) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND query LIKE 'COPY %{table}% FROM STDIN'"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while pg.psql("postgres", &sql) != "1" {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the restore ended ({status}) before it loaded {table}");
        }
        assert!(std::time::Instant::now() < deadline, "the restore never started loading {table}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `restore --overwrite` into a database that holds data: whatever makes it
/// fail halfway — cairn killed, the repository gone, a damaged blob — every
/// row of the target is still there afterwards, as it was; only a restore
/// that completes replaces them.
#[test]
fn a_failed_overwrite_restore_leaves_the_target_as_it_was() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    let src = make_database(&pg, 5);
    let snap = env.cairn_json(&["backup", "--json", "postgres", "--url", &pg.db_url(&src)])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let snapshot_state = table_digests(&|sql| pg.psql(&src, sql));
    // Since the backup the database has moved on: rows gone, a new table.
    pg.psql(
        &src,
        "DELETE FROM pgbench_accounts WHERE aid % 7 = 0; UPDATE shop.orders SET note = 'changed';
         CREATE TABLE public.after_backup (x int); INSERT INTO public.after_backup VALUES (1);",
    );
    let before = table_digests(&|sql| pg.psql(&src, sql));
    assert_ne!(before, snapshot_state);
    let url = pg.db_url(&src);
    let overwrite = restore_args(&snap, &url, &["--overwrite"]);

    // cairn killed (SIGKILL) while it loads the biggest table.
    let mut child = env.cairn_cmd().args(&overwrite).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for_load(&pg, &src, "pgbench_accounts", &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(table_digests(&|sql| pg.psql(&src, sql)), before, "a killed restore changed the target");

    // The repository disappears while the rows stream in.
    let mut child = env.cairn_cmd().args(&overwrite).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_load(&pg, &src, "pgbench_accounts", &mut child);
    let gone = env.path("repo.gone");
    std::fs::rename(&env.repo, &gone).unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::rename(&gone, &env.repo).unwrap();
    assert!(!out.status.success(), "the restore succeeded without its repository");
    assert!(String::from_utf8_lossy(&out.stderr).contains("left as it was"), "{}", describe(&out));
    assert_eq!(
        table_digests(&|sql| pg.psql(&src, sql)),
        before,
        "a restore that lost its repository changed the target"
    );

    // A damaged blob in the middle of the biggest table's rows.
    damage_blob_of_file(&env, &snap, "public.pgbench_accounts.copy");
    let out = env.cairn(&overwrite);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(
        table_digests(&|sql| pg.psql(&src, sql)),
        before,
        "a restore from damaged data changed the target"
    );
    damage_blob_of_file(&env, &snap, "public.pgbench_accounts.copy"); // flipped back

    // Undamaged and reachable: the snapshot's rows replace the target's, and
    // what the snapshot does not hold stays.
    env.cairn_ok(&restore_args(&snap, &url, &["--overwrite", "--verify"]));
    let after = table_digests(&|sql| pg.psql(&src, sql));
    let kept: Vec<&String> = after.iter().filter(|t| t.starts_with("public.after_backup ")).collect();
    assert_eq!(kept.len(), 1, "{after:?}");
    let restored: Vec<String> =
        after.into_iter().filter(|t| !t.starts_with("public.after_backup ")).collect();
    assert_eq!(restored, snapshot_state);
}
