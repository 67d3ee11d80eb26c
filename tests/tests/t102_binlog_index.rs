//! The binlog event index (node-agent `binlog::index`) and `lockstep-agent
//! search-binlog` on a real MariaDB's binlog files, read from its datadir:
//! every transaction the server lists in `SHOW BINLOG EVENTS` is found at
//! the position and with the GTID the server reports, rows and tables are
//! right, feeding a file in pieces gives the same entries, files without
//! checksums are read, and a corrupt byte is an error naming file and
//! offset.

use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use lockstep_node_agent::binlog::event;
use lockstep_node_agent::binlog::index::{Indexer, Kind, TxnEntry, index_file, index_path};
use lockstep_tests::{MariaDb, MariaDbOptions, run_agent_cli, step};

/// One row of `SHOW BINLOG EVENTS`: file, position, type, server id, end,
/// info.
type EventRow = (String, u64, String, u32, u64, String);

/// The server's binlogs, oldest first.
async fn binlogs(db: &MariaDb) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await?;
    Ok(rows.into_iter().map(|(name, _)| name).collect())
}

/// Every event of every binlog the server has, as `SHOW BINLOG EVENTS`
/// lists them.
async fn server_events(db: &MariaDb) -> anyhow::Result<Vec<EventRow>> {
    let mut all = Vec::new();
    for file in binlogs(db).await? {
        all.extend(
            db.query::<EventRow>(&format!("SHOW BINLOG EVENTS IN '{file}'"))
                .await?,
        );
    }
    Ok(all)
}

/// (file, position, GTID) of every GTID event the server lists.
fn server_gtids(events: &[EventRow]) -> Vec<(String, u64, String)> {
    events
        .iter()
        .filter(|e| e.2 == "Gtid")
        .filter_map(|e| {
            let (_, gtid) = e.5.rsplit_once("GTID ")?;
            Some((e.0.clone(), e.1, gtid.trim().to_string()))
        })
        .collect()
}

/// Runs `search-binlog ARGS --json` and parses its lines.
async fn search(args: &[&str]) -> anyhow::Result<Vec<TxnEntry>> {
    let mut all = vec!["search-binlog"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run_agent_cli(&all).await?;
    out.success()?;
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("parse {l:?}")))
        .collect()
}

/// The one entry of `entries` whose summary contains `text`.
fn the<'a>(entries: &'a [TxnEntry], text: &str) -> anyhow::Result<&'a TxnEntry> {
    let found: Vec<_> = entries
        .iter()
        .filter(|e| e.summary.contains(text))
        .collect();
    match found[..] {
        [e] => Ok(e),
        _ => bail!("{} entries mention {text:?}: {found:#?}", found.len()),
    }
}

/// Feeds `path` to one [`Indexer`] in pieces that end at every `per`-th
/// transaction end.
fn feed_in_pieces(path: &Path, entries: &[TxnEntry], per: usize) -> anyhow::Result<Vec<TxnEntry>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let name = path
        .file_name()
        .context("a file name")?
        .to_string_lossy()
        .into_owned();
    let mut ix = Indexer::new(&name);
    let mut out = Vec::new();
    let mut from = 0usize;
    for e in entries
        .iter()
        .filter(|e| e.file == name)
        .skip(per - 1)
        .step_by(per)
    {
        let to = usize::try_from(e.end)?;
        out.extend(ix.feed(from as u64, &bytes[from..to])?);
        from = to;
    }
    out.extend(ix.feed(from as u64, &bytes[from..])?);
    Ok(out)
}

/// A workload of single and multi-row inserts, updates (one with minimal
/// row images), deletes, multi-statement transactions, a MyISAM table,
/// statement-format DML and
/// DDL across `FLUSH BINARY LOGS`, then a `DROP TABLE` and writes after it.
/// The DROP is found by `search-binlog --type ddl --grep`, at the position
/// `SHOW BINLOG EVENTS` gives its GTID event and with the GTID
/// `@@gtid_binlog_pos` reports; every GTID event of the server is one
/// entry; rows and tables are right; files fed in pieces give the same
/// entries; a file written with `binlog_checksum=NONE` reads the same way.
#[tokio::test]
async fn finds_the_drop_table_where_the_server_says() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("index")).await?;
    let datadir = db.datadir();
    let dd = datadir.to_string_lossy().into_owned();

    step!("workload: DDL, multi-row DML, a multi-statement transaction, MyISAM, statements");
    db.exec("CREATE DATABASE shop").await?;
    db.exec(
        "CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(40), qty INT, \
         price DECIMAL(10,2), at DATETIME(6), flags BIT(5), size ENUM('s','m','l'), \
         note TEXT, code CHAR(20), doc JSON, t TIME(3), d DATE, f DOUBLE)",
    )
    .await?;
    db.exec("CREATE TABLE shop.items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(300) CHARACTER SET utf8mb4)")
        .await?;
    db.exec(
        "INSERT INTO shop.orders VALUES \
         (1, 'apple', 3, 1.50, NOW(6), b'101', 's', 'first', 'A1', '{\"k\": 1}', '10:00:00.5', '2026-01-01', 0.5), \
         (2, 'pear', 1, 2.25, NOW(6), NULL, 'm', NULL, 'B2', NULL, NULL, NULL, NULL), \
         (3, 'fig', 7, 0.99, NOW(6), b'1', 'l', REPEAT('n', 300), 'C3', '[]', '01:02:03', '2026-02-02', 2.5), \
         (4, 'kiwi', 2, 3.10, NOW(6), b'11', 's', 'fourth', 'D4', '{}', '23:59:59.999', '2026-03-03', -1), \
         (5, 'plum', 9, 4.00, NOW(6), b'0', 'm', '', 'E5', 'null', '00:00:00', '2026-04-04', 1e300)",
    )
    .await?;
    db.exec("UPDATE shop.orders SET qty = qty + 1 WHERE id IN (1, 2)")
        .await?;
    db.exec("DELETE FROM shop.orders WHERE id = 4").await?;
    db.exec(
        "BEGIN; INSERT INTO shop.items (name) VALUES ('crate'), ('box'); \
         UPDATE shop.orders SET note = 'packed' WHERE id IN (1, 3, 5); \
         DELETE FROM shop.items WHERE name = 'box'; COMMIT",
    )
    .await?;
    // Minimal row images: before images of the key only, after images of
    // the changed columns only.
    db.exec("SET SESSION binlog_row_image = MINIMAL; UPDATE shop.orders SET qty = 0 WHERE id IN (1, 2, 3)")
        .await?;
    db.exec("FLUSH BINARY LOGS").await?;
    db.exec("CREATE TABLE shop.log (v TEXT) ENGINE=MyISAM")
        .await?;
    db.exec("INSERT INTO shop.log VALUES ('a'), ('b')").await?;
    db.exec("SET SESSION binlog_format = STATEMENT; UPDATE shop.items SET name = 'crate2' WHERE name = 'crate'")
        .await?;

    step!("DROP TABLE shop.orders; find its GTID event in SHOW BINLOG EVENTS");
    db.exec("DROP TABLE shop.orders").await?;
    let drop_gtid = db.gtid_binlog_pos().await?;
    let events = server_events(&db).await?;
    let at = events
        .iter()
        .position(|e| e.2 == "Query" && e.5.contains("DROP TABLE"))
        .context("no DROP TABLE in SHOW BINLOG EVENTS")?;
    let gtid_event = &events[at.checked_sub(1).context("the DROP is the first event")?];
    ensure!(
        gtid_event.2 == "Gtid" && gtid_event.5.ends_with(&format!("GTID {drop_gtid}")),
        "the event before the DROP is not its GTID {drop_gtid}: {gtid_event:?}"
    );
    let (drop_file, drop_pos) = (gtid_event.0.clone(), gtid_event.1);
    db.exec("INSERT INTO shop.items (name) VALUES ('after the drop')")
        .await?;
    db.exec("FLUSH BINARY LOGS").await?;

    step!("search-binlog --type ddl --grep finds the DROP");
    let found = search(&[&dd, "--type", "ddl", "--grep", "drop table"]).await?;
    let [drop] = &found[..] else {
        bail!("expected one DROP TABLE, found {found:#?}");
    };
    ensure!(
        drop.file == drop_file && drop.pos == drop_pos,
        "the DROP is at {}:{}, the server says {drop_file}:{drop_pos}",
        drop.file,
        drop.pos
    );
    ensure!(
        drop.gtid.as_deref() == Some(drop_gtid.as_str()),
        "the DROP's GTID is {:?}, @@gtid_binlog_pos says {drop_gtid}",
        drop.gtid
    );
    ensure!(
        drop.kinds == [Kind::Ddl] && drop.tables == ["shop.orders"],
        "{drop:?}"
    );
    ensure!(
        drop.summary.starts_with("DROP TABLE `shop`.`orders`"),
        "{drop:?}"
    );
    ensure!(drop.server_id == db.server_id(), "{drop:?}");

    step!("--since/--until: the DROP's second includes it, the second before excludes it");
    let at = drop.time.to_string();
    let before = (drop.time - 1).to_string();
    let found = search(&[
        &dd, "--type", "ddl", "--grep", "drop", "--since", &at, "--until", &at,
    ])
    .await?;
    ensure!(found.len() == 1, "{found:#?}");
    let found = search(&[&dd, "--grep", "DROP TABLE", "--until", &before]).await?;
    ensure!(found.is_empty(), "{found:#?}");

    step!("every GTID event of the server is one entry, at its position");
    let events = server_events(&db).await?;
    let entries = index_path(&datadir)?;
    let ours: Vec<(String, u64, String)> = entries
        .iter()
        .map(|e| (e.file.clone(), e.pos, e.gtid.clone().unwrap_or_default()))
        .collect();
    let theirs = server_gtids(&events);
    ensure!(ours == theirs, "entries {ours:#?}\nserver {theirs:#?}");
    for e in &entries {
        ensure!(
            events.iter().any(|s| s.0 == e.file && s.4 == e.end),
            "{e:?} does not end where an event of the server ends"
        );
    }

    step!("rows and tables");
    let ins = the(&entries, "INSERT INTO shop.orders VALUES")?;
    ensure!(
        ins.kinds == [Kind::Insert] && ins.rows == 5 && ins.tables == ["shop.orders"],
        "the 5-row insert: {ins:?}"
    );
    ensure!(
        ins.summary.starts_with("insert 5 rows into shop.orders: "),
        "{ins:?}"
    );
    let upd = the(&entries, "SET qty = qty + 1")?;
    ensure!(upd.kinds == [Kind::Update] && upd.rows == 2, "{upd:?}");
    let del = the(&entries, "WHERE id = 4")?;
    ensure!(del.kinds == [Kind::Delete] && del.rows == 1, "{del:?}");
    let multi = the(&entries, "packed")?;
    ensure!(
        multi.kinds == [Kind::Insert, Kind::Update, Kind::Delete]
            && multi.rows == 2 + 3 + 1
            && multi.tables == ["shop.items", "shop.orders"],
        "the multi-statement transaction: {multi:?}"
    );
    ensure!(
        multi.summary.starts_with(
            "insert 2 rows into shop.items, update 3 rows in shop.orders, delete 1 row from shop.items: "
        ),
        "{multi:?}"
    );
    let minimal = the(&entries, "SET qty = 0")?;
    ensure!(minimal.rows == 3, "minimal row images: {minimal:?}");
    let myisam = the(&entries, "VALUES ('a'), ('b')")?;
    ensure!(
        myisam.rows == 2 && myisam.tables == ["shop.log"],
        "{myisam:?}"
    );
    let stmt = the(&entries, "crate2")?;
    ensure!(
        stmt.kinds == [Kind::Update] && stmt.tables == ["shop.items"],
        "statement-format UPDATE: {stmt:?}"
    );
    let by_table = search(&[&dd, "--table", "shop.orders", "--type", "insert"]).await?;
    // Filters apply to a transaction as a whole: the multi-statement one
    // inserts (into items) and touches orders.
    ensure!(by_table == [ins.clone(), multi.clone()], "{by_table:#?}");

    step!("each file fed in pieces at transaction ends gives the same entries");
    let files = binlogs(&db).await?;
    for file in &files {
        let path = datadir.join(file);
        let whole = index_file(&path)?;
        ensure!(
            whole
                == entries
                    .iter()
                    .filter(|e| &e.file == file)
                    .cloned()
                    .collect::<Vec<_>>(),
            "{file} alone differs from the directory's entries"
        );
        for per in [1, 2, 3] {
            let pieces = feed_in_pieces(&path, &entries, per)?;
            ensure!(
                pieces == whole,
                "{file} in pieces of {per} transactions differs"
            );
        }
    }

    step!("binlog_checksum=NONE: a file without checksums");
    db.exec("SET GLOBAL binlog_checksum = NONE").await?;
    let (plain, _) = db.binlog_position().await?.context("binlog is on")?;
    db.exec("INSERT INTO shop.items (name) VALUES ('n1'), ('n2'), ('n3'), ('n4')")
        .await?;
    db.exec("DROP TABLE shop.log").await?;
    db.exec("SET GLOBAL binlog_checksum = CRC32").await?;
    let path = datadir.join(&plain);
    let bytes = std::fs::read(&path)?;
    let fde_len = u32::from_le_bytes(bytes[4 + 9..4 + 13].try_into()?) as usize;
    ensure!(
        event::checksum_len(&bytes[4..4 + fde_len]).map_err(anyhow::Error::msg)? == 0,
        "{plain} has checksums"
    );
    let got = index_file(&path)?;
    let gtids: Vec<String> = server_gtids(&server_events(&db).await?)
        .into_iter()
        .filter(|g| g.0 == plain)
        .map(|g| g.2)
        .collect();
    ensure!(
        got.iter()
            .map(|e| e.gtid.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            == gtids,
        "{got:#?} vs {gtids:?}"
    );
    let n = the(&got, "'n1'")?;
    ensure!(n.rows == 4 && n.tables == ["shop.items"], "{n:?}");
    let d = the(&got, "DROP TABLE")?;
    ensure!(d.kinds == [Kind::Ddl] && d.tables == ["shop.log"], "{d:?}");
    for per in [1, 2] {
        ensure!(
            feed_in_pieces(&path, &got, per)? == got,
            "{plain} in pieces"
        );
    }
    Ok(())
}

/// A byte flipped inside a DROP TABLE's Query event of a copy of the
/// server's binlog: the library and `search-binlog` both fail with an error
/// naming the file and the event's offset; the intact original indexes.
#[tokio::test]
async fn a_corrupt_byte_names_file_and_offset() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("index-bad")).await?;
    step!("a few transactions and a DROP TABLE");
    db.exec("CREATE DATABASE d").await?;
    db.exec("CREATE TABLE d.t (id INT PRIMARY KEY)").await?;
    db.exec("INSERT INTO d.t VALUES (1), (2)").await?;
    db.exec("DROP TABLE d.t").await?;
    let (file, _) = db.binlog_position().await?.context("binlog is on")?;
    let events: Vec<EventRow> = db.query(&format!("SHOW BINLOG EVENTS IN '{file}'")).await?;
    let query = events
        .iter()
        .find(|e| e.2 == "Query" && e.5.contains("DROP TABLE"))
        .context("no DROP TABLE query event")?;

    step!("copy the file and flip one byte of the DROP's statement");
    let dir = db.dir().join("corrupt");
    std::fs::create_dir_all(&dir)?;
    let mut bytes = std::fs::read(db.datadir().join(&file))?;
    let flip = usize::try_from(query.4)? - 10;
    bytes[flip] ^= 0x20;
    let copy = dir.join(&file);
    std::fs::write(&copy, &bytes)?;
    ensure!(
        index_file(&db.datadir().join(&file))?.len() == 4,
        "the original has 4 transactions"
    );

    step!("the library and the CLI name the file and the event's offset");
    let err = index_file(&copy).expect_err("a corrupt event").to_string();
    let want = format!(
        "binlog {} at offset {}: checksum mismatch",
        copy.display(),
        query.1
    );
    ensure!(
        err.starts_with(&want),
        "{err}\nwanted it to start with {want}"
    );
    let out = run_agent_cli(&["search-binlog", &dir.to_string_lossy()]).await?;
    ensure!(
        !out.status.success(),
        "search-binlog succeeded on a corrupt file"
    );
    ensure!(out.stderr.contains(&want), "stderr: {}", out.stderr);
    Ok(())
}
