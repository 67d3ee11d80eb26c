//! [`S3Server`]: a real S3-compatible server for the S3 sink tests — moto's
//! `moto_server` (installed by `scripts/setup-debian.sh` into
//! `/opt/lockstep-moto`, or `$LOCKSTEP_MOTO_SERVER`) on a free port of
//! 127.0.0.1.
//!
//! moto accepts any credentials unless told otherwise, so [`S3Server::start`]
//! creates an IAM user with an access key and a policy allowing everything,
//! creates the test bucket, and then switches authentication on: from then
//! on only that key is accepted and a wrong one gets `InvalidAccessKeyId`.
//! moto keeps everything in memory: [`S3Server::restart`] starts an empty
//! server on the same port and sets it up again (new key, same bucket name).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::ports::free_port;
use crate::process::{ChildProcess, Supervised, short_temp_dir};

/// How long moto may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets up a fresh moto: user, key, policy, bucket; then enforces auth.
/// Prints `{"access_key": ..., "secret_key": ...}`.
const SETUP: &str = r#"
import json, sys, urllib.request
import boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="lockstep")
iam.put_user_policy(UserName="lockstep", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="lockstep")["AccessKey"]
boto3.client("s3", **kw).create_bucket(Bucket=bucket)
req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                             headers={"Content-Type": "text/plain"})
urllib.request.urlopen(req).read()
print(json.dumps({"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}))
"#;

/// The credentials a fresh [`S3Server`] accepts.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// A running moto S3 server owned by the test, with one bucket. Dropping it
/// kills it by PID and removes its temp dir.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    bucket: String,
    credentials: S3Credentials,
    child: Option<ChildProcess>,
    dir: Option<tempfile::TempDir>,
}

/// `moto_server`: `$LOCKSTEP_MOTO_SERVER`, or the setup script's venv.
pub fn moto_server_path() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("LOCKSTEP_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/lockstep-moto/bin/moto_server"));
    if !path.is_file() {
        bail!(
            "moto_server not found at {}: run scripts/setup-debian.sh (or point \
             LOCKSTEP_MOTO_SERVER at it)",
            path.display()
        );
    }
    Ok(path)
}

/// The Python beside `moto_server` (it has boto3 and awscli).
pub fn moto_python() -> anyhow::Result<PathBuf> {
    let server = moto_server_path()?;
    let python = server.with_file_name("python");
    if !python.is_file() {
        bail!("no python beside {}", server.display());
    }
    Ok(python)
}

impl S3Server {
    /// Starts moto on a free port with the bucket `lockstep-test`.
    pub async fn start() -> anyhow::Result<S3Server> {
        let dir = short_temp_dir("ls-s3-")?;
        let mut server = S3Server {
            port: free_port()?,
            bucket: "lockstep-test".into(),
            credentials: S3Credentials {
                access_key: String::new(),
                secret_key: String::new(),
            },
            child: None,
            dir: Some(dir),
        };
        server.launch().await?;
        Ok(server)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let dir = self
            .dir
            .as_ref()
            .context("the S3 server's temp dir is gone")?
            .path()
            .to_path_buf();
        let mut cmd = Command::new(moto_server_path()?);
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .current_dir(&dir);
        let child = ChildProcess::spawn(
            format!("moto S3 server on port {}", self.port),
            cmd,
            dir.join("moto.log"),
        )?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                break;
            }
            let child = self.child.as_mut().context("moto is not running")?;
            if !child.is_running() || Instant::now() > deadline {
                bail!(
                    "moto S3 server did not listen on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    child.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = tokio::process::Command::new(moto_python()?)
            .args(["-c", SETUP, &self.endpoint(), &self.bucket])
            .output()
            .await
            .context("run the moto setup script")?;
        if !out.status.success() {
            bail!(
                "setting up moto on port {} failed: {}",
                self.port,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parse the moto setup output")?;
        let field = |name: &str| -> anyhow::Result<String> {
            v[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no {name} in the moto setup output"))
        };
        self.credentials = S3Credentials {
            access_key: field("access_key")?,
            secret_key: field("secret_key")?,
        };
        tracing::info!(port = self.port, bucket = %self.bucket, "moto S3 server ready");
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket the server was set up with.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The accepted key (it changes on [`S3Server::restart`]).
    pub fn credentials(&self) -> &S3Credentials {
        &self.credentials
    }

    /// The environment an agent (or an `S3Store`) needs to reach the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_ACCESS_KEY_ID".into(),
                self.credentials.access_key.clone(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.credentials.secret_key.clone(),
            ),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// A sink spec for the bucket under `prefix`.
    pub fn spec(&self, prefix: &str) -> lockstep_proto::agent::S3Sink {
        lockstep_proto::agent::S3Sink {
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
        }
    }

    /// Multipart uploads started and neither completed nor aborted under
    /// `bucket` (as `key` per line).
    pub async fn pending_uploads(&self) -> anyhow::Result<Vec<String>> {
        let script = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])
for u in s3.list_multipart_uploads(Bucket=sys.argv[2]).get("Uploads", []):
    print(u["Key"])
"#;
        let out = tokio::process::Command::new(moto_python()?)
            .args([
                "-c",
                script,
                &self.endpoint(),
                &self.bucket,
                &self.credentials.access_key,
                &self.credentials.secret_key,
            ])
            .output()
            .await
            .context("list multipart uploads")?;
        if !out.status.success() {
            bail!(
                "listing multipart uploads on port {} failed: {}",
                self.port,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The bucket's objects as lockstep's own S3 store sees them.
    pub fn store(&self) -> anyhow::Result<lockstep_node_agent::sink::s3::S3Store> {
        Ok(lockstep_node_agent::sink::s3::S3Store::with_env(
            &self.spec(""),
            format!("test bucket {}", self.bucket),
            lockstep_node_agent::sink::s3::S3Options::default(),
            self.env(),
        )?)
    }

    /// Every key under `prefix`, sorted.
    pub async fn list_keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        use lockstep_node_agent::sink::Store as _;
        Ok(self
            .store()?
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }

    /// One object's bytes.
    pub async fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        Ok(lockstep_node_agent::sink::get(&self.store()?, key, 1 << 30).await?)
    }

    /// Starts moto again on the same port after [`Supervised::kill`] or
    /// [`Supervised::stop`]: an empty server, set up again (same bucket
    /// name, a new key).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.launch()
            .await
            .with_context(|| format!("restart moto on port {}", self.port))
    }
}

/// Signals, pause/resume (SIGSTOP: it keeps its state and answers nothing),
/// `kill` and `stop` (its state is lost: moto keeps it in memory).
impl Supervised for S3Server {
    fn child(&self) -> Option<&ChildProcess> {
        self.child.as_ref()
    }

    fn child_slot(&mut self) -> &mut Option<ChildProcess> {
        &mut self.child
    }

    fn label(&self) -> String {
        format!("moto S3 server on port {}", self.port)
    }

    fn kind(&self) -> &'static str {
        "moto_server"
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let dir = self.dir.take();
        self.release(dir);
    }
}
