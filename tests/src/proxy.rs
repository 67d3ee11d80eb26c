//! A fault-injecting TCP proxy for the links between roles.
//!
//! A [`Proxy`] listens on a free port of 127.0.0.1 and forwards every
//! connection to a target address. Its [`ProxyHandle`] changes what happens
//! to the bytes at run time, for new and open connections alike:
//!
//! - [`Fault::Pass`]: normal forwarding;
//! - [`Fault::Delay`]: every chunk is held for N ms per direction;
//! - [`Fault::Stall`]: a silent partition: connections stay open but nothing
//!   is forwarded in the stalled direction(s). The proxy stops reading, so
//!   the sender's kernel buffers fill and TCP flow control stops it; what was
//!   sent is delivered once the stall ends (as TCP retransmission would),
//!   unless a peer gave up on the connection first (an HTTP/2 keep-alive
//!   timeout). A stall of one direction is a one-way link
//!   ([`Fault::only`]). A new connection stalled both ways is accepted but
//!   not connected to the target until the stall ends (the target never
//!   hears of it, as with a dropped SYN);
//! - [`Fault::Cut`]: every open connection is reset (RST to both sides) and
//!   new ones are accepted and reset at once.
//!
//! Faults can also apply only to connections opened by one process
//! ([`ProxyHandle::set_from`]): the proxy finds the process that owns the
//! connecting socket in `/proc` (Linux). That is how a test cuts the link
//! between one coordinator and an agent while the other coordinators still
//! reach it through the same proxy.
//!
//! Memory is bounded: each direction of a connection holds at most
//! [`CHUNKS_IN_FLIGHT`] queued chunks of [`CHUNK`] bytes, plus the one being
//! read and the one being written. Dropping the [`Proxy`]
//! stops its listener and every connection task.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::ports;

/// Bytes read from one side in one go.
pub const CHUNK: usize = 16 * 1024;
/// Chunks read but not yet written, per direction of a connection.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many ports to try when another process takes the one we picked.
const BIND_ATTEMPTS: usize = 10;

/// A direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting client to the target (requests).
    Up,
    /// From the target back to the client (replies).
    Down,
}

/// What the proxy does to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything at once.
    #[default]
    Pass,
    /// Hold every chunk for `up` (client → target) or `down` before
    /// forwarding it.
    Delay { up: Duration, down: Duration },
    /// Forward nothing in the stalled direction(s); connections stay open.
    Stall { up: bool, down: bool },
    /// Reset every connection (both sides) and every new one.
    Cut,
}

impl Fault {
    /// The same delay both ways.
    pub fn delay(d: Duration) -> Fault {
        Fault::Delay { up: d, down: d }
    }

    /// A silent partition: nothing flows either way.
    pub fn stall() -> Fault {
        Fault::Stall {
            up: true,
            down: true,
        }
    }

    /// A one-way link: only `dir` flows; the other direction is stalled.
    pub fn only(dir: Direction) -> Fault {
        Fault::Stall {
            up: dir == Direction::Down,
            down: dir == Direction::Up,
        }
    }

    fn stalls(self, dir: Direction) -> bool {
        match (self, dir) {
            (Fault::Stall { up, .. }, Direction::Up) => up,
            (Fault::Stall { down, .. }, Direction::Down) => down,
            (Fault::Cut, _) => true,
            _ => false,
        }
    }

    fn delay_of(self, dir: Direction) -> Duration {
        match (self, dir) {
            (Fault::Delay { up, .. }, Direction::Up) => up,
            (Fault::Delay { down, .. }, Direction::Down) => down,
            _ => Duration::ZERO,
        }
    }
}

/// The faults in force: one for every connection, and overrides for the
/// connections opened by given processes.
#[derive(Debug, Clone, Default)]
struct Rules {
    default: Fault,
    by_pid: BTreeMap<u32, Fault>,
}

/// What a proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections reset by a cut (open ones and refused new ones).
    pub reset: u64,
    /// Connections that could not reach the target.
    pub unreachable: u64,
    /// Bytes read from clients.
    pub read_up: u64,
    /// Bytes written to the target.
    pub written_up: u64,
    /// Bytes read from the target.
    pub read_down: u64,
    /// Bytes written to clients.
    pub written_down: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    reset: AtomicU64,
    unreachable: AtomicU64,
    read_up: AtomicU64,
    written_up: AtomicU64,
    read_down: AtomicU64,
    written_down: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn read(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::Up => &self.read_up,
            Direction::Down => &self.read_down,
        }
    }

    fn written(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::Up => &self.written_up,
            Direction::Down => &self.written_down,
        }
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    listen: SocketAddr,
    target: Mutex<Option<SocketAddr>>,
    rules: watch::Sender<Rules>,
    counters: Counters,
}

/// Controls a [`Proxy`]; cheap to clone. Changes apply to open connections
/// and to new ones.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("name", &self.shared.name)
            .field("listen", &self.shared.listen)
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// Applies `fault` to every connection without a per-process rule.
    pub fn set(&self, fault: Fault) {
        tracing::info!(proxy = self.shared.name, ?fault, "proxy fault");
        self.shared.rules.send_modify(|r| r.default = fault);
    }

    /// Applies `fault` to the connections opened by process `pid` (found in
    /// `/proc` by the socket's inode), overriding [`ProxyHandle::set`].
    pub fn set_from(&self, pid: u32, fault: Fault) {
        tracing::info!(
            proxy = self.shared.name,
            pid,
            ?fault,
            "proxy fault for one process"
        );
        self.shared.rules.send_modify(|r| {
            r.by_pid.insert(pid, fault);
        });
    }

    /// Removes the rule for process `pid`.
    pub fn clear_from(&self, pid: u32) {
        self.shared.rules.send_modify(|r| {
            r.by_pid.remove(&pid);
        });
    }

    /// Normal forwarding for everyone: no fault, no per-process rule. Open
    /// stalled connections deliver what they held; reset ones stay closed.
    pub fn heal(&self) {
        tracing::info!(proxy = self.shared.name, "proxy healed");
        self.shared.rules.send_replace(Rules::default());
    }

    /// Delays every chunk by `up` (client → target) and `down`.
    pub fn delay(&self, up: Duration, down: Duration) {
        self.set(Fault::Delay { up, down });
    }

    /// Resets every connection and every new one.
    pub fn cut(&self) {
        self.set(Fault::Cut);
    }

    /// Forwards nothing either way; connections stay open.
    pub fn stall(&self) {
        self.set(Fault::stall());
    }

    /// Forwards only `dir`.
    pub fn one_way(&self, dir: Direction) {
        self.set(Fault::only(dir));
    }

    /// Forwards new connections to `target` from now on (open ones keep
    /// theirs).
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// `http://127.0.0.1:PORT`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.listen)
    }

    /// Its name in logs.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: get(&c.accepted),
            reset: get(&c.reset),
            unreachable: get(&c.unreachable),
            read_up: get(&c.read_up),
            written_up: get(&c.written_up),
            read_down: get(&c.read_down),
            written_down: get(&c.written_down),
        }
    }
}

/// A running proxy. Dropping it closes its port and every connection.
#[derive(Debug)]
pub struct Proxy {
    handle: ProxyHandle,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy named `name` (for logs) on a free port, forwarding to
    /// `target`.
    pub async fn start(name: impl Into<String>, target: SocketAddr) -> anyhow::Result<Proxy> {
        Proxy::launch(name.into(), Some(target)).await
    }

    /// Starts a proxy whose target is set later ([`ProxyHandle::set_target`]),
    /// for a process that must be told the proxy's URL before it has a port.
    /// Until then every connection is closed at once.
    pub async fn start_without_target(name: impl Into<String>) -> anyhow::Result<Proxy> {
        Proxy::launch(name.into(), None).await
    }

    async fn launch(name: String, target: Option<SocketAddr>) -> anyhow::Result<Proxy> {
        crate::init_tracing();
        // Bound inside the proxies' runtime: its sockets belong to it.
        let what = name.clone();
        let bind = runtime().spawn(async move {
            let name = what;
            let mut last_error = None;
            for _ in 0..BIND_ATTEMPTS {
                let port = ports::free_port()?;
                match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                    Ok(listener) => return Ok(listener),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(e),
                    Err(e) => {
                        return Err(e).with_context(|| format!("bind proxy {name} to port {port}"));
                    }
                }
            }
            anyhow::bail!(
                "bind proxy {name}: no free port after {BIND_ATTEMPTS} attempts (last: {last_error:?})"
            )
        });
        let listener = bind.await.context("the proxy's bind task failed")??;
        let listen = listener
            .local_addr()
            .with_context(|| format!("read the address of proxy {name}"))?;
        let shared = Arc::new(Shared {
            name,
            listen,
            target: Mutex::new(target),
            rules: watch::Sender::new(Rules::default()),
            counters: Counters::default(),
        });
        tracing::info!(proxy = shared.name, %listen, ?target, "proxy listening");
        let task = runtime().spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            handle: ProxyHandle { shared },
            task,
        })
    }

    /// A handle to control it from elsewhere.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    /// `http://127.0.0.1:PORT`, for gRPC clients.
    pub fn url(&self) -> String {
        self.handle.url()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every
        // connection task; their sockets close with them.
        self.task.abort();
    }
}

/// The runtime every proxy runs on: its own thread, so that proxies keep
/// forwarding while a test blocks its own thread (a process stop waits
/// synchronously) and survive the runtime of the test that started them
/// only until they are dropped.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lockstep-proxy")
            .enable_all()
            .build()
            .expect("the proxies' runtime starts (threads and an I/O driver)")
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection(client, peer, shared.clone()));
                }
                Err(e) => {
                    // Out of descriptors or the like: pause rather than spin.
                    tracing::warn!(proxy = shared.name, error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Which processes own a connection's client socket, looked up once per
/// process asked about.
struct Owner {
    inode: Option<u64>,
    known: HashMap<u32, bool>,
}

impl Owner {
    fn is(&mut self, pid: u32) -> bool {
        let Some(inode) = self.inode else {
            return false;
        };
        *self
            .known
            .entry(pid)
            .or_insert_with(|| process_owns_socket(pid, inode))
    }

    fn fault(&mut self, rules: &Rules) -> Fault {
        for (&pid, &fault) in &rules.by_pid {
            if self.is(pid) {
                return fault;
            }
        }
        rules.default
    }
}

/// One client connection, from accept to close.
async fn connection(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let mut owner = Owner {
        inode: client
            .local_addr()
            .ok()
            .and_then(|local| socket_inode(peer, local)),
        known: HashMap::new(),
    };
    let mut rules = shared.rules.subscribe();
    let current = rules.borrow_and_update().clone();
    let fault = owner.fault(&current);
    let (fault_tx, faults) = watch::channel(fault);
    // Follows rule changes for this connection; returns on a cut.
    let control = async move {
        loop {
            if *fault_tx.borrow() == Fault::Cut {
                return;
            }
            if rules.changed().await.is_err() {
                // The proxy is gone.
                return;
            }
            // Cloned: the ownership lookup reads /proc, not under the lock.
            let current = rules.borrow_and_update().clone();
            let fault = owner.fault(&current);
            fault_tx.send_if_modified(|f| std::mem::replace(f, fault) != fault);
        }
    };
    tokio::pin!(control);
    let server = tokio::select! {
        () = &mut control => {
            reset(&client);
            shared.counters.reset.fetch_add(1, Ordering::Relaxed);
            return;
        }
        server = connect_when_flowing(faults.clone(), &shared) => server,
    };
    let Some(server) = server else {
        shared.counters.unreachable.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    tracing::debug!(proxy = shared.name, %peer, "proxy connection open");
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pump(
        &mut client_read,
        &mut server_write,
        Direction::Up,
        faults.clone(),
        &shared,
    );
    let down = pump(
        &mut server_read,
        &mut client_write,
        Direction::Down,
        faults,
        &shared,
    );
    let failed = tokio::select! {
        () = &mut control => {
            shared.counters.reset.fetch_add(1, Ordering::Relaxed);
            true
        }
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(proxy = shared.name, %peer, error = %e, "proxy connection failed");
                true
            }
        },
    };
    if failed {
        // A cut, or one side reset: reset both sides.
        reset(client_write.as_ref());
        reset(server_write.as_ref());
    }
}

/// Connects to the target once the fault lets anything through (a new
/// connection stalled both ways waits, unconnected); `None` if there is no
/// target or it cannot be reached.
async fn connect_when_flowing(
    mut faults: watch::Receiver<Fault>,
    shared: &Shared,
) -> Option<TcpStream> {
    let _ = faults
        .wait_for(|f| !(f.stalls(Direction::Up) && f.stalls(Direction::Down)))
        .await;
    let target = (*shared.target.lock().unwrap_or_else(|p| p.into_inner()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(proxy = shared.name, %target, error = %e, "proxy target unreachable");
            None
        }
        Err(_) => None,
    }
}

/// Makes the socket's close send RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Forwards `from` → `to` in one direction through a bounded queue,
/// honouring the connection's fault; passes EOF on as a half-close.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    dir: Direction,
    faults: watch::Receiver<Fault>,
    shared: &Shared,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let mut read_faults = faults.clone();
    let reader = async move {
        loop {
            // Not reading while stalled is what stops the sender.
            let _ = read_faults.wait_for(|f| !f.stalls(dir)).await;
            let mut buf = vec![0u8; CHUNK];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                // EOF: the queue closes when `tx` drops.
                return Ok::<(), std::io::Error>(());
            }
            buf.truncate(n);
            Counters::add(shared.counters.read(dir), n);
            if tx.send((Instant::now(), buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_faults = faults;
    let writer = async move {
        while let Some((read_at, buf)) = rx.recv().await {
            loop {
                let fault = *write_faults.borrow_and_update();
                let due = read_at + fault.delay_of(dir);
                if fault.stalls(dir) {
                    if write_faults.changed().await.is_err() {
                        return Ok(());
                    }
                } else if Instant::now() < due {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        changed = write_faults.changed() => if changed.is_err() {
                            return Ok(());
                        },
                    }
                } else {
                    break;
                }
            }
            to.write_all(&buf).await?;
            Counters::add(shared.counters.written(dir), buf.len());
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// The inode of the client socket of the connection `peer` → `local`, from
/// `/proc/net/tcp` (the client's socket has `peer` as its local address).
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let table = match peer {
        SocketAddr::V4(_) => std::fs::read_to_string("/proc/net/tcp").ok()?,
        SocketAddr::V6(_) => std::fs::read_to_string("/proc/net/tcp6").ok()?,
    };
    find_inode(&table, peer, local)
}

/// Parses `/proc/net/tcp`: `sl local rem st tx:rx tr:when retrnsmt uid
/// timeout inode ...`, addresses as `HEXADDR:HEXPORT` (IPv4 in the host's
/// byte order).
fn find_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (SocketAddr::V4(l), SocketAddr::V4(r)) = (local, remote) else {
        return None;
    };
    let fmt = |a: std::net::SocketAddrV4| {
        format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )
    };
    let (want_local, want_remote) = (fmt(l), fmt(r));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == want_local && fields[2] == want_remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

/// Whether process `pid` has a descriptor on socket `inode`.
fn process_owns_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == want.as_str())
    })
}

#[cfg(test)]
mod tests;
