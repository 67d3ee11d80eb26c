//! Free TCP ports on 127.0.0.1.
//!
//! The kernel hands out a free port when we bind port 0; we read it and close
//! the socket again, so the port is *probably* still free when the server we
//! start binds it a few milliseconds later. Another process can take it in
//! between: callers detect "address already in use" and ask again. Within this
//! process a port is never handed out twice (the kernel may return a port we
//! just closed), which removes the most likely collision: two servers of the
//! same test getting the same port.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;

/// How many times [`free_port`] asks the kernel before giving up.
const ATTEMPTS: usize = 100;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a port on 127.0.0.1 that was free a moment ago and that this
/// process has not handed out before.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("bind 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("read the port of a 127.0.0.1:0 listener")?
            .port();
        drop(listener);
        let mut seen = handed_out()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no fresh free port on 127.0.0.1 after {ATTEMPTS} attempts")
}

/// True if a log line says a listener could not bind because the address is
/// taken (mariadbd: "Got error: 98: Address already in use"; Rust programs:
/// "Address already in use (os error 98)").
pub fn says_address_in_use(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("addrinuse")
}
