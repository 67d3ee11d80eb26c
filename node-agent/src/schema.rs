//! Reading a database's definitions (tables, views, routines, triggers,
//! events) from a snapshot connection, and rendering them as schema files.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use crate::error::{MysqlContext, Result};
use crate::format::sqlfile::SqlFile;
use crate::mysql::{ident, literal};

/// Databases that belong to the server itself and are never dumped.
pub const SYSTEM_DATABASES: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// Engines whose reads follow the consistent snapshot.
const TRANSACTIONAL_ENGINES: &[&str] = &["InnoDB", "RocksDB", "TokuDB"];

#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    pub engine: String,
    pub create_sql: String,
    /// Columns that hold data (generated columns excluded), in table order.
    pub columns: Vec<String>,
    /// A single-column integer primary key, usable for range chunks.
    pub int_pk: Option<String>,
    pub estimated_rows: u64,
}

impl TableDef {
    pub fn has_foreign_keys(&self) -> bool {
        self.create_sql.contains("FOREIGN KEY")
    }
}

#[derive(Debug, Clone)]
pub struct DbSchema {
    pub name: String,
    pub tables: Vec<TableDef>,
    pub schema_sql: String,
    pub routines_sql: Option<String>,
    pub views_sql: Option<String>,
    pub triggers_sql: Option<String>,
    pub events_sql: Option<String>,
    pub views: Vec<String>,
    pub routines: Vec<String>,
    pub triggers: Vec<String>,
    pub events: Vec<String>,
    pub warnings: Vec<String>,
}

fn text(row: &Row, i: usize) -> String {
    match row.as_ref(i) {
        Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(mysql_async::Value::NULL) | None => String::new(),
        Some(v) => v.as_sql(true).trim_matches('\'').to_string(),
    }
}

async fn rows(conn: &mut Conn, server: &str, sql: String, action: &str) -> Result<Vec<Row>> {
    conn.query(sql).await.on(server, action)
}

/// Every user database, in name order.
pub async fn list_databases(conn: &mut Conn, server: &str) -> Result<Vec<String>> {
    let all = rows(
        conn,
        server,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME".into(),
        "list databases",
    )
    .await?;
    Ok(all
        .iter()
        .map(|r| text(r, 0))
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .collect())
}

/// Reads every definition of database `db`.
pub async fn read_database(conn: &mut Conn, server: &str, db: &str) -> Result<DbSchema> {
    let q = literal(db);
    let mut warnings = Vec::new();
    let create_db = rows(
        conn,
        server,
        format!("SHOW CREATE DATABASE {}", ident(db)),
        &format!("read definition of database {db}"),
    )
    .await?;
    let create_db = create_db.first().map(|r| text(r, 1)).unwrap_or_default();

    let mut schema = SqlFile::new(&format!(
        "lockstep: database {db}: the database and its tables. Load first."
    ));
    schema.push("SET NAMES utf8mb4");
    schema.push("SET SESSION foreign_key_checks = 0, sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'");
    schema.push(&create_db);
    schema.push(&format!("USE {}", ident(db)));

    let listed = rows(
        conn,
        server,
        format!(
            "SELECT TABLE_NAME, TABLE_TYPE, IFNULL(ENGINE, ''), IFNULL(TABLE_ROWS, 0) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = {q} ORDER BY TABLE_NAME"
        ),
        &format!("list tables of database {db}"),
    )
    .await?;
    let mut tables = Vec::new();
    let mut view_defs = Vec::new();
    for r in &listed {
        let (name, kind, engine) = (text(r, 0), text(r, 1), text(r, 2));
        let estimated_rows = text(r, 3).parse().unwrap_or(0);
        let what = format!("read definition of {db}.{name}");
        match kind.as_str() {
            "VIEW" => {
                let def = rows(
                    conn,
                    server,
                    format!("SHOW CREATE VIEW {}.{}", ident(db), ident(&name)),
                    &what,
                )
                .await?;
                if let Some(d) = def.first() {
                    view_defs.push((name, text(d, 1), text(d, 2), text(d, 3)));
                }
            }
            "BASE TABLE" | "SYSTEM VERSIONED" => {
                if kind == "SYSTEM VERSIONED" {
                    warnings.push(format!(
                        "table {db}.{name} is system-versioned: only its current rows are dumped"
                    ));
                }
                if !TRANSACTIONAL_ENGINES
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(&engine))
                {
                    warnings.push(format!(
                        "table {db}.{name} uses the non-transactional engine {engine}: its rows are read after the lock is released and may be newer than the captured position"
                    ));
                }
                let def = rows(
                    conn,
                    server,
                    format!("SHOW CREATE TABLE {}.{}", ident(db), ident(&name)),
                    &what,
                )
                .await?;
                let create_sql = def.first().map(|d| text(d, 1)).unwrap_or_default();
                let cols = rows(
                    conn,
                    server,
                    format!(
                        "SELECT COLUMN_NAME, DATA_TYPE, EXTRA, COLUMN_KEY FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = {q} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
                        literal(&name)
                    ),
                    &format!("list columns of {db}.{name}"),
                )
                .await?;
                let mut columns = Vec::new();
                let mut pk = Vec::new();
                for c in &cols {
                    let (col, dtype, extra, key) = (
                        text(c, 0),
                        text(c, 1),
                        text(c, 2).to_ascii_uppercase(),
                        text(c, 3),
                    );
                    if key == "PRI" {
                        pk.push((col.clone(), dtype));
                    }
                    let generated = [
                        "VIRTUAL GENERATED",
                        "STORED GENERATED",
                        "PERSISTENT GENERATED",
                    ]
                    .iter()
                    .any(|g| extra.contains(g));
                    if !generated {
                        columns.push(col);
                    }
                }
                let int_pk = match pk.as_slice() {
                    [(col, dtype)] if is_integer_type(dtype) => Some(col.clone()),
                    _ => None,
                };
                schema.push(&create_sql);
                tables.push(TableDef {
                    name,
                    engine,
                    create_sql,
                    columns,
                    int_pk,
                    estimated_rows,
                });
            }
            "SEQUENCE" => warnings.push(format!(
                "sequence {db}.{name} is not dumped (sequences are not supported yet)"
            )),
            other => warnings.push(format!("{db}.{name} of type {other} is not dumped")),
        }
    }

    // Routines.
    let mut routines_file = SqlFile::new(&format!(
        "lockstep: database {db}: stored procedures and functions. Load before the data."
    ));
    routines_file.push(&format!("USE {}", ident(db)));
    let mut routines = Vec::new();
    let listed = rows(
        conn,
        server,
        format!("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {q} ORDER BY ROUTINE_TYPE, ROUTINE_NAME"),
        &format!("list routines of database {db}"),
    )
    .await?;
    for r in &listed {
        let (name, kind) = (text(r, 0), text(r, 1));
        let def = rows(
            conn,
            server,
            format!("SHOW CREATE {kind} {}.{}", ident(db), ident(&name)),
            &format!("read definition of {kind} {db}.{name}"),
        )
        .await?;
        let Some(d) = def.first() else { continue };
        // Procedure/Function, sql_mode, Create ..., character_set_client, collation_connection
        push_object(
            &mut routines_file,
            &text(d, 1),
            None,
            &text(d, 3),
            &text(d, 4),
            &text(d, 2),
        );
        routines.push(format!("{} {name}", kind.to_ascii_lowercase()));
    }

    // Views, in dependency order.
    let mut views_file = SqlFile::new(&format!(
        "lockstep: database {db}: views, in dependency order. Load after the data."
    ));
    views_file.push(&format!("USE {}", ident(db)));
    let names: Vec<String> = view_defs.iter().map(|v| v.0.clone()).collect();
    let order = view_order(
        db,
        &view_defs
            .iter()
            .map(|v| (v.0.as_str(), v.1.as_str()))
            .collect::<Vec<_>>(),
    );
    for i in order {
        let (_, sql, cs, coll) = &view_defs[i];
        push_object(&mut views_file, "", None, cs, coll, sql);
    }

    // Triggers, in firing order.
    let mut triggers_file = SqlFile::new(&format!(
        "lockstep: database {db}: triggers. Load after the data, so loading does not fire them."
    ));
    triggers_file.push(&format!("USE {}", ident(db)));
    let mut triggers = Vec::new();
    let listed = rows(
        conn,
        server,
        format!(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {q} \
             ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
        ),
        &format!("list triggers of database {db}"),
    )
    .await?;
    for r in &listed {
        let name = text(r, 0);
        let def = rows(
            conn,
            server,
            format!("SHOW CREATE TRIGGER {}.{}", ident(db), ident(&name)),
            &format!("read definition of trigger {db}.{name}"),
        )
        .await?;
        let Some(d) = def.first() else { continue };
        // Trigger, sql_mode, SQL Original Statement, character_set_client, collation_connection
        push_object(
            &mut triggers_file,
            &text(d, 1),
            None,
            &text(d, 3),
            &text(d, 4),
            &text(d, 2),
        );
        triggers.push(name);
    }

    // Events.
    let mut events_file = SqlFile::new(&format!("lockstep: database {db}: events. Load last."));
    events_file.push(&format!("USE {}", ident(db)));
    let mut events = Vec::new();
    let listed = rows(
        conn,
        server,
        format!("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {q} ORDER BY EVENT_NAME"),
        &format!("list events of database {db}"),
    )
    .await?;
    for r in &listed {
        let name = text(r, 0);
        let def = rows(
            conn,
            server,
            format!("SHOW CREATE EVENT {}.{}", ident(db), ident(&name)),
            &format!("read definition of event {db}.{name}"),
        )
        .await?;
        let Some(d) = def.first() else { continue };
        // Event, sql_mode, time_zone, Create Event, character_set_client, collation_connection
        push_object(
            &mut events_file,
            &text(d, 1),
            Some(&text(d, 2)),
            &text(d, 4),
            &text(d, 5),
            &text(d, 3),
        );
        events.push(name);
    }

    let nonempty = |f: SqlFile, n: usize| if n == 0 { None } else { Some(f.finish()) };
    Ok(DbSchema {
        name: db.into(),
        tables,
        schema_sql: schema.finish(),
        routines_sql: nonempty(routines_file, routines.len()),
        views_sql: nonempty(views_file, names.len()),
        triggers_sql: nonempty(triggers_file, triggers.len()),
        events_sql: nonempty(events_file, events.len()),
        views: names,
        routines,
        triggers,
        events,
        warnings,
    })
}

/// Appends one stored object with the session context it was created in.
fn push_object(
    file: &mut SqlFile,
    sql_mode: &str,
    time_zone: Option<&str>,
    charset: &str,
    collation: &str,
    create: &str,
) {
    if !charset.is_empty() {
        file.push(&format!(
            "SET SESSION character_set_client = {charset}, character_set_results = {charset}, collation_connection = {collation}"
        ));
    }
    file.push(&format!("SET SESSION sql_mode = {}", literal(sql_mode)));
    if let Some(tz) = time_zone {
        file.push(&format!("SET SESSION time_zone = {}", literal(tz)));
    }
    file.push(create);
}

fn is_integer_type(t: &str) -> bool {
    matches!(
        t.to_ascii_lowercase().as_str(),
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
    )
}

/// Orders views so each comes after the views it names (`db`.`view`);
/// views in a cycle keep their listed order.
pub fn view_order(db: &str, views: &[(&str, &str)]) -> Vec<usize> {
    let deps: Vec<Vec<usize>> = views
        .iter()
        .map(|(name, sql)| {
            views
                .iter()
                .enumerate()
                .filter(|(_, (other, _))| {
                    other != name && sql.contains(&format!("{}.{}", ident(db), ident(other)))
                })
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let mut done = vec![false; views.len()];
    let mut order = Vec::with_capacity(views.len());
    while order.len() < views.len() {
        let ready: Vec<usize> = (0..views.len())
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .collect();
        let next = if ready.is_empty() {
            // A cycle: take the first remaining one.
            vec![
                (0..views.len())
                    .find(|&i| !done[i])
                    .expect("some view remains"),
            ]
        } else {
            ready
        };
        for i in next {
            done[i] = true;
            order.push(i);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_follow_their_dependencies() {
        let views = [
            ("a", "CREATE VIEW `a` AS select * from `d`.`b`"),
            ("b", "CREATE VIEW `b` AS select * from `d`.`c`"),
            ("c", "CREATE VIEW `c` AS select * from `d`.`t`"),
            ("x", "CREATE VIEW `x` AS select 1"),
        ];
        let order: Vec<&str> = view_order("d", &views)
            .into_iter()
            .map(|i| views[i].0)
            .collect();
        let pos = |n: &str| order.iter().position(|o| *o == n).expect("present");
        assert!(pos("c") < pos("b") && pos("b") < pos("a"), "{order:?}");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn integer_keys_only() {
        assert!(is_integer_type("bigint"));
        assert!(is_integer_type("INT"));
        assert!(!is_integer_type("varchar"));
        assert!(!is_integer_type("decimal"));
    }
}
