//! [`Transport`]: how a daemon accepts and how any process dials gRPC
//! connections, with mutual TLS or in plaintext.
//!
//! A server's accept loop hands TLS handshakes to tasks of their own (a
//! slow or hostile client never holds up the next accept), refuses and logs
//! any connection whose handshake fails (plaintext, no client certificate,
//! a certificate from another CA), and attaches the caller's identity to
//! the connection as its [`PeerInfo`]. A client's connector dials TCP and
//! runs the handshake with the configuration current at that moment, so a
//! reload applies to every new connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Error;
use super::caller::PeerInfo;
use super::config::{Tls, TlsFiles, identity_of};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the gRPC server.
const BACKLOG: usize = 64;
/// Refused connections from one address are reported at most this often
/// (every one is logged).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// A connection refused at the TLS handshake, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub remote: SocketAddr,
    /// Why, with how many more from the same address went unreported.
    pub reason: String,
}

/// Rate-limits [`Refused`] reports per address.
#[derive(Debug)]
struct Reporter {
    tx: tokio::sync::mpsc::Sender<Refused>,
    /// Per address: when it was last reported and how many were not since.
    last: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u64)>>,
}

impl Reporter {
    fn refused(&self, remote: SocketAddr, reason: String) {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() > 10_000 {
            last.retain(|_, (at, _)| now.duration_since(*at) < REPORT_EVERY);
        }
        let entry = last.entry(remote.ip()).or_insert((now - REPORT_EVERY, 0));
        if now.duration_since(entry.0) < REPORT_EVERY {
            entry.1 += 1;
            return;
        }
        let reason = match entry.1 {
            0 => reason,
            n => format!(
                "{reason} (and {n} more from {} unreported since)",
                remote.ip()
            ),
        };
        *entry = (now, 0);
        let _ = self.tx.try_send(Refused { remote, reason });
    }
}

/// Mutual TLS with the given files, or plaintext.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// No encryption, no authentication.
    #[default]
    Plaintext,
    /// Mutual TLS.
    Tls(Arc<Tls>),
}

impl Transport {
    /// TLS from `files`, or plaintext without them.
    pub fn from_files(files: Option<TlsFiles>) -> Result<Transport, Error> {
        Ok(match files {
            Some(files) => Transport::Tls(Tls::load(files)?),
            None => Transport::Plaintext,
        })
    }

    /// Whether connections are encrypted and authenticated.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// This process's own identity; `None` in plaintext.
    pub fn identity(&self) -> Option<String> {
        match self {
            Transport::Tls(tls) => Some(tls.identity()),
            Transport::Plaintext => None,
        }
    }

    /// What a daemon does before it serves on `listen`: refuse plaintext
    /// off loopback unless `insecure_plaintext` (then warn loudly),
    /// and reload the certificates on SIGHUP. `what` names the daemon.
    pub fn prepare_to_serve(
        &self,
        what: &str,
        listen: SocketAddr,
        insecure_plaintext: bool,
    ) -> Result<(), Error> {
        self.check_listen(what, listen, insecure_plaintext)?;
        self.reload_on_hangup()
            .map_err(|e| Error::Setup(format!("{what} cannot watch SIGHUP: {e}")))
    }

    /// Refuses plaintext on an address other hosts can reach unless the
    /// operator said `--insecure-plaintext`; with it, warns loudly. `what`
    /// names the daemon in the messages.
    fn check_listen(
        &self,
        what: &str,
        listen: SocketAddr,
        insecure_plaintext: bool,
    ) -> Result<(), Error> {
        if self.is_tls() || listen.ip().is_loopback() {
            return Ok(());
        }
        if !insecure_plaintext {
            return Err(Error::Setup(format!(
                "{what} refuses to listen on {listen} without TLS: anyone who can reach it \
                 could run backups and restores. Give --tls-cert, --tls-key and --tls-ca \
                 (see `lockstep certs init`), listen on a loopback address, or pass \
                 --insecure-plaintext to accept the risk"
            )));
        }
        tracing::warn!(
            %listen,
            "INSECURE: {what} listens in PLAINTEXT on a non-loopback address \
             (--insecure-plaintext): every call is unauthenticated and unencrypted"
        );
        Ok(())
    }

    /// Reloads the TLS files whenever the process receives SIGHUP, until the
    /// process ends. Nothing to do in plaintext.
    fn reload_on_hangup(&self) -> io::Result<()> {
        let Transport::Tls(tls) = self else {
            return Ok(());
        };
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let tls = tls.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.files().cert.display(),
                        identity = %tls.identity(),
                        "SIGHUP: TLS certificates reloaded; new connections use them"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: TLS certificates NOT reloaded; the previous ones stay in use"
                    ),
                }
            }
        });
        Ok(())
    }

    /// The connections accepted on `listener`, for
    /// `tonic::transport::Server::serve_with_incoming*`. The accept loop
    /// ends when the stream is dropped. Connections refused at the TLS
    /// handshake are sent to `refused` (at most one a minute per address).
    pub fn incoming(
        &self,
        listener: TcpListener,
        refused: Option<tokio::sync::mpsc::Sender<Refused>>,
    ) -> ReceiverStream<io::Result<Conn>> {
        let reporter = refused.map(|tx| {
            Arc::new(Reporter {
                tx,
                last: Default::default(),
            })
        });
        let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
        let acceptor = match self {
            Transport::Tls(tls) => Some(tls.clone()),
            Transport::Plaintext => None,
        };
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                };
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: not fatal.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // No Nagle: the cut's messages are tiny and on the lock's
                // critical path.
                let _ = tcp.set_nodelay(true);
                match &acceptor {
                    None => {
                        let conn = Conn {
                            io: Either::Left(tcp),
                            info: PeerInfo {
                                remote: Some(remote),
                                identity: None,
                            },
                        };
                        if tx.send(Ok(conn)).await.is_err() {
                            return;
                        }
                    }
                    Some(tls) => {
                        let acceptor = TlsAcceptor::from(tls.server_config());
                        let tx = tx.clone();
                        let reporter = reporter.clone();
                        tokio::spawn(async move {
                            match handshake(acceptor, tcp, remote).await {
                                Ok(conn) => {
                                    let _ = tx.send(Ok(conn)).await;
                                }
                                Err(reason) => {
                                    tracing::warn!(%remote, "refused a connection: {reason}");
                                    if let Some(r) = reporter {
                                        r.refused(remote, reason);
                                    }
                                }
                            }
                        });
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// A channel to `endpoint` that connects on first use (and reconnects
    /// after a failure), through this transport.
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.connector())
    }

    /// A channel to `endpoint`, connected now.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.connector()).await
    }

    fn connector(
        &self,
    ) -> impl tower::Service<
        Uri,
        Response = TokioIo<ClientIo>,
        Error = io::Error,
        Future = impl Future<Output = io::Result<TokioIo<ClientIo>>> + Send,
    > + Clone
    + Send
    + 'static {
        let tls = match self {
            Transport::Tls(tls) => Some(tls.clone()),
            Transport::Plaintext => None,
        };
        tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move { dial(uri, tls).await.map(TokioIo::new) }
        })
    }
}

/// A client connection: plain TCP or TLS over it.
pub type ClientIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

pub(crate) async fn dial(uri: Uri, tls: Option<Arc<Tls>>) -> io::Result<ClientIo> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Either::Left(tcp));
    };
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} is not a valid TLS server name: {e}"),
        )
    })?;
    let stream = TlsConnector::from(tls.client_config())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS handshake with {host}:{port} failed: {e}"),
            )
        })?;
    Ok(Either::Right(Box::new(stream)))
}

/// The server side of a TLS handshake, or why the connection is refused.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<Conn, String> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => {
            return Err(format!(
                "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}"
            ));
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(identity_of);
    let Some(identity) = identity else {
        return Err("its certificate names no identity".into());
    };
    Ok(Conn {
        io: Either::Right(Box::new(stream)),
        info: PeerInfo {
            remote: Some(remote),
            identity: Some(identity),
        },
    })
}

/// An accepted connection with what is known about its caller.
#[derive(Debug)]
pub struct Conn {
    io: Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>,
    info: PeerInfo,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
