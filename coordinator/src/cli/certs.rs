//! `lockstep certs init`: a CA and certificates for a coordinator group,
//! agents, an operator and a viewer, for demos and tests. Production
//! brings its own PKI (docs/security.md).

use std::path::PathBuf;

use clap::Args;
use lockstep_proto::tls::certs;

/// `certs init` arguments.
#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory for the files (created 0700); a CA already there
    /// (ca.pem, ca.key) issues the new certificates.
    pub dir: PathBuf,
    /// Coordinators: identities coordinator-1 .. coordinator-N (0: none;
    /// `--coordinators` is the CLI's coordinator URL list).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub coordinator_count: u64,
    /// An agent by its server name: identity agent-NAME (repeatable).
    #[arg(long = "agent", value_name = "NAME")]
    pub agents: Vec<String>,
    /// Any other identity, e.g. a second operator (repeatable). `operator`
    /// and `viewer` are always issued with a new CA.
    #[arg(long = "identity", value_name = "NAME")]
    pub identities: Vec<String>,
    /// Host names and IP addresses the certificates are valid for
    /// (repeatable) [default: 127.0.0.1, ::1, localhost].
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Issue identities whose files exist again (new keys).
    #[arg(long)]
    pub replace: bool,
}

pub(super) fn init(json: bool, a: &CertsInitArgs) -> anyhow::Result<i32> {
    let new_ca = !a.dir.join(certs::CA_CERT).exists();
    let mut names: Vec<String> = (1..=a.coordinator_count)
        .map(|i| format!("coordinator-{i}"))
        .collect();
    names.extend(a.agents.iter().map(|n| format!("agent-{n}")));
    if new_ca {
        names.extend(["operator".to_string(), "viewer".to_string()]);
    }
    names.extend(a.identities.iter().cloned());
    names.dedup();
    let hosts = if a.hosts.is_empty() {
        vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
    } else {
        a.hosts.clone()
    };
    let (ca, issued) = certs::issue(&a.dir, &names, &hosts, a.replace)?;
    if json {
        let out = serde_json::json!({
            "ca": ca,
            "new_ca": new_ca,
            "hosts": hosts,
            "issued": issued.iter().map(|i| serde_json::json!({
                "identity": i.identity, "cert": i.cert, "key": i.key,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let made = if new_ca { "created" } else { "used" };
        println!("CA {made}: {}", ca.display());
        for i in &issued {
            println!(
                "{:<20} {}  {}",
                i.identity,
                i.cert.display(),
                i.key.display()
            );
        }
        println!(
            "valid for: {}. Give each process --tls-cert, --tls-key and --tls-ca {}.",
            hosts.join(", "),
            ca.display()
        );
    }
    Ok(0)
}
