//! The proxy's own tests: plain TCP echo servers, no MariaDB.

use super::*;

/// Generous bound for "at once" on a loaded 2-core machine.
const QUICK: Duration = Duration::from_secs(2);
/// How long "nothing arrives" is watched.
const SILENCE: Duration = Duration::from_millis(300);

/// An echo server; each finished connection is reported on the channel.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let closed_tx = closed_tx.clone();
            conns.spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed, task)
}

async fn connect(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy")
}

/// Writes `msg` and reads the same number of bytes back within `within`;
/// `None` if they did not all arrive in time.
async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).await.expect("write through the proxy");
    read_exact_within(s, msg.len(), within).await
}

async fn read_exact_within(s: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        Ok(Err(e)) => panic!("read through the proxy failed: {e}"),
        Err(_) => None,
    }
}

/// Whether the connection is closed (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Pass: bytes flow both ways, and a half-close reaches the target.
#[tokio::test]
async fn passes_both_ways_and_passes_eof_on() {
    let (target, mut closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let mut s = connect(&proxy).await;
    let got = round_trip(&mut s, b"hello", QUICK).await;
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    // Half-close: the server sees EOF, echoes nothing more and closes.
    s.shutdown().await.expect("half-close");
    assert!(closed_within(&mut s, QUICK).await);
    tokio::time::timeout(QUICK, closed.recv())
        .await
        .expect("server saw the close");
    let st = proxy.handle().stats();
    assert_eq!((st.accepted, st.written_up, st.written_down), (1, 5, 5));
}

/// Delay: a round trip takes at least the delay of either direction;
/// healed, it is quick again.
#[tokio::test]
async fn delay_holds_each_direction() {
    let (target, _closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let h = proxy.handle();
    let mut s = connect(&proxy).await;
    for (up, down) in [(200, 0), (0, 200), (100, 100)] {
        h.delay(Duration::from_millis(up), Duration::from_millis(down));
        let started = Instant::now();
        assert!(round_trip(&mut s, b"x", QUICK * 2).await.is_some());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200),
            "{up}/{down} ms: {took:?}"
        );
    }
    h.heal();
    let started = Instant::now();
    assert!(round_trip(&mut s, b"y", QUICK).await.is_some());
    assert!(started.elapsed() < QUICK);
}

/// Stall: open and new connections stay up, nothing reaches the target;
/// healed, what was held is delivered.
#[tokio::test]
async fn stall_forwards_nothing_until_healed_then_delivers() {
    let (target, _closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let h = proxy.handle();
    let mut open = connect(&proxy).await;
    assert!(round_trip(&mut open, b"a", QUICK).await.is_some());
    h.stall();
    assert_eq!(round_trip(&mut open, b"held", SILENCE).await, None);
    // A connection opened during the stall stays open and silent.
    let mut new = connect(&proxy).await;
    assert_eq!(round_trip(&mut new, b"new", SILENCE).await, None);
    let st = h.stats();
    assert_eq!(st.written_up, 1, "nothing reached the target: {st:?}");
    h.heal();
    let got = read_exact_within(&mut open, 4, QUICK).await;
    assert_eq!(got.as_deref(), Some(&b"held"[..]));
    let got = read_exact_within(&mut new, 3, QUICK).await;
    assert_eq!(got.as_deref(), Some(&b"new"[..]));
}

/// One-way: requests reach the target but replies are held, then the
/// other way round; healed, everything arrives.
#[tokio::test]
async fn one_way_forwards_only_that_direction() {
    let (target, _closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let h = proxy.handle();
    let mut s = connect(&proxy).await;
    assert!(round_trip(&mut s, b"a", QUICK).await.is_some());

    h.one_way(Direction::Up);
    assert_eq!(round_trip(&mut s, b"up", SILENCE).await, None);
    let st = h.stats();
    assert_eq!(st.written_up, 3, "the request went through: {st:?}");
    assert_eq!(st.written_down, 1, "the echo did not: {st:?}");

    h.one_way(Direction::Down);
    // The held echo flows now; a new request does not.
    let got = read_exact_within(&mut s, 2, QUICK).await;
    assert_eq!(got.as_deref(), Some(&b"up"[..]));
    assert_eq!(round_trip(&mut s, b"down", SILENCE).await, None);
    assert_eq!(h.stats().written_up, 3);

    h.heal();
    let got = read_exact_within(&mut s, 4, QUICK).await;
    assert_eq!(got.as_deref(), Some(&b"down"[..]));
}

/// Cut: both sides of an open connection are closed, a new one is closed
/// at once without reaching the target; healed, new connections work.
#[tokio::test]
async fn cut_resets_open_connections_and_refuses_new_ones() {
    let (target, mut closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let h = proxy.handle();
    let mut open = connect(&proxy).await;
    assert!(round_trip(&mut open, b"a", QUICK).await.is_some());

    h.cut();
    assert!(closed_within(&mut open, QUICK).await, "client side closed");
    tokio::time::timeout(QUICK, closed.recv())
        .await
        .expect("server side closed");
    // Refused: reset at once, which a loaded machine may report to the
    // connect itself rather than to the first read.
    match TcpStream::connect(proxy.addr()).await {
        Ok(mut new) => assert!(closed_within(&mut new, QUICK).await, "new one refused"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "new one refused: {e}"
        ),
    }
    assert!(
        closed.try_recv().is_err(),
        "the refused one never reached the target"
    );
    assert_eq!(h.stats().reset, 2);

    h.heal();
    let mut again = connect(&proxy).await;
    assert!(round_trip(&mut again, b"b", QUICK).await.is_some());
}

/// A rule for a process applies to its connections only, and overrides
/// the rule for everyone.
#[tokio::test]
async fn per_process_rules_apply_only_to_that_process() {
    let (target, _closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let h = proxy.handle();
    let mut s = connect(&proxy).await;
    assert!(round_trip(&mut s, b"a", QUICK).await.is_some());

    // PID 1 does not own our socket: no effect.
    h.set_from(1, Fault::Cut);
    assert!(round_trip(&mut s, b"b", QUICK).await.is_some());
    // This process does: its open and new connections are stalled.
    h.set_from(std::process::id(), Fault::stall());
    assert_eq!(round_trip(&mut s, b"c", SILENCE).await, None);
    let mut new = connect(&proxy).await;
    assert_eq!(round_trip(&mut new, b"d", SILENCE).await, None);
    // Its rule overrides the default.
    h.set(Fault::Cut);
    assert_eq!(round_trip(&mut new, b"e", SILENCE).await, None);
    h.clear_from(std::process::id());
    assert!(closed_within(&mut s, QUICK).await);
    h.heal();
    let mut again = connect(&proxy).await;
    assert!(round_trip(&mut again, b"f", QUICK).await.is_some());
}

/// A target that never reads: the proxy holds a bounded number of bytes
/// and the client is stopped by TCP flow control.
#[tokio::test]
async fn buffers_are_bounded_when_the_target_does_not_read() {
    // A target that accepts and never reads.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let target = listener.local_addr().expect("address");
    let _held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            kept.push(s);
        }
    });
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let mut s = connect(&proxy).await;
    let blob = vec![7u8; 64 * 1024 * 1024];
    let wrote = tokio::time::timeout(Duration::from_secs(1), s.write_all(&blob)).await;
    assert!(wrote.is_err(), "64 MiB cannot fit in the buffers");
    let st = proxy.handle().stats();
    let held = st.read_up - st.written_up;
    assert!(
        held <= (CHUNK * (CHUNKS_IN_FLIGHT + 2)) as u64,
        "the proxy holds {held} bytes: {st:?}"
    );
}

/// Dropping the proxy closes its connections and its port.
#[tokio::test]
async fn dropping_the_proxy_closes_its_port_and_connections() {
    let (target, _closed, _server) = echo_server().await;
    let proxy = Proxy::start("t", target).await.expect("proxy");
    let addr = proxy.addr();
    let mut s = connect(&proxy).await;
    assert!(round_trip(&mut s, b"a", QUICK).await.is_some());
    drop(proxy);
    assert!(closed_within(&mut s, QUICK).await);
    let deadline = Instant::now() + QUICK;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "port {addr} still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Without a target, connections are closed at once; once set, they work.
#[tokio::test]
async fn a_target_can_be_set_later() {
    let proxy = Proxy::start_without_target("t").await.expect("proxy");
    let mut s = connect(&proxy).await;
    assert!(closed_within(&mut s, QUICK).await);
    assert_eq!(proxy.handle().stats().unreachable, 1);
    let (target, _closed, _server) = echo_server().await;
    proxy.handle().set_target(target);
    let mut s = connect(&proxy).await;
    assert!(round_trip(&mut s, b"a", QUICK).await.is_some());
}

/// The `/proc/net/tcp` parser finds a connection by its two ends.
#[test]
fn finds_the_inode_of_a_connection_in_proc_net_tcp() {
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1";
    let client: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
    let server: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    if cfg!(target_endian = "little") {
        assert_eq!(find_inode(table, client, server), Some(222));
        assert_eq!(find_inode(table, server, client), Some(333));
    }
    assert_eq!(find_inode(table, server, server), None);
}

/// This process owns its own socket; PID 1 does not.
#[tokio::test]
async fn finds_the_owner_of_a_live_connection() {
    let (target, _closed, _server) = echo_server().await;
    let s = TcpStream::connect(target).await.expect("connect");
    let (local, peer) = (s.local_addr().expect("local"), s.peer_addr().expect("peer"));
    let inode = socket_inode(local, peer).expect("inode in /proc/net/tcp");
    assert!(process_owns_socket(std::process::id(), inode));
    assert!(!process_owns_socket(1, inode));
}

/// The proxy forwards while the thread of the test that started it is
/// blocked (a synchronous process stop, say): it runs on its own thread.
#[tokio::test]
async fn forwards_while_the_test_thread_blocks() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let target = listener.local_addr().expect("address");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("write");
    });
    let proxy = Proxy::start("t", target).await.expect("proxy");
    // Blocking calls on this runtime's only thread from here on.
    let mut s = std::net::TcpStream::connect(proxy.addr()).expect("connect");
    s.set_read_timeout(Some(QUICK)).expect("timeout");
    s.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)
        .expect("the echo came back through the proxy");
    assert_eq!(&buf, b"hello");
    echo.join().expect("echo thread");
}
