//! Checks of the files in `deploy/`, shared by the deploy tests (t50, t51):
//! the repository's files read as YAML and TOML (python3 with PyYAML and
//! tomllib), the commented examples' keys, and the configs parsed as the
//! daemons parse them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, ensure};
use lockstep_node_agent::config::ServeConfig;
use lockstep_proto::tls::TlsOptions;
use serde_json::Value;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs `cmd`, failing with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// True if `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every YAML document of `path`, as JSON (python3 + PyYAML `safe_load_all`).
pub fn yaml_docs(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    yaml_text_docs(&text).with_context(|| {
        format!(
            "parse {} as YAML (needs python3-yaml: bash scripts/setup-debian.sh)",
            path.display()
        )
    })
}

/// Every YAML document of `text`, as JSON (python3 + PyYAML `safe_load_all`).
pub fn yaml_text_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    const PY: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(sys.stdin.read()) if d is not None]\n\
        print(json.dumps(docs))";
    let out = python(PY, text, "YAML")?;
    Ok(serde_json::from_slice(&out)?)
}

/// Runs python3 `code` with `input` on stdin; its stdout.
fn python(code: &str, input: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run python3")?;
    child
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The top-level keys and `[table]` keys of a TOML text, as "key" and
/// "table.key" (python3 tomllib); fails on a syntax error.
pub fn toml_keys(text: &str, what: &str) -> anyhow::Result<Vec<String>> {
    const PY: &str = "import json, sys, tomllib\n\
        t = tomllib.loads(sys.stdin.read())\n\
        keys = []\n\
        for k, v in t.items():\n\
        \x20   keys += [k + '.' + s for s in v] if isinstance(v, dict) else [k]\n\
        print(json.dumps(keys))";
    let out = python(PY, text, &format!("{what} is not valid TOML"))?;
    Ok(serde_json::from_slice(&out)?)
}

/// The example with its commented-out settings switched on: every line
/// `# key = value` or `# [table]` loses its `# `.
pub fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or(line);
            let (key, value) = rest.split_once(" = ").unwrap_or_default();
            // A value alone on its line: a string, an array, a boolean or
            // a number (prose such as "x = true, which ..." is not one).
            let value_alone =
                (value.starts_with('"') && value.ends_with('"') && value.matches('"').count() == 2)
                    || (value.starts_with('[') && value.ends_with(']'))
                    || ["true", "false"].contains(&value)
                    || value.parse::<f64>().is_ok();
            let setting = !key.is_empty()
                && value_alone
                && key
                    .trim_matches('"')
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-*".contains(c));
            let table = rest.starts_with('[') && rest.ends_with(']') && !rest.contains(' ');
            if line != rest && (setting || table) {
                rest
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks that `text` parses and uses only keys of the commented example
/// (set there, or commented out).
pub fn check_config(text: &str, what: &str, example: &str) -> anyhow::Result<()> {
    let example_text = uncommented(&std::fs::read_to_string(repo().join(example))?);
    let allowed = toml_keys(
        &example_text,
        &format!("{example} with its comments switched on"),
    )?;
    for key in toml_keys(text, what)? {
        ensure!(
            allowed.contains(&key),
            "{what}: key `{key}` is not in {example} (known: {allowed:?})"
        );
    }
    Ok(())
}

/// A TOML text as JSON (python3 tomllib; dates as strings).
pub fn toml_json(text: &str, what: &str) -> anyhow::Result<Value> {
    const PY: &str = "import json, sys, tomllib\n\
        print(json.dumps(tomllib.loads(sys.stdin.read()), default=str))";
    let out = python(PY, text, &format!("{what} is not valid TOML"))?;
    Ok(serde_json::from_slice(&out)?)
}

/// Parses `text` as the agent's own configuration (`deny_unknown_fields`).
pub fn agent_config(text: &str, what: &str) -> anyhow::Result<ServeConfig> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, text)?;
    ServeConfig::from_file(&path).with_context(|| format!("{what} as the agent's ServeConfig"))
}

/// The `[tls]` table of a config, parsed as the daemons parse it; fails
/// when there is none.
pub fn tls_table(text: &str, what: &str) -> anyhow::Result<TlsOptions> {
    let tls = toml_json(text, what)?
        .get("tls")
        .cloned()
        .with_context(|| format!("{what} has no [tls] table: TLS is off"))?;
    serde_json::from_value(tls).with_context(|| format!("{what}: [tls]"))
}

/// A URL with a password (`scheme://user:password@`), or `root@`.
pub fn secret_in(text: &str) -> Option<&str> {
    if text.contains("root@") {
        return Some("root@");
    }
    let after = text.split("://").nth(1)?;
    let userinfo = after.split('@').next().filter(|_| after.contains('@'))?;
    userinfo.contains(':').then_some(userinfo)
}

/// The least grants of docs/agent.md ("MySQL user and grants"), MariaDB.
pub const AGENT_GRANTS: &str = "GRANT SELECT, RELOAD, PROCESS, BINLOG MONITOR, SHOW VIEW, EVENT, TRIGGER\n  ON *.* TO 'lockstep'@'127.0.0.1';";

/// The script that creates the agent's MySQL user on a server's first start.
pub const MARIADB_INIT: &str = "deploy/compose/mariadb-init/lockstep-user.sh";

/// The files below `dir` (recursively) whose extension is one of `exts`,
/// appended to `out`, sorted.
pub fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, exts, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// The string at `path` (object keys) in `v`.
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}
