//! A small client for `COM_BINLOG_DUMP`: connect over TCP, log in
//! (`mysql_native_password`), tell MariaDB what we understand, and read the
//! event packets as raw bytes.
//!
//! mysql_async's binlog stream cannot archive byte-exactly: it hides the raw
//! bytes, never sets `@mariadb_slave_capability` (so MariaDB rewrites GTID
//! events into `BEGIN` queries), and drops the flag asking for Annotate_rows.
//! This client reuses mysql_common's handshake packets and scramble, and
//! frames packets itself.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, ErrPacket, HandshakePacket, HandshakeResponse,
};
use mysql_common::proto::MySerialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::mysql::{Server, SslMode};

/// How long connecting and logging in may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one command (a `SET`, registering) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest payload of one protocol packet; longer payloads continue in
/// the next packet.
const MAX_PAYLOAD: usize = 0xff_ffff;
/// `max_packet_size` announced at login (1 GiB, the server's maximum).
const MAX_PACKET: u32 = 1 << 30;

const COM_QUERY: u8 = 0x03;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_REGISTER_SLAVE: u8 = 0x15;
/// `BINLOG_SEND_ANNOTATE_ROWS_EVENT`: MariaDB sends Annotate_rows events
/// (they are in the file, so a byte-exact copy needs them).
const DUMP_SEND_ANNOTATE_ROWS: u16 = 2;
/// `MARIA_SLAVE_CAPABILITY_GTID` (= `MINE` in 10.x): send every event as
/// it is in the file, GTID events included.
const SLAVE_CAPABILITY: u32 = 4;

/// Server error codes.
const ER_ACCESS_DENIED: u16 = 1045;
const ER_DBACCESS_DENIED: u16 = 1044;
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;

/// One binlog dump session with one server.
pub struct DumpClient {
    server: String,
    stream: TcpStream,
    buf: BytesMut,
    seq: u8,
    caps: CapabilityFlags,
    /// How long to wait for the next packet before calling the connection
    /// dead (set from the heartbeat period).
    read_timeout: Duration,
    /// The file asked for, for errors.
    file: String,
}

impl std::fmt::Debug for DumpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpClient")
            .field("server", &self.server)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn dump_error(server: &str, reason: impl Into<String>, retryable: bool) -> Error {
    Error::BinlogDump {
        server: server.to_string(),
        reason: reason.into(),
        retryable,
    }
}

impl DumpClient {
    /// Connects and logs in. TLS is not done yet: an `ssl-mode` that
    /// requires it is refused; `preferred` talks plaintext.
    pub async fn connect(server: &Server) -> Result<DumpClient> {
        let name = server.address().to_string();
        match server.ssl_mode() {
            SslMode::Disabled | SslMode::Preferred => {}
            mode => {
                return Err(dump_error(
                    &name,
                    format!(
                        "ssl-mode={mode} requires TLS, and TLS for the binlog archiver is not done yet; \
                         archive this server with ssl-mode=disabled or preferred"
                    ),
                    false,
                ));
            }
        }
        let (host, port, user, pass) = server.login();
        let connect = async {
            let stream = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| dump_error(&name, format!("connect: {e}"), true))?;
            stream.set_nodelay(true).ok();
            let mut client = DumpClient {
                server: name.clone(),
                stream,
                buf: BytesMut::with_capacity(64 * 1024),
                seq: 0,
                caps: CapabilityFlags::empty(),
                read_timeout: COMMAND_TIMEOUT,
                file: String::new(),
            };
            client.login(&user, pass.as_deref().unwrap_or("")).await?;
            Ok(client)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                dump_error(
                    &name,
                    format!("connect and log in: no answer within {CONNECT_TIMEOUT:?}"),
                    true,
                )
            })?
    }

    async fn login(&mut self, user: &str, pass: &str) -> Result<()> {
        let greeting = self.read_packet().await?;
        if greeting.first() == Some(&0xff) {
            return Err(self.server_error(&greeting, "log in"));
        }
        let hello: HandshakePacket<'_> = ParseBuf(&greeting)
            .parse(())
            .map_err(|e| dump_error(&self.server, format!("unreadable handshake: {e}"), false))?;
        let version = hello.server_version_str().into_owned();
        if !version.contains("MariaDB") {
            return Err(Error::Unsupported {
                server: self.server.clone(),
                version,
                reason: "binlog archiving supports MariaDB only for now".into(),
            });
        }
        let wanted = CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_LONG_FLAG
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        let server_caps = hello.capabilities();
        if !server_caps.contains(
            CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SECURE_CONNECTION,
        ) {
            return Err(dump_error(
                &self.server,
                "the server lacks protocol 4.1 authentication",
                false,
            ));
        }
        self.caps = wanted & server_caps;
        let scramble = native_scramble(&hello.nonce(), pass);
        let response = HandshakeResponse::new(
            Some(scramble.as_slice()),
            hello.server_version_parsed().unwrap_or((10, 0, 0)),
            Some(user.as_bytes()),
            None::<&[u8]>,
            Some(AuthPlugin::MysqlNativePassword),
            self.caps,
            None,
            MAX_PACKET,
        );
        let mut out = Vec::new();
        response.serialize(&mut out);
        self.write_packet(&out).await?;

        let reply = self.read_packet().await?;
        match reply.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => Err(self.server_error(&reply, "log in")),
            Some(0xfe) => {
                let switch: AuthSwitchRequest<'_> = ParseBuf(&reply).parse(()).map_err(|e| {
                    dump_error(
                        &self.server,
                        format!("unreadable auth switch request: {e}"),
                        false,
                    )
                })?;
                let plugin = String::from_utf8_lossy(switch.auth_plugin().as_bytes()).into_owned();
                if plugin != "mysql_native_password" {
                    return Err(self.unsupported_plugin(&plugin, user));
                }
                let nonce = switch.plugin_data();
                let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
                let scramble = native_scramble(nonce, pass);
                self.write_packet(&scramble).await?;
                let reply = self.read_packet().await?;
                match reply.first() {
                    Some(0x00) => Ok(()),
                    Some(0xff) => Err(self.server_error(&reply, "log in")),
                    _ => Err(self.unsupported_plugin(&plugin, user)),
                }
            }
            _ => {
                Err(self
                    .unsupported_plugin(&hello.auth_plugin_name_str().unwrap_or_default(), user))
            }
        }
    }

    fn unsupported_plugin(&self, plugin: &str, user: &str) -> Error {
        dump_error(
            &self.server,
            format!(
                "user {user} logs in with auth plugin {plugin:?}; the binlog archiver supports only mysql_native_password for now"
            ),
            false,
        )
    }

    /// Runs one statement that returns no rows (a `SET`).
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        let mut out = vec![COM_QUERY];
        out.extend_from_slice(sql.as_bytes());
        self.command(&out, sql).await
    }

    async fn command(&mut self, payload: &[u8], what: &str) -> Result<()> {
        self.seq = 0;
        self.write_packet(payload).await?;
        let reply = self.read_packet().await?;
        match reply.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => Err(self.server_error(&reply, what)),
            _ => Err(dump_error(
                &self.server,
                format!("{what}: unexpected reply (a result set?)"),
                false,
            )),
        }
    }

    /// Session settings for a byte-exact dump: every MariaDB event as it is,
    /// checksums as the server writes them, and a heartbeat when idle (a
    /// silent connection is then a dead one).
    pub async fn prepare(&mut self, heartbeat: Duration) -> Result<()> {
        self.execute(&format!(
            "SET @mariadb_slave_capability = {SLAVE_CAPABILITY}"
        ))
        .await?;
        self.execute("SET @master_binlog_checksum = @@global.binlog_checksum")
            .await?;
        let nanos = u64::try_from(heartbeat.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1_000_000);
        self.execute(&format!("SET @master_heartbeat_period = {nanos}"))
            .await?;
        self.read_timeout = heartbeat * 3 + Duration::from_secs(1);
        Ok(())
    }

    /// `COM_REGISTER_SLAVE`: the archiver shows in `SHOW SLAVE HOSTS` under
    /// its replica server id.
    pub async fn register(&mut self, replica_server_id: u32) -> Result<()> {
        let mut out = vec![COM_REGISTER_SLAVE];
        out.extend_from_slice(&replica_server_id.to_le_bytes());
        let host = b"lockstep-archiver";
        out.push(host.len() as u8);
        out.extend_from_slice(host);
        out.push(0); // user
        out.push(0); // password
        out.extend_from_slice(&0u16.to_le_bytes()); // port
        out.extend_from_slice(&0u32.to_le_bytes()); // rank
        out.extend_from_slice(&0u32.to_le_bytes()); // master id
        self.command(&out, "register as a replica")
            .await
            .map_err(|e| match e {
                // MariaDB answers a missing REPLICATION SLAVE privilege here
                // with "access denied", as for a wrong password.
                Error::BinlogDump {
                    server,
                    reason,
                    retryable,
                } if reason.contains(&format!("error {ER_ACCESS_DENIED}:")) => Error::BinlogDump {
                    server,
                    reason: format!("{reason} (the account needs the REPLICATION SLAVE privilege)"),
                    retryable,
                },
                e => e,
            })
    }

    /// `COM_BINLOG_DUMP` from `file` at `offset` (an empty name: the
    /// server's oldest binlog). Events follow through [`Self::next_event`].
    pub async fn start_dump(
        &mut self,
        replica_server_id: u32,
        file: &str,
        offset: u32,
    ) -> Result<()> {
        self.file = file.to_string();
        let mut out = vec![COM_BINLOG_DUMP];
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&DUMP_SEND_ANNOTATE_ROWS.to_le_bytes());
        out.extend_from_slice(&replica_server_id.to_le_bytes());
        out.extend_from_slice(file.as_bytes());
        self.seq = 0;
        self.write_packet(&out).await
    }

    /// The next event, without the OK byte; `None` when the server ends the
    /// dump (an EOF packet). Errors name the server; a purged file becomes
    /// [`Error::BinlogPurged`].
    pub async fn next_event(&mut self) -> Result<Option<BytesMut>> {
        let mut packet = self.read_packet().await?;
        match packet.first() {
            Some(0x00) => {
                packet.advance(1);
                Ok(Some(packet))
            }
            Some(0xfe) if packet.len() < 9 => Ok(None),
            Some(0xff) => Err(self.server_error(&packet, "read the binlog")),
            Some(b) => Err(dump_error(
                &self.server,
                format!("unexpected packet starting with {b:#04x} in the binlog stream"),
                false,
            )),
            None => Err(dump_error(
                &self.server,
                "an empty packet in the binlog stream",
                false,
            )),
        }
    }

    /// Whether a whole packet is already buffered, so [`Self::next_event`]
    /// returns without waiting (the archiver then defers its fsync).
    pub fn event_buffered(&self) -> bool {
        self.buf.len() >= 4 && {
            let len = usize::from(self.buf[0])
                | usize::from(self.buf[1]) << 8
                | usize::from(self.buf[2]) << 16;
            self.buf.len() >= 4 + len
        }
    }

    /// Turns an ERR packet into an error naming the server.
    fn server_error(&self, packet: &[u8], what: &str) -> Error {
        let parsed: std::io::Result<ErrPacket<'_>> =
            ParseBuf(packet).parse(self.caps | CapabilityFlags::CLIENT_PROTOCOL_41);
        let Ok(ErrPacket::Error(err)) = parsed else {
            return dump_error(
                &self.server,
                format!("{what}: an unreadable error packet"),
                false,
            );
        };
        let code = err.error_code();
        let message = err.message_str().into_owned();
        if code == ER_MASTER_FATAL_ERROR_READING_BINLOG
            && message.contains("Could not find first log file name")
        {
            return Error::BinlogPurged {
                server: self.server.clone(),
                file: self.file.clone(),
            };
        }
        let permanent = matches!(
            code,
            ER_ACCESS_DENIED
                | ER_DBACCESS_DENIED
                | ER_SPECIFIC_ACCESS_DENIED
                | ER_MASTER_FATAL_ERROR_READING_BINLOG
        );
        dump_error(
            &self.server,
            format!("{what}: error {code}: {message}"),
            !permanent,
        )
    }

    /// Reads one payload, joining packets of [`MAX_PAYLOAD`] bytes with
    /// their continuations.
    async fn read_packet(&mut self) -> Result<BytesMut> {
        let mut payload: Option<BytesMut> = None;
        loop {
            while self.buf.len() < 4 {
                self.fill().await?;
            }
            let len = usize::from(self.buf[0])
                | usize::from(self.buf[1]) << 8
                | usize::from(self.buf[2]) << 16;
            self.seq = self.buf[3].wrapping_add(1);
            if self.buf.capacity() < 4 + len {
                self.buf.reserve(4 + len - self.buf.len());
            }
            while self.buf.len() < 4 + len {
                self.fill().await?;
            }
            self.buf.advance(4);
            let part = self.buf.split_to(len);
            match payload.as_mut() {
                None => payload = Some(part),
                Some(p) => p.extend_from_slice(&part),
            }
            if len < MAX_PAYLOAD {
                return Ok(payload.expect("set above"));
            }
        }
    }

    async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let read = tokio::time::timeout(self.read_timeout, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| {
                dump_error(
                    &self.server,
                    format!(
                        "nothing received for {:?} (not even a heartbeat); the connection is dead",
                        self.read_timeout
                    ),
                    true,
                )
            })?
            .map_err(|e| dump_error(&self.server, format!("read: {e}"), true))?;
        if read == 0 {
            return Err(dump_error(
                &self.server,
                "the server closed the connection",
                true,
            ));
        }
        Ok(())
    }

    async fn write_packet(&mut self, payload: &[u8]) -> Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 4);
        let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
        if payload.is_empty() {
            out.extend_from_slice(&[0, 0, 0, self.seq]);
            self.seq = self.seq.wrapping_add(1);
        }
        while let Some(chunk) = chunks.next() {
            let len = chunk.len() as u32;
            out.extend_from_slice(&len.to_le_bytes()[..3]);
            out.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            out.extend_from_slice(chunk);
            if chunks.peek().is_none() && chunk.len() == MAX_PAYLOAD {
                out.extend_from_slice(&[0, 0, 0, self.seq]);
                self.seq = self.seq.wrapping_add(1);
            }
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| dump_error(&self.server, format!("write: {e}"), true))
    }
}

/// `mysql_native_password`'s answer to a nonce (empty for no password).
fn native_scramble(nonce: &[u8], pass: &str) -> Vec<u8> {
    if pass.is_empty() {
        return Vec::new();
    }
    mysql_common::scramble::scramble_native(nonce, pass.as_bytes())
        .map(|s| s.to_vec())
        .unwrap_or_default()
}
