//! Dump and restore, end to end: every common column type and schema object
//! survives a round trip byte for byte, and a snapshot taken under concurrent
//! writes is exactly the server at the captured position (causal chain, and a
//! binlog replay from that position that reproduces the source).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lockstep_tests::causal::quote_ident;
use lockstep_tests::probe;
use lockstep_tests::{
    AgentOptions, AgentProc, CausalWriter, MariaDb, MariaDbOptions, Target, assert_same_data,
    check_chain, run_agent_cli, step,
};

/// Every common column type, NULL wherever allowed, awkward bytes, and all
/// kinds of schema objects.
const KITCHEN_SINK: &[&str] = &[
    "CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    "CREATE TABLE shop.types (
        id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, bi BIGINT, biu BIGINT UNSIGNED,
        de DECIMAL(30,10), fl FLOAT, do DOUBLE,
        da DATE, tm TIME(3), dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, yr YEAR,
        bt BIT(10), en ENUM('a','b','c d'), st SET('x','y','z'),
        js JSON,
        ch CHAR(10), vc VARCHAR(200), tx TEXT, lt LONGTEXT,
        bn BINARY(4), vb VARBINARY(64), bl BLOB, lb LONGBLOB,
        gen_v INT AS (ti + 1) VIRTUAL,
        gen_s VARCHAR(220) AS (CONCAT(vc, '!')) PERSISTENT,
        KEY k_vc (vc(20)),
        UNIQUE KEY u_bi (bi)
    ) ENGINE=InnoDB",
    "INSERT INTO shop.types (ti, tiu, si, mi, bi, biu, de, fl, do, da, tm, dt, ts, yr, bt, en, st, js, ch, vc, tx, lt, bn, vb, bl, lb) VALUES
        (-128, 255, -32768, -8388608, -9223372036854775808, 18446744073709551615, -12345678901234567890.0123456789,
         3.14159, 2.718281828459045, '1000-01-01', '-838:59:59.999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 1901,
         b'1010101010', 'c d', 'x,z', '{\"k\": [1, 2.5, \"s\"], \"u\": \"\\\\u00fc\"}',
         'ümlaut', 'emoji 😀 four-byte 𝄞', 'tab\\there\\nnewline\\\\backslash', REPEAT('long ', 5000),
         X'00FF0A09', X'5C4E00', X'00000000', X'1A0D0A5C'),
        (127, 0, 32767, 8388607, 9223372036854775807, 0, 0.0000000001, -1.5e-10, 1e308, '2024-02-29', '00:00:00', '1970-01-01 00:00:01', '1970-01-01 00:00:01', 2155,
         b'0', 'a', '', 'null', '', '', '', '', X'', X'', X'', X''),
        (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (0, 1, 2, 3, 4, 5, 6.5, 7.25, 8.125, '0000-00-00', '12:34:56.789', '0000-00-00 00:00:00', NULL, 0, b'1111111111', 'b', 'x,y,z', '[]',
         '\\\\N', 'a\\\\Nb', '\\\\', 'NULL', X'5C4E0000', X'09', X'0A', X'0D')",
    "CREATE TABLE shop.customers (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(100), UNIQUE KEY (email)) ENGINE=InnoDB",
    "INSERT INTO shop.customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', NULL), (3, 'Edsger', 'ed@example.com')",
    "CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer BIGINT NOT NULL, total DECIMAL(10,2),
        FOREIGN KEY (customer) REFERENCES shop.customers (id)) ENGINE=InnoDB",
    "INSERT INTO shop.orders (customer, total) VALUES (1, 10.50), (1, 20.00), (3, 99.99)",
    "CREATE TABLE shop.audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(100)) ENGINE=InnoDB",
    "CREATE TABLE shop.`odd name-ü` (`weird col` INT, `x``y` TEXT) ENGINE=InnoDB",
    "INSERT INTO shop.`odd name-ü` VALUES (1, 'no primary key'), (1, 'duplicate rows are fine'), (NULL, NULL)",
    "CREATE TABLE shop.empty (id INT PRIMARY KEY) ENGINE=InnoDB",
    "CREATE TABLE shop.big (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(40) NOT NULL, KEY k_k (k)) ENGINE=InnoDB",
    "INSERT INTO shop.big SELECT seq, seq MOD 977, MD5(seq) FROM shop.seq_1_to_1100000",
    "CREATE VIEW shop.v_base AS SELECT id, customer, total FROM shop.orders WHERE total > 15",
    "CREATE VIEW shop.a_view_on_view AS SELECT customer, SUM(total) AS s FROM shop.v_base GROUP BY customer",
    "CREATE TRIGGER shop.orders_ai AFTER INSERT ON shop.orders FOR EACH ROW INSERT INTO shop.audit (what) VALUES (CONCAT('order ', NEW.id))",
    "CREATE PROCEDURE shop.restock(IN n INT) BEGIN DECLARE i INT DEFAULT 0; WHILE i < n DO SET i = i + 1; END WHILE; SELECT i; END",
    "CREATE FUNCTION shop.with_tax(x DECIMAL(10,2)) RETURNS DECIMAL(10,2) DETERMINISTIC RETURN x * 1.2",
    "CREATE EVENT shop.nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO DELETE FROM shop.audit WHERE id < 0",
    "INSERT INTO shop.orders (customer, total) VALUES (2, 5.00)",
    "CREATE DATABASE `second-db`",
    "CREATE TABLE `second-db`.t (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB",
    "INSERT INTO `second-db`.t VALUES (1, 'one')",
];

/// Dump with `lockstep-agent dump`, load with `lockstep-agent load` into a
/// fresh server, and compare: CHECKSUM TABLE and mariadb-dump output equal,
/// triggers did not fire during the load, row counts and GTID position set.
#[tokio::test]
async fn round_trip_every_type_and_object() -> anyhow::Result<()> {
    let (src, dst) = tokio::try_join!(
        MariaDb::start(roomy("rt-src")),
        MariaDb::start(roomy("rt-dst"))
    )?;
    step!("create the kitchen-sink schema with a 1.1M-row table");
    for sql in KITCHEN_SINK {
        src.exec(sql).await?;
    }
    let out = tempfile::Builder::new()
        .prefix("ls-rt-")
        .tempdir_in("/tmp")?;
    let dir = out.path().join("snap");
    let dir_s = dir.to_str().expect("utf-8 path");

    step!("dump");
    let dumped = run_agent_cli(&[
        "dump",
        "--mysql",
        &src.url(),
        "--out",
        dir_s,
        "--threads",
        "4",
        "--json",
    ])
    .await?;
    dumped.success()?;
    let summary: serde_json::Value = serde_json::from_str(dumped.stdout.trim())?;
    // big, types, customers, orders, audit, odd name, second-db
    assert_eq!(summary["rows"], 1_100_000 + 4 + 3 + 4 + 1 + 3 + 1);
    let held_us = summary["lock"]["held_us"].as_u64().expect("held_us");
    assert!(held_us < 1_000_000, "lock held {held_us} us");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let big = manifest["databases"][1]["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "big"))
        .expect("shop.big in manifest");
    assert!(
        big["chunks"].as_array().map_or(0, |c| c.len()) >= 4,
        "1.1M rows are split into ranges"
    );
    assert_eq!(
        manifest["position"]["gtid_set"].as_str(),
        Some(src.gtid_binlog_pos().await?.as_str())
    );
    assert_eq!(
        manifest["version"], 1,
        "no schema file needs version 2, so older releases can load it"
    );

    step!("verify");
    run_agent_cli(&["verify", "--from", dir_s])
        .await?
        .success()?;

    step!("load into a fresh server");
    let loaded = run_agent_cli(&[
        "load",
        "--mysql",
        &dst.url(),
        "--from",
        dir_s,
        "--threads",
        "4",
        "--json",
    ])
    .await?;
    loaded.success()?;

    step!("compare");
    assert_same_data(&src, &dst, &["shop", "second-db"]).await?;
    let audit: u64 = dst.query_one("SELECT COUNT(*) FROM shop.audit").await?;
    assert_eq!(audit, 1, "the trigger fired during the load");
    let kinds: Vec<(String, u64)> = dst
        .query(
            "SELECT 'routines', COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='shop'
             UNION ALL SELECT 'views', COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA='shop'
             UNION ALL SELECT 'triggers', COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='shop'
             UNION ALL SELECT 'events', COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA='shop'",
        )
        .await?;
    assert_eq!(
        kinds,
        vec![
            ("routines".into(), 2),
            ("views".into(), 2),
            ("triggers".into(), 1),
            ("events".into(), 1)
        ]
    );
    let sum: String = dst
        .query_one("SELECT CAST(SUM(s) AS CHAR) FROM shop.a_view_on_view")
        .await?;
    assert_eq!(sum, "119.99");
    let taxed: String = dst
        .query_one("SELECT CAST(shop.with_tax(10) AS CHAR)")
        .await?;
    assert_eq!(taxed, "12.00");
    let slave_pos: String = dst.query_one("SELECT @@gtid_slave_pos").await?;
    assert_eq!(slave_pos, src.gtid_binlog_pos().await?);
    let idx: u64 = dst.query_one("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA='shop' AND TABLE_NAME='big' AND INDEX_NAME='k_k'").await?;
    assert_eq!(idx, 1, "the deferred secondary index was built");

    step!("a second load is refused without --force, and works with it");
    let again = run_agent_cli(&["load", "--mysql", &dst.url(), "--from", dir_s]).await?;
    assert!(!again.status.success());
    assert!(
        again.stderr.contains("not empty") && again.stderr.contains("shop"),
        "{}",
        again.stderr
    );
    dst.exec("INSERT INTO shop.audit (what) VALUES ('local change')")
        .await?;
    run_agent_cli(&[
        "load",
        "--mysql",
        &dst.url(),
        "--from",
        dir_s,
        "--force",
        "--quiet",
    ])
    .await?
    .success()?;
    assert_same_data(&src, &dst, &["shop", "second-db"]).await?;
    Ok(())
}

/// Names and bodies that trip up text formats: `{file}` (the `load_sql`
/// placeholder) in database, table and column names, stored bodies holding
/// a line that is exactly `;;` (in a string literal and in a comment), `$$`
/// and `//`, and CRLF inside string literals, and table data with CRLF.
const AWKWARD: &[&str] = &[
    "CREATE DATABASE awk",
    "CREATE TABLE awk.`x{file}y` (id INT PRIMARY KEY, `{file}` VARCHAR(50), `'{file}'` TEXT) ENGINE=InnoDB",
    "INSERT INTO awk.`x{file}y` VALUES (1, '{file}', 'it''s {file}'), (2, NULL, '')",
    "CREATE TABLE awk.crlf (id INT PRIMARY KEY, t TEXT, b VARBINARY(20)) ENGINE=InnoDB",
    "INSERT INTO awk.crlf VALUES (1, 'a\r\nb\r\n', X'0D0A0D'), (2, '\r\n;;\r\n', X'3B3B0A'), (3, ';;', NULL)",
    "CREATE PROCEDURE awk.semis()\nBEGIN\n  /* a comment with a delimiter line\n;;\n  */\n  SELECT 'a string\n;;\nwith a delimiter line' AS s, '$$ and //' AS t;\nEND",
    "CREATE FUNCTION awk.crlf_fn() RETURNS TEXT DETERMINISTIC\nRETURN 'line one\r\nline two\r\n'",
    "CREATE TRIGGER awk.crlf_bi BEFORE INSERT ON awk.crlf FOR EACH ROW\nBEGIN\n  -- ;; is not the end\n  SET NEW.t = CONCAT(NEW.t, '\r\n;;\r\n', '\n;;\n');\nEND",
    // Not `;;` in an event: mariadb-dump 10.11 loops forever looking for a
    // delimiter for it (create_delimiter never lengthens its candidate).
    "CREATE EVENT awk.crlf_ev ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO SELECT 'a\r\nb\n$$\n'",
    "CREATE VIEW awk.`v{file}` AS SELECT id, `{file}` FROM awk.`x{file}y`",
    "CREATE DATABASE `d{file}`",
    "CREATE TABLE `d{file}`.t (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB",
    "INSERT INTO `d{file}`.t VALUES (1, 'one')",
];

/// Dump a server holding [`AWKWARD`] names and bodies, then restore it twice:
/// with `lockstep-agent load`, and by hand with the `mariadb` client,
/// `zstd` and `LOAD DATA` exactly as docs/format.md says. Both restores
/// equal the source (CHECKSUM TABLE, mariadb-dump text with every `\r`
/// kept), and every routine, trigger and event body is the same bytes.
#[tokio::test]
async fn round_trip_awkward_names_and_bodies() -> anyhow::Result<()> {
    let (src, dst, hand) = tokio::try_join!(
        MariaDb::start(MariaDbOptions::named("awk-src")),
        MariaDb::start(MariaDbOptions::named("awk-dst")),
        MariaDb::start(MariaDbOptions::named("awk-hand"))
    )?;
    let dbs = ["awk", "d{file}"];
    step!("create tables named with {{file}} and bodies with ;; lines and CRLF");
    for sql in AWKWARD {
        src.exec(sql).await?;
    }
    let bodies = stored_bodies(&src).await?;
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    for (what, body) in &bodies {
        assert!(
            body.contains("\n;;\n") || body.contains("\r\n"),
            "the server keeps the awkward bytes of {what}: {body:?}"
        );
    }
    let out = tempfile::Builder::new()
        .prefix("ls-awk-")
        .tempdir_in("/tmp")?;
    let dir = out.path().join("snap");
    let dir_s = dir.to_str().expect("utf-8 path");

    step!("dump");
    run_agent_cli(&["dump", "--mysql", &src.url(), "--out", dir_s, "--quiet"])
        .await?
        .success()?;
    let routines = std::fs::read(dir.join("awk/routines.sql"))?;
    assert!(
        routines.windows(11).any(|w| w == b"one\r\nline t"),
        "routines.sql keeps the CRLF of the function body"
    );
    assert!(
        routines.windows(15).any(|w| w == b"\nDELIMITER ;;1\n"),
        "routines.sql holds ;; $$ and //, so its delimiter is ;;1"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    assert_eq!(
        manifest["version"], 2,
        "version 1 readers would split these schema files wrongly"
    );

    step!("load with lockstep-agent load and compare");
    run_agent_cli(&["load", "--mysql", &dst.url(), "--from", dir_s, "--quiet"])
        .await?
        .success()?;
    assert_same_data(&src, &dst, &dbs).await?;
    assert_eq!(stored_bodies(&dst).await?, bodies);
    let trig: String = dst.query_one("SELECT t FROM awk.crlf WHERE id = 1").await?;
    assert_eq!(
        trig, "a\r\nb\r\n",
        "the trigger did not fire during the load"
    );

    step!("restore by hand with mariadb, zstd and LOAD DATA, and compare");
    restore_by_hand(&dir, &hand, out.path()).await?;
    assert_same_data(&src, &hand, &dbs).await?;
    assert_eq!(stored_bodies(&hand).await?, bodies);
    Ok(())
}

/// Every routine, trigger and event body in database `awk` as stored, by
/// kind and name. information_schema shows `\r` and `\n` inside literals
/// escaped, so the raw text comes from `mysql.proc`, `mysql.event` and
/// `SHOW CREATE TRIGGER`.
async fn stored_bodies(server: &MariaDb) -> anyhow::Result<Vec<(String, String)>> {
    let mut bodies: Vec<(String, String)> = server
        .query(
            "SELECT CONCAT(type, ' ', name), CONVERT(body USING utf8mb4) FROM mysql.proc WHERE db = 'awk'
             UNION ALL SELECT CONCAT('EVENT ', name), CONVERT(body USING utf8mb4) FROM mysql.event WHERE db = 'awk'",
        )
        .await?;
    let triggers: Vec<String> = server
        .query("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'awk'")
        .await?;
    for t in triggers {
        let sql = format!("SHOW CREATE TRIGGER awk.{}", quote_ident(&t));
        let mut conn = server.conn().await?;
        let row: Option<mysql_async::Row> =
            mysql_async::prelude::Queryable::query_first(&mut conn, &sql)
                .await
                .with_context(|| format!("run `{sql}` on {}", server.address()))?;
        conn.disconnect().await.ok();
        let create: Option<String> = row.and_then(|r| r.get(2));
        bodies.push((
            format!("TRIGGER {t}"),
            create.with_context(|| format!("`{sql}` returned no statement"))?,
        ));
    }
    bodies.sort();
    Ok(bodies)
}

/// Restores the snapshot in `dir` into `server` the way docs/format.md's
/// "Restoring by hand" does: the `mariadb` client runs the schema files,
/// `zstd -d` and `LOAD DATA LOCAL INFILE` load each data file.
async fn restore_by_hand(dir: &Path, server: &MariaDb, scratch: &Path) -> anyhow::Result<()> {
    let path = dir.join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("parse {}", path.display()))?;
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let session = strs(&manifest["load_session"]).join(";\n");
    let empty = Vec::new();
    for db in manifest["databases"].as_array().unwrap_or(&empty) {
        let name = db["name"].as_str().context("database name")?;
        for key in ["schema_file", "routines_file"] {
            if let Some(f) = db[key].as_str() {
                mariadb_client(server, &[], Some(&dir.join(f))).await?;
            }
        }
        for t in db["tables"].as_array().unwrap_or(&empty) {
            let table = t["name"].as_str().context("table name")?;
            let columns: Vec<String> = strs(&t["columns"]).iter().map(|c| quote_ident(c)).collect();
            for c in t["chunks"].as_array().unwrap_or(&empty) {
                let file = dir.join(c["file"].as_str().context("chunk file")?);
                let tsv = scratch.join("chunk.tsv");
                let unzip = tokio::process::Command::new("zstd")
                    .args(["-q", "-d", "-f", "-o"])
                    .arg(&tsv)
                    .arg(&file)
                    .output()
                    .await
                    .context("run zstd")?;
                if !unzip.status.success() {
                    bail!(
                        "zstd -d {} failed: {}",
                        file.display(),
                        String::from_utf8_lossy(&unzip.stderr)
                    );
                }
                let sql = format!(
                    "{session};\nLOAD DATA LOCAL INFILE '{}' INTO TABLE {}.{} CHARACTER SET binary ({})",
                    tsv.display(),
                    quote_ident(name),
                    quote_ident(table),
                    columns.join(", ")
                );
                mariadb_client(server, &["--local-infile=1", "-e", &sql], None).await?;
            }
        }
        for key in ["views_file", "triggers_file", "events_file"] {
            if let Some(f) = db[key].as_str() {
                mariadb_client(server, &[], Some(&dir.join(f))).await?;
            }
        }
    }
    Ok(())
}

/// Runs the `mariadb` client against `server` with the options
/// docs/format.md gives (`--binary-mode --comments`), `args`, and `input`
/// as its standard input.
async fn mariadb_client(
    server: &MariaDb,
    args: &[&str],
    input: Option<&Path>,
) -> anyhow::Result<()> {
    let stdin = match input {
        Some(p) => std::process::Stdio::from(
            std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?,
        ),
        None => std::process::Stdio::null(),
    };
    let mut cmd = tokio::process::Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg("--host=127.0.0.1")
        .arg(format!("--port={}", server.port()))
        .args(["--user=root", "--binary-mode", "--comments"])
        .args(args)
        .stdin(stdin)
        .kill_on_drop(true);
    let what = format!("mariadb < {:?} {args:?} on {}", input, server.address());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .with_context(|| format!("{what} ran over 120 s"))?
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The causal-chain check on one server: a writer inserts record k into
/// table k mod 3 (three databases) while the agent prepares, commits and
/// transfers. The restored data holds exactly records 1..m, and replaying
/// the source's binlog from the captured position reproduces the source
/// exactly, so the snapshot was the server at that position.
#[tokio::test]
async fn snapshot_under_writes_is_exactly_the_captured_position() -> anyhow::Result<()> {
    let (src, dst) = tokio::try_join!(
        MariaDb::start(MariaDbOptions::named("cc-src")),
        MariaDb::start(MariaDbOptions::named("cc-dst"))
    )?;
    let targets: Vec<Target> = ["chain_a", "chain_b", "chain_c"]
        .iter()
        .map(|db| Target::on(&src, db, "rec"))
        .collect();
    let writer = CausalWriter::start(targets.clone()).await?;
    writer.wait_committed(200, Duration::from_secs(30)).await?;
    let agent = AgentProc::start(AgentOptions::new("cc-src", src.url())).await?;
    let mut client = agent.client().await?;

    step!("prepare, commit and transfer while the writer runs");
    let cut = probe::prepare(&mut client, "b-chain", Duration::from_secs(10), None).await?;
    let pos = cut.position();
    let committed = client
        .commit(lockstep_proto::agent::CommitRequest {
            backup_id: "b-chain".into(),
            term: 0,
        })
        .await?
        .into_inner();
    assert!(
        committed
            .snapshot_positions
            .iter()
            .all(|p| p.binlog_file == pos.binlog_file && p.binlog_pos == pos.binlog_pos)
    );
    let more = writer.committed() + 200;
    writer.wait_committed(more, Duration::from_secs(30)).await?;
    let artifact = probe::transfer(&mut client, "b-chain").await?;
    let written = writer.stop().await;
    // A new coordinator leader asking again gets the same artifact.
    assert_eq!(probe::transfer(&mut client, "b-chain").await?, artifact);
    assert!(
        artifact.location.ends_with("b-chain/cc-src"),
        "{}",
        artifact.location
    );

    step!("the agent refuses to restore over its own (non-empty) server");
    let refused = probe::restore(&mut client, &artifact.location, "")
        .await
        .expect_err("non-empty");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().contains(&src.address()),
        "{}",
        refused.message()
    );

    step!("restore through the agent into a fresh server and check the chain");
    let report = probe::restore(&mut client, &artifact.location, &dst.url()).await?;
    assert_eq!(report.backup_id, "b-chain");
    assert_eq!(report.gtid_slave_pos, pos.gtid_set);
    let restored: Vec<Target> = ["chain_a", "chain_b", "chain_c"]
        .iter()
        .map(|db| Target::on(&dst, db, "rec"))
        .collect();
    let m = check_chain(&restored).await?;
    assert!(
        m >= 200 && m < written,
        "restored chain 1..{m} of {written} written"
    );

    step!("replay the source binlog from the captured position");
    let replay = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mariadb-binlog --read-from-remote-server --host=127.0.0.1 --port={} --user=root --start-position={} {} {} | mariadb --host=127.0.0.1 --port={} --user=root",
            src.port(),
            pos.binlog_pos,
            pos.binlog_file,
            binlog_files_after(&src, &pos.binlog_file).await?.join(" "),
            dst.port()
        ))
        .output()?;
    assert!(
        replay.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(check_chain(&restored).await?, check_chain(&targets).await?);
    assert_same_data(&src, &dst, &["chain_a", "chain_b", "chain_c"]).await?;
    Ok(())
}

/// A server with caches big enough to write a million rows quickly (the
/// harness default of 16 MB makes InnoDB flush constantly).
fn roomy(name: &str) -> MariaDbOptions {
    let mut o = MariaDbOptions::named(name);
    o.extra_args = vec![
        "--innodb-buffer-pool-size=128M".into(),
        "--innodb-log-file-size=128M".into(),
    ];
    o
}

/// Binlog files of `server` that come after `file`.
async fn binlog_files_after(server: &MariaDb, file: &str) -> anyhow::Result<Vec<String>> {
    let logs: Vec<(String, u64)> = server.query("SHOW BINARY LOGS").await?;
    Ok(logs
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| f.as_str() > file)
        .collect())
}
