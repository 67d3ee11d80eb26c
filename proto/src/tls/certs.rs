//! A CA and certificates for a lockstep deployment, for demos and tests
//! (`lockstep certs init`). Production brings its own PKI: lockstep only
//! needs PEM files whose subject common name is the identity.
//!
//! Every certificate is valid as a server and as a client (a coordinator
//! serves the CLI and calls agents; an agent serves coordinators and calls
//! media agents) for the given host names and addresses, for a year.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::Error;

/// The CA's certificate and key in a certificates directory.
pub const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// How long issued certificates are valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The files of one issued identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub identity: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where `identity`'s certificate and key are in `dir`.
pub fn paths(dir: &Path, identity: &str) -> Issued {
    Issued {
        identity: identity.to_string(),
        cert: dir.join(format!("{identity}.pem")),
        key: dir.join(format!("{identity}.key")),
    }
}

/// Issues a certificate for each of `identities`, valid for `hosts` (DNS
/// names or IP addresses), into `dir`: with the CA there (`ca.pem`,
/// `ca.key`), or a new CA when the directory has none. An identity whose
/// files exist is refused unless `replace`. Keys are written 0600 and the
/// directory is created 0700.
pub fn issue(
    dir: &Path,
    identities: &[String],
    hosts: &[String],
    replace: bool,
) -> Result<(PathBuf, Vec<Issued>), Error> {
    let fail = |path: &Path, reason: String| Error::File {
        what: "certificates",
        path: path.to_path_buf(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(dir, format!("cannot create the directory: {e}")))?;
    for id in identities {
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(Error::Setup(format!(
                "'{id}' is not a usable identity name (no slashes, not empty, no leading dot)"
            )));
        }
        let p = paths(dir, id);
        if !replace && (p.cert.exists() || p.key.exists()) {
            return Err(fail(
                &p.cert,
                format!("identity '{id}' is already issued here; pass --replace to issue it again"),
            ));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let issuer = if ca_cert.exists() {
        let key_pem = std::fs::read_to_string(&ca_key)
            .map_err(|e| fail(&ca_key, format!("cannot read the CA key: {e}")))?;
        let cert_pem = std::fs::read_to_string(&ca_cert)
            .map_err(|e| fail(&ca_cert, format!("cannot read the CA: {e}")))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rc(&ca_key))?;
        Issuer::from_ca_cert_pem(&cert_pem, key).map_err(rc(&ca_cert))?
    } else {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "lockstep CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + VALIDITY * 10;
        let key = KeyPair::generate().map_err(rc(&ca_key))?;
        let cert = params.self_signed(&key).map_err(rc(&ca_cert))?;
        write(&ca_key, &key.serialize_pem(), 0o600)?;
        write(&ca_cert, &cert.pem(), 0o644)?;
        Issuer::new(params, key)
    };
    let mut issued = Vec::new();
    for id in identities {
        let p = paths(dir, id);
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(rc(&p.cert))?;
        params
            .distinguished_name
            .push(DnType::CommonName, id.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + VALIDITY;
        let key = KeyPair::generate().map_err(rc(&p.key))?;
        let cert = params.signed_by(&key, &issuer).map_err(rc(&p.cert))?;
        write(&p.key, &key.serialize_pem(), 0o600)?;
        write(&p.cert, &cert.pem(), 0o644)?;
        issued.push(p);
    }
    Ok((ca_cert, issued))
}

fn rc(path: &Path) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::File {
        what: "certificates",
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `text` to `path` (replacing it) with `mode`, durably.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::File {
        what: "certificates",
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
