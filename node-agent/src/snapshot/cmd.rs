//! What the providers share: running their tools (behind [`Runner`], so
//! the LVM and ZFS command sequences are tested without the tools), the
//! snapshot-id rule, the path-inside check and the space rule.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// What a command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs one command line; `Err` only when it could not be started.
#[async_trait::async_trait]
pub trait Runner: Send + Sync + std::fmt::Debug {
    async fn run(&self, argv: &[String]) -> std::io::Result<Output>;
}

/// Runs commands for real, with `tokio::process`.
#[derive(Debug, Default)]
pub struct System;

#[async_trait::async_trait]
impl Runner for System {
    async fn run(&self, argv: &[String]) -> std::io::Result<Output> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command line"))?;
        let out = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

pub fn system() -> Arc<dyn Runner> {
    Arc::new(System)
}

/// A command line from string-like parts.
pub fn argv<I, S>(parts: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    parts
        .into_iter()
        .map(|p| p.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// The one place snapshot errors are built: "file VOLUME: cannot ACTION:
/// REASON".
pub fn fail(volume: &Path, action: &'static str, reason: impl Into<String>) -> Error {
    Error::io(volume, action, std::io::Error::other(reason.into()))
}

/// Runs `argv`; an error (naming `volume`, `action`, the command and its
/// stderr) unless it exits 0. Returns its stdout.
pub async fn run_ok(
    runner: &dyn Runner,
    argv: &[String],
    volume: &Path,
    action: &'static str,
) -> Result<String> {
    let out = run(runner, argv, volume, action).await?;
    if out.ok() {
        Ok(out.stdout)
    } else {
        Err(failed(argv, &out, volume, action))
    }
}

/// Runs `argv`; an error only if it could not be started.
pub async fn run(
    runner: &dyn Runner,
    argv: &[String],
    volume: &Path,
    action: &'static str,
) -> Result<Output> {
    runner.run(argv).await.map_err(|e| {
        let tool = argv.first().map(String::as_str).unwrap_or("");
        if e.kind() == std::io::ErrorKind::NotFound {
            fail(
                volume,
                action,
                format!("`{tool}` is not installed (not on PATH)"),
            )
        } else {
            fail(
                volume,
                action,
                format!("cannot run `{}`: {e}", argv.join(" ")),
            )
        }
    })
}

/// The error for a command that exited non-zero.
pub fn failed(argv: &[String], out: &Output, volume: &Path, action: &'static str) -> Error {
    let status = match out.code {
        Some(c) => format!("exited with {c}"),
        None => "was killed by a signal".to_string(),
    };
    let stderr = out.stderr.trim();
    let stderr = if stderr.is_empty() {
        out.stdout.trim()
    } else {
        stderr
    };
    fail(
        volume,
        action,
        format!("`{}` {status}: {stderr}", argv.join(" ")),
    )
}

/// A snapshot id is a file name, a subvolume name, an LV name and a ZFS
/// snapshot name: 1 to 100 of `A-Za-z0-9._-`, not starting with `.` or `-`.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && !id.starts_with('.')
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "snapshot id {id:?} is not a safe name (1 to 100 of A-Z a-z 0-9 . _ -, not starting with . or -)"
        )))
    }
}

/// `path`, made absolute and free of `.`/`..` and symlinks (the longest
/// existing prefix is canonicalized, the rest appended).
pub fn canonical(path: &Path) -> Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => {
                let mut out = c;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(e) => {
                let name = existing.file_name().map(|n| n.to_os_string());
                match (name, existing.parent()) {
                    (Some(n), Some(p)) if !p.as_os_str().is_empty() => {
                        rest.push(n);
                        existing = p.to_path_buf();
                    }
                    _ => return Err(Error::io(path, "resolve", e)),
                }
            }
        }
    }
}

/// Every path of `paths` lies inside `volume` (both canonicalized), else
/// an error naming the first that does not.
pub fn check_inside(volume: &Path, paths: &[PathBuf]) -> Result<()> {
    let vol = canonical(volume)?;
    for p in paths {
        let c = canonical(p)?;
        if !c.starts_with(&vol) {
            return Err(fail(
                volume,
                "cover the server's files with a snapshot",
                format!(
                    "{} (resolved to {}) is outside the volume {}: the snapshot would not hold it",
                    p.display(),
                    c.display(),
                    vol.display()
                ),
            ));
        }
    }
    Ok(())
}

/// An error if the snapshot directory lies inside the volume (a copy of
/// the volume would copy itself, and the backup would stream its own
/// snapshots).
pub fn check_apart(volume: &Path, snapshot_dir: &Path) -> Result<()> {
    let vol = canonical(volume)?;
    let snaps = canonical(snapshot_dir)?;
    if snaps.starts_with(&vol) {
        return Err(fail(
            volume,
            "check the snapshot directory",
            format!(
                "the snapshot directory {} is inside the volume {}; put it beside the volume",
                snapshot_dir.display(),
                volume.display()
            ),
        ));
    }
    Ok(())
}

/// The least free space a snapshot needs on a copy-on-write filesystem
/// (btrfs, reflink, ZFS), whatever the volume's size: 64 MiB.
pub const MIN_FREE_BYTES: u64 = 64 << 20;
/// ...and, above that, this share of the used bytes (in percent): room for
/// the metadata a snapshot writes and for the blocks the server rewrites
/// while the snapshot is held.
pub const MIN_FREE_PERCENT: u64 = 1;

/// What a copy-on-write snapshot of `used` bytes needs free.
pub fn needed_for(used: u64) -> u64 {
    MIN_FREE_BYTES.max(used / 100 * MIN_FREE_PERCENT)
}

/// Used and free bytes of the filesystem holding `path` (statvfs; free is
/// what an unprivileged writer may use).
pub fn fs_space(path: &Path) -> Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| Error::io(path, "statvfs", std::io::Error::from(e)))?;
    let used = st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize;
    let free = st.f_bavail * st.f_frsize;
    Ok((used, free))
}

/// The space of the copy-on-write filesystem holding `volume`, checked
/// to have room for `what`.
pub fn fs_room(volume: &Path, what: &str) -> Result<super::Space> {
    let (used, free) = fs_space(volume)?;
    let space = super::Space {
        used_bytes: used,
        free_bytes: free,
        needed_bytes: needed_for(used),
    };
    check_room(volume, what, &space)?;
    Ok(space)
}

/// The snapshot `id` of `volume` that lives at `snapshot_dir/<id>` (btrfs,
/// reflink): its record before it is taken.
pub fn planned_in(
    provider: &str,
    volume: &Path,
    snapshot_dir: &Path,
    id: &str,
) -> Result<super::Snapshot> {
    check_id(id)?;
    let root = snapshot_dir.join(id);
    Ok(super::Snapshot {
        id: id.to_string(),
        provider: provider.to_string(),
        volume: volume.to_path_buf(),
        handle: root.display().to_string(),
        root,
        mount: None,
        took: std::time::Duration::ZERO,
    })
}

/// `sync -f VOLUME`: writes out the filesystem's dirty data before the
/// lock, so a snapshot inside it has no backlog to commit.
pub async fn sync_volume(runner: &dyn Runner, volume: &Path) -> Result<()> {
    let sync = argv(["sync".as_ref(), "-f".as_ref(), volume.as_os_str()]);
    run_ok(runner, &sync, volume, "flush the volume (sync -f)").await?;
    Ok(())
}

/// An error unless `space` has room.
pub fn check_room(volume: &Path, what: &str, space: &super::Space) -> Result<()> {
    if space.free_bytes < space.needed_bytes {
        return Err(fail(
            volume,
            "make room for a snapshot",
            format!(
                "{what} needs {} free but {} has {} ({} used)",
                bytes(space.needed_bytes),
                volume.display(),
                bytes(space.free_bytes),
                bytes(space.used_bytes)
            ),
        ));
    }
    Ok(())
}

/// `n` bytes, for people: "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An error unless `a` and `b` are on one filesystem (`findmnt -T`: the
/// same UUID, or the same device where there is none). btrfs gives each
/// subvolume its own `st_dev`, so that cannot tell.
pub async fn check_same_fs(runner: &dyn Runner, a: &Path, b: &Path) -> Result<()> {
    let action = "find the snapshot directory's filesystem";
    let mut seen = Vec::new();
    for p in [a, b] {
        let cmd = argv([
            "findmnt".as_ref(),
            "-n".as_ref(),
            "-o".as_ref(),
            "UUID,SOURCE".as_ref(),
            "-T".as_ref(),
            p.as_os_str(),
        ]);
        let out = run_ok(runner, &cmd, a, action).await?;
        seen.push(fs_identity(&out));
    }
    if seen[0] != seen[1] || seen[0].is_empty() {
        return Err(fail(
            a,
            action,
            format!(
                "{} is on {:?} but {} is on {:?}: a snapshot must stay on the volume's filesystem",
                a.display(),
                seen[0],
                b.display(),
                seen[1]
            ),
        ));
    }
    Ok(())
}

/// A filesystem's identity from findmnt's `UUID SOURCE` line: its UUID, or
/// its device without btrfs's `[/subvolume]` suffix.
pub fn fs_identity(findmnt: &str) -> String {
    let line = findmnt.lines().next().unwrap_or("").trim();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(uuid), Some(_)) => uuid.to_string(),
        (Some(source), None) => source.split('[').next().unwrap_or(source).to_string(),
        _ => String::new(),
    }
}

/// `path` has no `..` and is absolute.
pub fn plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
pub mod fake {
    //! A runner that answers from a script and records every command.

    use super::*;
    use std::sync::Mutex;

    type Answer = Box<dyn Fn(&[String]) -> Option<Output> + Send + Sync>;

    pub struct Fake {
        pub log: Mutex<Vec<String>>,
        answer: Answer,
    }

    impl std::fmt::Debug for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Fake").field("log", &self.log).finish()
        }
    }

    impl Fake {
        /// `answer` gets each command line; None = "not installed".
        pub fn new(answer: impl Fn(&[String]) -> Option<Output> + Send + Sync + 'static) -> Self {
            Fake {
                log: Mutex::new(Vec::new()),
                answer: Box::new(answer),
            }
        }
        pub fn commands(&self) -> Vec<String> {
            self.log.lock().expect("fake log").clone()
        }
    }

    pub fn out(code: i32, stdout: &str, stderr: &str) -> Option<Output> {
        Some(Output {
            code: Some(code),
            stdout: stdout.into(),
            stderr: stderr.into(),
        })
    }

    #[async_trait::async_trait]
    impl Runner for Fake {
        async fn run(&self, argv: &[String]) -> std::io::Result<Output> {
            self.log.lock().expect("fake log").push(argv.join(" "));
            (self.answer)(argv).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_names() {
        for ok in ["b-20261129-1", "x", "a.b_c-9"] {
            check_id(ok).expect("check_id");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-rf",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(101),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inside_checks_resolve_dots_and_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("data")).expect("create_dir_all");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("create_dir_all");
        std::os::unix::fs::symlink(&out, vol.join("link")).expect("symlink");
        check_inside(&vol, &[vol.join("data"), vol.join("data/not-yet")]).expect("check_inside");
        let e = check_inside(&vol, &[vol.join("data/../../out")])
            .expect_err("check_inside should fail");
        assert!(e.to_string().contains("outside the volume"), "{e}");
        assert!(check_inside(&vol, &[vol.join("link/x")]).is_err());
        assert!(check_inside(&vol, &[dir.path().join("volume-sibling")]).is_err());
    }

    #[test]
    fn snapshot_dirs_stay_out_of_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("snaps")).expect("create_dir_all");
        check_apart(&vol, &dir.path().join("snaps")).expect("check_apart");
        check_apart(&vol, dir.path()).expect("check_apart");
        let e = check_apart(&vol, &vol.join("snaps")).expect_err("check_apart should fail");
        assert!(e.to_string().contains("inside the volume"), "{e}");
        assert!(check_apart(&vol, &vol).is_err());
    }

    #[test]
    fn the_space_rule_has_a_floor() {
        assert_eq!(needed_for(0), 64 << 20);
        assert_eq!(needed_for(100 << 30), 1 << 30);
        let space = super::super::Space {
            used_bytes: 10,
            free_bytes: 1,
            needed_bytes: 2,
        };
        let e = check_room(Path::new("/v"), "a btrfs snapshot", &space)
            .expect_err("check_room should fail");
        assert!(e.to_string().contains("/v"), "{e}");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
    }

    #[test]
    fn filesystems_are_told_by_uuid_or_device() {
        assert_eq!(fs_identity("0d2d-ef1f /dev/loop0[/vol]\n"), "0d2d-ef1f");
        assert_eq!(fs_identity("     /dev/loop0[/vol]\n"), "/dev/loop0");
        assert_eq!(fs_identity(""), "");
    }

    #[test]
    fn plain_paths() {
        assert!(plain_absolute(Path::new("/a/b")));
        assert!(!plain_absolute(Path::new("/a/../b")));
        assert!(!plain_absolute(Path::new("a/b")));
    }
}
