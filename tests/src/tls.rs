//! A test PKI: a CA and certificates made with the project's own
//! generator (`lockstep certs init` calls the same code), in a temp dir
//! removed on drop, and what each process needs to use one of them: flags,
//! `LOCKSTEP_TLS_*` environment, or a [`Transport`] for the test's own
//! gRPC calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use lockstep_proto::tls::{TlsFiles, Transport, certs};

/// Identities issued up front: five coordinators, an operator, a viewer.
const BASE: &[&str] = &[
    "coordinator-1",
    "coordinator-2",
    "coordinator-3",
    "coordinator-4",
    "coordinator-5",
    "operator",
    "viewer",
];

/// A CA with certificates for 127.0.0.1 and localhost.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A new CA with [`BASE`] identities and `agent-NAME` for each of
    /// `agents`.
    pub fn new(agents: &[&str]) -> anyhow::Result<Arc<Pki>> {
        let dir = tempfile::Builder::new()
            .prefix("ls-pki-")
            .tempdir()
            .context("temp dir for the test CA")?;
        let pki = Pki { dir };
        let mut names: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
        names.extend(agents.iter().map(|a| format!("agent-{a}")));
        pki.issue(&names)?;
        Ok(Arc::new(pki))
    }

    /// Issues more identities with the same CA.
    pub fn issue(&self, identities: &[String]) -> anyhow::Result<()> {
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        certs::issue(self.dir.path(), identities, &hosts, false)
            .with_context(|| format!("issue {identities:?}"))?;
        Ok(())
    }

    /// Issues `identity` again: a new key and certificate in its files.
    pub fn reissue(&self, identity: &str) -> anyhow::Result<()> {
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        certs::issue(self.dir.path(), &[identity.to_string()], &hosts, true)
            .with_context(|| format!("reissue {identity}"))?;
        Ok(())
    }

    /// The directory holding `ca.pem` and `IDENTITY.pem`/`.key`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The files of `identity` (issued on first use).
    pub fn files(&self, identity: &str) -> anyhow::Result<TlsFiles> {
        let p = certs::paths(self.dir.path(), identity);
        if !p.cert.exists() {
            self.issue(&[identity.to_string()])?;
        }
        Ok(TlsFiles {
            cert: p.cert,
            key: p.key,
            ca: self.ca(),
        })
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join(certs::CA_CERT)
    }

    /// `--tls-cert F --tls-key F --tls-ca F` for `identity`.
    pub fn args(&self, identity: &str) -> anyhow::Result<Vec<String>> {
        let f = self.files(identity)?;
        Ok([
            "--tls-cert".into(),
            f.cert.display().to_string(),
            "--tls-key".into(),
            f.key.display().to_string(),
            "--tls-ca".into(),
            f.ca.display().to_string(),
        ]
        .to_vec())
    }

    /// `LOCKSTEP_TLS_CERT`, `_KEY` and `_CA` for `identity`.
    pub fn env(&self, identity: &str) -> anyhow::Result<Vec<(String, String)>> {
        let f = self.files(identity)?;
        Ok(vec![
            ("LOCKSTEP_TLS_CERT".into(), f.cert.display().to_string()),
            ("LOCKSTEP_TLS_KEY".into(), f.key.display().to_string()),
            ("LOCKSTEP_TLS_CA".into(), f.ca.display().to_string()),
        ])
    }

    /// A transport for the test's own calls as `identity`.
    pub fn transport(&self, identity: &str) -> anyhow::Result<Transport> {
        Transport::from_files(Some(self.files(identity)?))
            .with_context(|| format!("TLS as {identity}"))
    }
}

/// The transport of a harness process's own probes: as `identity` with
/// `pki`, or plaintext.
pub fn transport_as(pki: Option<&Arc<Pki>>, identity: &str) -> anyhow::Result<Transport> {
    match pki {
        Some(p) => p.transport(identity),
        None => Ok(Transport::Plaintext),
    }
}

/// A channel to `url` through `transport`.
pub async fn channel(
    transport: &Transport,
    url: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad URL {url}"))?
        .connect_timeout(std::time::Duration::from_secs(2));
    transport
        .connect(endpoint)
        .await
        .with_context(|| format!("connect to {url}"))
}
