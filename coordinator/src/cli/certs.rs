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
    /// Coordinators: identities coordinator-1 .. coordinator-N.
    // A String checked to be a count: this flag shadows the global
    // `--coordinators` (URLs, a String) in this subcommand, and clap hands
    // the value to the global's field too, which must be able to read it.
    #[arg(long, default_value = "3", value_name = "N", value_parser = count)]
    pub coordinators: String,
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

/// `--coordinators N`: a number of coordinators, kept as its text.
fn count(text: &str) -> Result<String, String> {
    text.parse::<u64>()
        .map(|_| text.to_string())
        .map_err(|e| format!("'{text}' is not a number of coordinators: {e}"))
}

pub(super) fn init(json: bool, a: &CertsInitArgs) -> anyhow::Result<i32> {
    let coordinators: u64 = count(&a.coordinators)
        .and_then(|n| n.parse::<u64>().map_err(|e| e.to_string()))
        .map_err(|e| anyhow::anyhow!("--coordinators: {e}"))?;
    let new_ca = !a.dir.join(certs::CA_CERT).exists();
    let mut names: Vec<String> = (1..=coordinators)
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{CertsCmd, Cli, Command};

    fn parse(args: &[&str]) -> Result<super::CertsInitArgs, clap::Error> {
        let cli =
            Cli::try_parse_from(["lockstep", "certs", "init", "/tmp/pki"].iter().chain(args))?;
        let Command::Certs(CertsCmd::Init(a)) = cli.command else {
            panic!("not certs init: {:?}", cli.command);
        };
        Ok(a)
    }

    /// `--coordinators N` here is a count, though the global
    /// `--coordinators` is a list of URLs: parsing must not panic.
    #[test]
    fn coordinators_is_a_count_beside_the_global_url_list() {
        assert_eq!(parse(&[]).expect("default").coordinators, "3");
        let a = parse(&["--coordinators", "5", "--agent", "db1", "--host", "h1"]).expect("five");
        assert_eq!(a.coordinators, "5");
        assert_eq!(a.agents, ["db1"]);
        assert_eq!(a.hosts, ["h1"]);
        assert_eq!(
            parse(&["--coordinators", "0"]).expect("none").coordinators,
            "0"
        );
        let e = parse(&["--coordinators", "http://a:1"]).expect_err("not a count");
        assert!(
            e.to_string().contains("is not a number of coordinators"),
            "{e}"
        );
    }
}
