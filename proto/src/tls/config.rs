//! Certificates and keys from PEM files, and the rustls configurations built
//! from them. [`Tls::reload`] re-reads the files (on SIGHUP): connections
//! made after it use the new files, connections already open keep theirs,
//! so a raft group never drops for a certificate rotation.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::Error;

/// Where one process's certificate, key and CA bundle are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM); must not be readable by group or others.
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) every peer's certificate must chain to.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The three files, when all or none are given; an error naming what is
    /// missing otherwise.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, Error> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("tls-cert", cert.is_none()),
                    ("tls-key", key.is_none()),
                    ("tls-ca", ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(n, m)| m.then_some(n))
                .collect();
                Err(Error::Setup(format!(
                    "TLS needs a certificate, a key and a CA; missing: {}",
                    missing.join(", ")
                )))
            }
        }
    }
}

/// The configurations of one generation of files.
#[derive(Debug)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: String,
}

/// A process's TLS setup: the files it came from and the current rustls
/// configurations, replaced as a whole by [`Tls::reload`].
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, Error> {
        let loaded = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// Re-reads the files. On an error the previous configuration stays in
    /// use and the error is returned.
    pub fn reload(&self) -> Result<(), Error> {
        let loaded = Arc::new(load(&self.files)?);
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// The files this setup reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// This process's own identity (from its certificate).
    pub fn identity(&self) -> String {
        self.current().identity.clone()
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn load(files: &TlsFiles) -> Result<Loaded, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certs(&files.cert, "certificate")?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(
            "certificate",
            &files.cert,
            "no certificate in it",
        ));
    };
    let identity = identity_of(leaf).ok_or_else(|| {
        file_error(
            "certificate",
            &files.cert,
            "the certificate has neither a subject common name nor a DNS name",
        )
    })?;
    let key = private_key(&files.key)?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca, "CA")? {
        roots
            .add(ca)
            .map_err(|e| file_error("CA", &files.ca, &e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(file_error("CA", &files.ca, "no certificate in it"));
    }
    let roots = Arc::new(roots);
    let config_error = |e: rustls::Error| Error::Config {
        cert: files.cert.clone(),
        reason: e.to_string(),
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| Error::Config {
            cert: files.ca.clone(),
            reason: e.to_string(),
        })?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config_error)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config_error)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
    })
}

fn file_error(what: &'static str, path: &Path, reason: &str) -> Error {
    Error::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(what, path, &e.to_string()))
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path, what)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, &format!("not PEM certificates: {e}")))
}

/// The private key, refused when group or others may read the file (as ssh
/// refuses such keys).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let meta = std::fs::metadata(path).map_err(|e| file_error("key", path, &e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error("key", path, &format!("no PEM private key: {e}")))
}

/// A certificate's identity: its subject common name, or else its first DNS
/// subject alternative name.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_string);
    cn.or_else(|| {
        let san = parsed.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
    })
}

/// The TLS settings of a process, as flags (`--tls-cert`, `--tls-key`,
/// `--tls-ca`, or `LOCKSTEP_TLS_*` in the environment) or as the `[tls]`
/// table of a TOML file (`cert`, `key`, `ca`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Serialize, serde::Deserialize,
)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// This process's certificate (PEM) for mutual TLS; its subject common
    /// name is the identity.
    #[arg(
        long = "tls-cert",
        env = "LOCKSTEP_TLS_CERT",
        value_name = "PEM",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(
        long = "tls-key",
        env = "LOCKSTEP_TLS_KEY",
        value_name = "PEM",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) every peer must chain to.
    #[arg(
        long = "tls-ca",
        env = "LOCKSTEP_TLS_CA",
        value_name = "PEM",
        global = true
    )]
    pub ca: Option<PathBuf>,
}

impl TlsOptions {
    /// These settings with every one `over` gives replaced (flags over a
    /// file's keys).
    pub fn overridden_by(&self, over: &TlsOptions) -> TlsOptions {
        TlsOptions {
            cert: over.cert.clone().or_else(|| self.cert.clone()),
            key: over.key.clone().or_else(|| self.key.clone()),
            ca: over.ca.clone().or_else(|| self.ca.clone()),
        }
    }

    /// The files, when TLS is configured.
    pub fn files(&self) -> Result<Option<TlsFiles>, Error> {
        TlsFiles::from_parts(self.cert.clone(), self.key.clone(), self.ca.clone())
    }

    /// The transport these settings describe: TLS with the files read and
    /// checked now, or plaintext.
    pub fn transport(&self) -> Result<super::Transport, Error> {
        super::Transport::from_files(self.files()?)
    }
}
