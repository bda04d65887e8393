//! A minimal MySQL / MariaDB client (client side of the classic protocol) for probing.
//!
//! It implements just what the exporter needs to log in and run a few text-protocol
//! queries (`SELECT 1`, `SHOW BINARY LOGS`, `SELECT @@...`), with every buffer bounded:
//!
//! * packet framing: 3-byte little-endian length + sequence id, payloads of 16 MiB - 1
//!   split over several packets, reassembled up to [`MAX_PACKET_BYTES`];
//! * Handshake v10 from the server, `HandshakeResponse41` from the client with
//!   `CLIENT_PROTOCOL_41`, `CLIENT_SECURE_CONNECTION`, `CLIENT_PLUGIN_AUTH` and optionally
//!   `CLIENT_CONNECT_WITH_DB`; no TLS, no `CLIENT_DEPRECATE_EOF`, no multi-statements;
//! * authentication plugins `mysql_native_password` (SHA-1 scramble) and the fast path of
//!   `caching_sha2_password` (SHA-256 scramble), including `AuthSwitchRequest`. The full
//!   `caching_sha2_password` authentication needs TLS or an RSA key exchange, which this
//!   client does not do: it fails with [`MySqlError::FullAuthRequired`] (reason `protocol`).
//!   The server only asks for it while the account is not in its in-memory cache, i.e.
//!   before any client has logged in with it since the server started;
//! * `COM_QUERY` with text result sets (column definitions, rows of length-encoded strings
//!   or NULL, EOF terminators), capped at [`DEFAULT_MAX_ROWS`] rows and
//!   [`DEFAULT_MAX_RESULT_BYTES`] bytes; `COM_QUIT`.
//!
//! Completing the handshake matters: MySQL counts connections that are dropped before
//! authentication towards `max_connect_errors` and eventually blocks the client host.
//!
//! Reference: MySQL source documentation, "Client/Server Protocol"
//! (<https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html>), and MariaDB's
//! "Clients & Connectors / Client/Server Protocol" pages.
//!
//! The password is taken as a [`Secret`], used only to compute the scramble, and never
//! stored in a connection or written into an error.

use std::fmt;
use std::io;
use std::time::Duration;

use sha1::{Digest, Sha1};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    connect_tcp, io_reason, run_probe, sanitize, ConnectError, Endpoint, FailureReason,
    ProbeOutcome, Secret,
};

/// Largest reassembled packet payload accepted from the server (16 MiB).
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on the rows of one result set.
pub const DEFAULT_MAX_ROWS: usize = 100_000;
/// Default cap on the bytes (packet payloads plus per-value overhead) of one result set.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// MySQL allows at most 4096 columns per table; a result set claiming more is hostile.
const MAX_COLUMNS: u64 = 4096;
/// Handshake response + at most one switch + "fast auth ok" + OK fit well within this.
const MAX_AUTH_ROUNDS: usize = 4;
/// A packet carrying exactly this many payload bytes is continued by the next packet.
const MAX_CHUNK: usize = 0xFF_FFFF;
/// Longest server error message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
/// utf8mb4_general_ci: known to MySQL >= 5.5.3 and every MariaDB.
const CHARSET_UTF8MB4_GENERAL_CI: u8 = 45;

const NATIVE_PASSWORD: &str = "mysql_native_password";
const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

/// Server error codes that mean "the credentials or privileges were rejected".
const AUTH_ERROR_CODES: [u16; 12] = [
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1130, // ER_HOST_NOT_PRIVILEGED
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1143, // ER_COLUMNACCESS_DENIED_ERROR
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
    1370, // ER_PROCACCESS_DENIED_ERROR
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1820, // ER_MUST_CHANGE_PASSWORD
    1862, // ER_MUST_CHANGE_PASSWORD_LOGIN
    3118, // ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
    4151, // ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
];

/// Errors of the MySQL client. `Display` never contains the password (it is not kept).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MySqlError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connect deadline or the per-query timeout passed.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
    /// The connection failed in the middle of an exchange (EOF, reset, ...).
    #[error("connection lost: {0}")]
    Io(io::ErrorKind),
    /// The server answered with an ERR packet.
    #[error("server error {code} ({sql_state}): {message}")]
    Server {
        /// MySQL error number (1045 access denied, 1040 too many connections, ...).
        code: u16,
        /// SQLSTATE (`HY000` when the server sent none).
        sql_state: String,
        /// The server's message, sanitised and shortened.
        message: String,
    },
    /// The peer sent something that is not valid MySQL protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server asked for something this client does not implement.
    #[error("not supported by the probe: {0}")]
    Unsupported(String),
    /// `caching_sha2_password` asked for full authentication (0x01 0x04).
    #[error("caching_sha2_password full authentication needs TLS or RSA key exchange, which the probe does not do")]
    FullAuthRequired,
    /// A result set or packet exceeded a configured bound.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// An earlier error (timeout, limit, protocol violation) left the connection in an
    /// unknown state; open a new one.
    #[error("connection unusable after an earlier error")]
    Broken,
}

impl MySqlError {
    /// The probe [`FailureReason`] for this error: access-denied style server errors are
    /// `Auth`, other server errors (1040 too many connections, 1129 host blocked, ...) and
    /// anything malformed or unsupported are `Protocol`.
    pub fn reason(&self) -> FailureReason {
        match self {
            MySqlError::Connect(e) => e.reason(),
            MySqlError::Timeout { .. } => FailureReason::Timeout,
            MySqlError::Io(kind) => io_reason(*kind),
            MySqlError::Server { code, .. } if AUTH_ERROR_CODES.contains(code) => {
                FailureReason::Auth
            }
            _ => FailureReason::Protocol,
        }
    }

    /// The server error code, for [`MySqlError::Server`].
    pub fn server_code(&self) -> Option<u16> {
        match self {
            MySqlError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<io::Error> for MySqlError {
    fn from(e: io::Error) -> Self {
        MySqlError::Io(e.kind())
    }
}

/// A text-protocol result set: column names and rows of values (`None` for SQL NULL).
/// Values are decoded as UTF-8, invalid bytes replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names (aliases), in order.
    pub columns: Vec<String>,
    /// Rows; every row has `columns.len()` values.
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// Index of the first column called `name` (ASCII case-insensitive, as in MySQL).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }

    /// The value in row `row`, column `column`; `None` if absent or NULL.
    pub fn value(&self, row: usize, column: &str) -> Option<&str> {
        let idx = self.column_index(column)?;
        self.rows.get(row)?.get(idx)?.as_deref()
    }
}

/// An authenticated connection to a MySQL or MariaDB server.
pub struct MySqlConn {
    io: PacketIo<TcpStream>,
    endpoint: Endpoint,
    server_version: String,
    connection_id: u32,
    timeout: Duration,
    max_rows: usize,
    max_result_bytes: usize,
    broken: bool,
}

impl fmt::Debug for MySqlConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlConn")
            .field("endpoint", &self.endpoint)
            .field("server_version", &self.server_version)
            .field("connection_id", &self.connection_id)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish()
    }
}

impl MySqlConn {
    /// Connects and logs in without selecting a database. `deadline` bounds the whole
    /// connect + handshake and becomes the default timeout of each later [`query`].
    ///
    /// [`query`]: MySqlConn::query
    pub async fn connect(
        endpoint: &Endpoint,
        user: &str,
        password: &Secret,
        deadline: Duration,
    ) -> Result<MySqlConn, MySqlError> {
        Self::connect_with_db(endpoint, user, password, None, deadline).await
    }

    /// Like [`MySqlConn::connect`], selecting `database` during the handshake
    /// (`CLIENT_CONNECT_WITH_DB`).
    pub async fn connect_with_db(
        endpoint: &Endpoint,
        user: &str,
        password: &Secret,
        database: Option<&str>,
        deadline: Duration,
    ) -> Result<MySqlConn, MySqlError> {
        let work = async {
            let stream = connect_tcp(endpoint, deadline).await?;
            let mut io = PacketIo::new(stream, MAX_PACKET_BYTES);
            let greeting = login(&mut io, user, password, database).await?;
            Ok(MySqlConn {
                io,
                endpoint: endpoint.clone(),
                server_version: display_version(&greeting.server_version),
                connection_id: greeting.connection_id,
                timeout: deadline,
                max_rows: DEFAULT_MAX_ROWS,
                max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
                broken: false,
            })
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(MySqlError::Timeout {
                after_ms: deadline.as_millis(),
            }),
        }
    }

    /// The server version string (MariaDB's `5.5.5-` compatibility prefix removed).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The connection (thread) id the server assigned.
    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    /// Sets the timeout applied to each [`MySqlConn::query`] and [`MySqlConn::close`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sets the row cap for result sets (default [`DEFAULT_MAX_ROWS`]).
    pub fn set_max_rows(&mut self, max_rows: usize) {
        self.max_rows = max_rows;
    }

    /// Sets the byte cap for result sets (default [`DEFAULT_MAX_RESULT_BYTES`]).
    pub fn set_max_result_bytes(&mut self, max_bytes: usize) {
        self.max_result_bytes = max_bytes;
    }

    /// Runs `sql` with `COM_QUERY` and returns its text result set (empty for statements
    /// without one). A server error ([`MySqlError::Server`]) leaves the connection usable;
    /// a timeout, a limit or a protocol violation makes every later call return
    /// [`MySqlError::Broken`]. Do not put secrets into `sql`: server error messages may
    /// quote it.
    pub async fn query(&mut self, sql: &str) -> Result<ResultSet, MySqlError> {
        if self.broken {
            return Err(MySqlError::Broken);
        }
        if sql.len() >= MAX_PACKET_BYTES {
            return Err(MySqlError::Limit(format!(
                "query longer than {MAX_PACKET_BYTES} bytes"
            )));
        }
        // Pessimistic: stays set if this future is cancelled or fails half-way through.
        self.broken = true;
        let timeout = self.timeout;
        let result = match tokio::time::timeout(timeout, self.query_inner(sql)).await {
            Ok(result) => result,
            Err(_) => Err(MySqlError::Timeout {
                after_ms: timeout.as_millis(),
            }),
        };
        if matches!(result, Ok(_) | Err(MySqlError::Server { .. })) {
            self.broken = false;
        }
        result
    }

    async fn query_inner(&mut self, sql: &str) -> Result<ResultSet, MySqlError> {
        self.io.seq = 0;
        let mut command = Vec::with_capacity(sql.len() + 1);
        command.push(COM_QUERY);
        command.extend_from_slice(sql.as_bytes());
        self.io.write_packet(&command).await?;

        let first = self.io.read_packet().await?;
        match first.first() {
            Some(0x00) => {
                let status = parse_ok_status(&first)?;
                check_no_more_results(status)?;
                return Ok(ResultSet::default());
            }
            Some(0xFF) => return Err(parse_err_packet(&first)),
            Some(0xFB) => {
                return Err(MySqlError::Unsupported(
                    "LOCAL INFILE request from the server".to_string(),
                ))
            }
            None => return Err(MySqlError::Protocol("empty query response".to_string())),
            Some(_) => {}
        }
        let mut c = Cursor::new(&first, "column count");
        let column_count = c
            .lenenc_int()?
            .ok_or_else(|| MySqlError::Protocol("NULL column count".to_string()))?;
        if column_count == 0 || column_count > MAX_COLUMNS || c.remaining() != 0 {
            return Err(MySqlError::Protocol(format!(
                "implausible column count {column_count}"
            )));
        }
        // Bounded by MAX_COLUMNS above, so the conversion cannot truncate.
        let column_count = column_count as usize;

        let mut budget = self.max_result_bytes;
        let mut columns = Vec::with_capacity(column_count);
        for _ in 0..column_count {
            let packet = self.io.read_packet().await?;
            if packet.first() == Some(&0xFF) {
                return Err(parse_err_packet(&packet));
            }
            charge(&mut budget, packet.len(), self.max_result_bytes)?;
            columns.push(parse_column_name(&packet)?);
        }
        let eof = self.io.read_packet().await?;
        if !is_eof_packet(&eof) {
            return Err(MySqlError::Protocol(
                "expected EOF after column definitions".to_string(),
            ));
        }

        let per_row_overhead = (column_count + 1) * std::mem::size_of::<Option<String>>();
        let mut rows = Vec::new();
        loop {
            let packet = self.io.read_packet().await?;
            if is_eof_packet(&packet) {
                check_no_more_results(parse_eof_status(&packet)?)?;
                break;
            }
            if packet.first() == Some(&0xFF) {
                return Err(parse_err_packet(&packet));
            }
            if rows.len() >= self.max_rows {
                return Err(MySqlError::Limit(format!(
                    "result set has more than {} rows",
                    self.max_rows
                )));
            }
            charge(
                &mut budget,
                packet.len().saturating_add(per_row_overhead),
                self.max_result_bytes,
            )?;
            rows.push(parse_text_row(&packet, column_count)?);
        }
        Ok(ResultSet { columns, rows })
    }

    /// Sends `COM_QUIT` and closes the connection (within the connection's timeout).
    /// A broken connection is simply dropped.
    pub async fn close(mut self) -> Result<(), MySqlError> {
        if self.broken {
            return Ok(());
        }
        let timeout = self.timeout;
        let quit = async {
            self.io.seq = 0;
            self.io.write_packet(&[COM_QUIT]).await?;
            self.io.stream.shutdown().await?;
            Ok(())
        };
        match tokio::time::timeout(timeout, quit).await {
            Ok(result) => result,
            Err(_) => Err(MySqlError::Timeout {
                after_ms: timeout.as_millis(),
            }),
        }
    }
}

/// Probes a MySQL/MariaDB server: handshake, log in as `user`, `SELECT 1` (the answer must
/// be one row holding `1`), `COM_QUIT`, all within `deadline`.
pub async fn probe(
    endpoint: &Endpoint,
    user: &str,
    password: &Secret,
    deadline: Duration,
) -> ProbeOutcome {
    run_probe(deadline, async {
        let split = |e: MySqlError| (e.reason(), e.to_string());
        let mut conn = MySqlConn::connect(endpoint, user, password, deadline)
            .await
            .map_err(split)?;
        let rs = conn.query("SELECT 1").await.map_err(split)?;
        let answer = rs
            .rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_deref());
        if rs.columns.len() != 1 || rs.rows.len() != 1 || answer != Some("1") {
            return Err((
                FailureReason::Protocol,
                "SELECT 1 returned an unexpected result".to_string(),
            ));
        }
        let detail = format!("{}: SELECT 1 ok", conn.server_version());
        // The probe already succeeded; a failing COM_QUIT only means the server hung up.
        let _ = conn.close().await;
        Ok(detail)
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Packet framing
// ---------------------------------------------------------------------------------------

/// Reads and writes MySQL packets, tracking the sequence id.
struct PacketIo<S> {
    stream: S,
    seq: u8,
    max_packet: usize,
}

impl<S> PacketIo<S> {
    fn new(stream: S, max_packet: usize) -> Self {
        PacketIo {
            stream,
            seq: 0,
            max_packet,
        }
    }
}

impl<S: AsyncRead + Unpin> PacketIo<S> {
    /// Reads one logical packet (reassembling 0xFFFFFF-byte continuations).
    async fn read_packet(&mut self) -> Result<Vec<u8>, MySqlError> {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
            let seq = header[3];
            if seq != self.seq {
                return Err(MySqlError::Protocol(format!(
                    "packet out of order (sequence id {seq}, expected {})",
                    self.seq
                )));
            }
            self.seq = self.seq.wrapping_add(1);
            if payload.len().saturating_add(len) > self.max_packet {
                return Err(MySqlError::Limit(format!(
                    "packet larger than {} bytes",
                    self.max_packet
                )));
            }
            // Grows with the data actually received, not with the announced length.
            let got = (&mut self.stream)
                .take(len as u64)
                .read_to_end(&mut payload)
                .await?;
            if got != len {
                return Err(MySqlError::Io(io::ErrorKind::UnexpectedEof));
            }
            if len < MAX_CHUNK {
                return Ok(payload);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> PacketIo<S> {
    /// Writes one logical packet, split into 0xFFFFFF-byte chunks when needed.
    async fn write_packet(&mut self, payload: &[u8]) -> Result<(), MySqlError> {
        let mut frame = Vec::with_capacity(payload.len() + 4 * (payload.len() / MAX_CHUNK + 1));
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_CHUNK);
            let (chunk, tail) = rest.split_at(n);
            // n <= 0xFFFFFF, so the length fits in the 3 low bytes.
            let len = (n as u32).to_le_bytes();
            frame.extend_from_slice(&[len[0], len[1], len[2], self.seq]);
            self.seq = self.seq.wrapping_add(1);
            frame.extend_from_slice(chunk);
            rest = tail;
            if n < MAX_CHUNK {
                break;
            }
        }
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Payload decoding
// ---------------------------------------------------------------------------------------

/// A bounds-checked reader over one packet payload.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, pos: 0, what }
    }

    fn truncated(&self) -> MySqlError {
        MySqlError::Protocol(format!("truncated or malformed {} packet", self.what))
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MySqlError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, MySqlError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, MySqlError> {
        let bytes = self.take(n)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn u16(&mut self) -> Result<u16, MySqlError> {
        // uint(2) < 2^16.
        Ok(self.uint(2)? as u16)
    }

    fn u32(&mut self) -> Result<u32, MySqlError> {
        // uint(4) < 2^32.
        Ok(self.uint(4)? as u32)
    }

    /// Length-encoded integer; `None` for 0xFB (NULL in rows).
    fn lenenc_int(&mut self) -> Result<Option<u64>, MySqlError> {
        match self.u8()? {
            0xFB => Ok(None),
            0xFC => Ok(Some(self.uint(2)?)),
            0xFD => Ok(Some(self.uint(3)?)),
            0xFE => Ok(Some(self.uint(8)?)),
            0xFF => Err(self.truncated()),
            b => Ok(Some(u64::from(b))),
        }
    }

    /// Length-encoded string; `None` for NULL (0xFB).
    fn lenenc_bytes(&mut self) -> Result<Option<&'a [u8]>, MySqlError> {
        match self.lenenc_int()? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).map_err(|_| self.truncated())?;
                Ok(Some(self.take(n)?))
            }
        }
    }

    /// NUL-terminated string (the NUL is consumed, not returned).
    fn null_terminated(&mut self) -> Result<&'a [u8], MySqlError> {
        let rest = self.buf.get(self.pos..).ok_or_else(|| self.truncated())?;
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated())?;
        let s = self.take(n)?;
        self.pos += 1; // the NUL found above
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }
}

/// What the client needs from the server's Handshake v10.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Greeting {
    server_version: String,
    connection_id: u32,
    capabilities: u32,
    scramble: Vec<u8>,
    auth_plugin: String,
}

fn parse_greeting(payload: &[u8]) -> Result<Greeting, MySqlError> {
    let mut c = Cursor::new(payload, "handshake");
    let protocol = c.u8()?;
    if protocol == 0xFF {
        // Refused before the handshake: too many connections, host blocked, ...
        return Err(parse_err_packet(payload));
    }
    if protocol != 10 {
        return Err(MySqlError::Protocol(format!(
            "handshake protocol version {protocol}, expected 10"
        )));
    }
    let server_version = String::from_utf8_lossy(c.null_terminated()?).into_owned();
    let connection_id = c.u32()?;
    let part1 = c.take(8)?;
    let _filler = c.u8()?;
    let mut capabilities = u32::from(c.u16()?);
    let mut part2: &[u8] = &[];
    let mut auth_plugin = String::new();
    if c.remaining() > 0 {
        let _charset = c.u8()?;
        let _status = c.u16()?;
        capabilities |= u32::from(c.u16()?) << 16;
        let auth_data_len = c.u8()?;
        let _reserved = c.take(10)?;
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = usize::from(auth_data_len).saturating_sub(8).max(13);
            part2 = c.take(n)?;
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            // MySQL 5.5.7-5.5.9 forgot the terminating NUL: accept the rest then.
            let name = match c.null_terminated() {
                Ok(name) => name,
                Err(_) => c.rest(),
            };
            auth_plugin = String::from_utf8_lossy(name).into_owned();
        }
    }
    if capabilities & CLIENT_PROTOCOL_41 == 0 || capabilities & CLIENT_SECURE_CONNECTION == 0 {
        return Err(MySqlError::Unsupported(
            "server predates the MySQL 4.1 protocol".to_string(),
        ));
    }
    let mut scramble = Vec::with_capacity(part1.len() + part2.len());
    scramble.extend_from_slice(part1);
    scramble.extend_from_slice(part2);
    if scramble.last() == Some(&0) {
        scramble.pop();
    }
    if scramble.len() < 20 {
        return Err(MySqlError::Protocol(
            "authentication scramble shorter than 20 bytes".to_string(),
        ));
    }
    Ok(Greeting {
        server_version,
        connection_id,
        capabilities,
        scramble,
        auth_plugin,
    })
}

/// Decodes an ERR packet (0xFF, code, optional `#` + SQLSTATE, message). Never fails:
/// a malformed ERR packet becomes a protocol error.
fn parse_err_packet(payload: &[u8]) -> MySqlError {
    let mut c = Cursor::new(payload, "error");
    if c.u8().ok() != Some(0xFF) {
        return c.truncated();
    }
    let code = match c.u16() {
        Ok(code) => code,
        Err(e) => return e,
    };
    let mut sql_state = "HY000".to_string();
    if c.peek() == Some(b'#') {
        let _ = c.u8();
        match c.take(5) {
            Ok(state) => sql_state = sanitize(&String::from_utf8_lossy(state), 5),
            Err(e) => return e,
        }
    }
    let message = sanitize(&String::from_utf8_lossy(c.rest()), MAX_MESSAGE_CHARS);
    MySqlError::Server {
        code,
        sql_state,
        message,
    }
}

/// Status flags of an OK packet (0x00, affected rows, last insert id, status, warnings).
fn parse_ok_status(payload: &[u8]) -> Result<u16, MySqlError> {
    let mut c = Cursor::new(payload, "OK");
    let _header = c.u8()?;
    let _affected_rows = c.lenenc_int()?;
    let _last_insert_id = c.lenenc_int()?;
    c.u16()
}

fn is_eof_packet(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < 9
}

/// Status flags of an EOF packet (0xFE, warnings, status).
fn parse_eof_status(payload: &[u8]) -> Result<u16, MySqlError> {
    let mut c = Cursor::new(payload, "EOF");
    let _header = c.u8()?;
    let _warnings = c.u16()?;
    c.u16()
}

fn check_no_more_results(status: u16) -> Result<(), MySqlError> {
    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
        return Err(MySqlError::Unsupported("multiple result sets".to_string()));
    }
    Ok(())
}

/// The `name` (alias) of a ColumnDefinition41 packet.
fn parse_column_name(payload: &[u8]) -> Result<String, MySqlError> {
    let mut c = Cursor::new(payload, "column definition");
    for _ in 0..4 {
        // catalog, schema, table, org_table
        c.lenenc_bytes()?;
    }
    let name = c.lenenc_bytes()?.unwrap_or_default();
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// One text-protocol row: `columns` values, each NULL (0xFB) or a length-encoded string.
fn parse_text_row(payload: &[u8], columns: usize) -> Result<Vec<Option<String>>, MySqlError> {
    let mut c = Cursor::new(payload, "row");
    let mut row = Vec::with_capacity(columns);
    for _ in 0..columns {
        let value = c
            .lenenc_bytes()?
            .map(|v| String::from_utf8_lossy(v).into_owned());
        row.push(value);
    }
    if c.remaining() != 0 {
        return Err(MySqlError::Protocol("trailing bytes in row".to_string()));
    }
    Ok(row)
}

fn charge(budget: &mut usize, bytes: usize, limit: usize) -> Result<(), MySqlError> {
    *budget = budget
        .checked_sub(bytes)
        .ok_or_else(|| MySqlError::Limit(format!("result set larger than {limit} bytes")))?;
    Ok(())
}

/// MariaDB prefixes its version with `5.5.5-` for old replication clients; drop that.
fn display_version(raw: &str) -> String {
    let v = match raw.strip_prefix("5.5.5-") {
        Some(rest) if rest.contains("MariaDB") => rest,
        _ => raw,
    };
    sanitize(v, 64)
}

// ---------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------

/// `mysql_native_password`: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))).
fn scramble_native(password: &[u8], nonce: &[u8]) -> [u8; 20] {
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(stage2);
    let mask = h.finalize();
    let mut out = [0u8; 20];
    for (o, (a, b)) in out.iter_mut().zip(stage1.iter().zip(mask.iter())) {
        *o = a ^ b;
    }
    out
}

/// `caching_sha2_password` fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce).
fn scramble_sha256(password: &[u8], nonce: &[u8]) -> [u8; 32] {
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let mut h = Sha256::new();
    h.update(stage2);
    h.update(nonce);
    let mask = h.finalize();
    let mut out = [0u8; 32];
    for (o, (a, b)) in out.iter_mut().zip(stage1.iter().zip(mask.iter())) {
        *o = a ^ b;
    }
    out
}

/// The auth response for `plugin`; empty for an empty password.
fn auth_response(plugin: &str, password: &Secret, nonce: &[u8]) -> Result<Vec<u8>, MySqlError> {
    if plugin != NATIVE_PASSWORD && plugin != CACHING_SHA2_PASSWORD {
        return Err(MySqlError::Unsupported(format!(
            "authentication plugin '{}'",
            sanitize(plugin, 64)
        )));
    }
    if password.is_empty() {
        return Ok(Vec::new());
    }
    let nonce = nonce.get(..20).ok_or_else(|| {
        MySqlError::Protocol("authentication scramble shorter than 20 bytes".to_string())
    })?;
    let pw = password.expose().as_bytes();
    Ok(if plugin == NATIVE_PASSWORD {
        scramble_native(pw, nonce).to_vec()
    } else {
        scramble_sha256(pw, nonce).to_vec()
    })
}

/// Builds HandshakeResponse41.
fn handshake_response(
    greeting: &Greeting,
    user: &str,
    database: Option<&str>,
    plugin: &str,
    auth: &[u8],
) -> Result<Vec<u8>, MySqlError> {
    if user.contains('\0') || database.is_some_and(|d| d.contains('\0')) {
        return Err(MySqlError::Unsupported(
            "user or database name containing NUL".to_string(),
        ));
    }
    let server = greeting.capabilities;
    let mut flags = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | (server & (CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_TRANSACTIONS))
        | (server & CLIENT_PLUGIN_AUTH);
    if database.is_some() {
        if server & CLIENT_CONNECT_WITH_DB == 0 {
            return Err(MySqlError::Unsupported(
                "server cannot select a database at connect".to_string(),
            ));
        }
        flags |= CLIENT_CONNECT_WITH_DB;
    }
    let auth_len = u8::try_from(auth.len())
        .map_err(|_| MySqlError::Protocol("auth response too long".to_string()))?;
    let mut out = Vec::with_capacity(64 + user.len() + auth.len());
    out.extend_from_slice(&flags.to_le_bytes());
    // MAX_PACKET_BYTES (16 MiB) fits in u32.
    out.extend_from_slice(&(MAX_PACKET_BYTES as u32).to_le_bytes());
    out.push(CHARSET_UTF8MB4_GENERAL_CI);
    out.extend_from_slice(&[0u8; 23]);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.push(auth_len);
    out.extend_from_slice(auth);
    if let Some(db) = database {
        out.extend_from_slice(db.as_bytes());
        out.push(0);
    }
    if flags & CLIENT_PLUGIN_AUTH != 0 {
        out.extend_from_slice(plugin.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// Runs the connection phase: greeting, response, auth switch / more data, OK or ERR.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut PacketIo<S>,
    user: &str,
    password: &Secret,
    database: Option<&str>,
) -> Result<Greeting, MySqlError> {
    io.seq = 0;
    let greeting = parse_greeting(&io.read_packet().await?)?;
    // Answer with the server's default plugin when we know it; otherwise use
    // mysql_native_password and let the server switch us.
    let mut plugin = if greeting.auth_plugin == CACHING_SHA2_PASSWORD {
        CACHING_SHA2_PASSWORD.to_string()
    } else {
        NATIVE_PASSWORD.to_string()
    };
    let auth = auth_response(&plugin, password, &greeting.scramble)?;
    let response = handshake_response(&greeting, user, database, &plugin, &auth)?;
    io.write_packet(&response).await?;

    for _ in 0..MAX_AUTH_ROUNDS {
        let packet = io.read_packet().await?;
        match packet.first() {
            Some(0x00) => return Ok(greeting),
            Some(0xFF) => return Err(parse_err_packet(&packet)),
            Some(0xFE) => {
                // AuthSwitchRequest: plugin name, NUL, plugin data (scramble + NUL).
                if packet.len() == 1 {
                    return Err(MySqlError::Unsupported(
                        "pre-4.1 mysql_old_password authentication".to_string(),
                    ));
                }
                let mut c = Cursor::new(&packet, "auth switch request");
                let _header = c.u8()?;
                plugin = String::from_utf8_lossy(c.null_terminated()?).into_owned();
                let mut nonce = c.rest();
                if let Some((&0, head)) = nonce.split_last() {
                    nonce = head;
                }
                let auth = auth_response(&plugin, password, nonce)?;
                io.write_packet(&auth).await?;
            }
            Some(0x01) => {
                if plugin != CACHING_SHA2_PASSWORD {
                    return Err(MySqlError::Protocol(format!(
                        "unexpected AuthMoreData for plugin {}",
                        sanitize(&plugin, 64)
                    )));
                }
                match packet.get(1) {
                    Some(0x03) => {} // fast auth succeeded; OK follows
                    Some(0x04) => return Err(MySqlError::FullAuthRequired),
                    _ => {
                        return Err(MySqlError::Protocol(
                            "unexpected caching_sha2_password state".to_string(),
                        ))
                    }
                }
            }
            Some(b) => {
                return Err(MySqlError::Protocol(format!(
                    "unexpected packet 0x{b:02x} during authentication"
                )))
            }
            None => {
                return Err(MySqlError::Protocol(
                    "empty packet during authentication".to_string(),
                ))
            }
        }
    }
    Err(MySqlError::Protocol(
        "authentication did not finish".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // ----- pure codec tests ------------------------------------------------------------

    #[test]
    fn sha256_scramble_matches_go_sql_driver_vectors() {
        // Vectors from go-sql-driver/mysql auth_test.go (TestSHA256Pass).
        let nonce = [
            10, 47, 74, 111, 75, 73, 34, 48, 88, 76, 114, 74, 37, 13, 3, 80, 82, 2, 23, 21,
        ];
        assert_eq!(
            hex(&scramble_sha256(b"secret", &nonce)),
            "f490e76f66d9d86665ce54d98c78d0acfe2fb0b08b423da807144873d30b312c"
        );
        assert_eq!(
            hex(&scramble_sha256(b"secret2", &nonce)),
            "abc3934a012cf342e876071c8ee202de51785b430258a7a0138bc79c4d800bc6"
        );
    }

    #[test]
    fn native_scramble_matches_jdbc_vector_and_server_check() {
        // Seed/password/scramble captured from Connector/J (flike/kingshard util_test.go).
        let nonce = unhex("406a783d645f337a34323b73532459725329707c");
        assert_eq!(
            hex(&scramble_native(b"kingshard", &nonce)),
            "fbc71db5ac3d7b51048d1a1d88c1677f34bcca11"
        );
        // And the server-side check accepts it.
        assert!(verify_native(
            "kingshard",
            &nonce,
            &scramble_native(b"kingshard", &nonce)
        ));
        assert!(!verify_native(
            "other",
            &nonce,
            &scramble_native(b"kingshard", &nonce)
        ));
    }

    #[test]
    fn auth_response_rules() {
        let nonce = [7u8; 20];
        assert!(auth_response(NATIVE_PASSWORD, &Secret::default(), &nonce)
            .unwrap()
            .is_empty());
        assert_eq!(
            auth_response(NATIVE_PASSWORD, &Secret::new("x"), &nonce)
                .unwrap()
                .len(),
            20
        );
        assert_eq!(
            auth_response(CACHING_SHA2_PASSWORD, &Secret::new("x"), &nonce)
                .unwrap()
                .len(),
            32
        );
        assert!(matches!(
            auth_response("dialog", &Secret::new("x"), &nonce),
            Err(MySqlError::Unsupported(_))
        ));
        assert!(matches!(
            auth_response(NATIVE_PASSWORD, &Secret::new("x"), &nonce[..10]),
            Err(MySqlError::Protocol(_))
        ));
    }

    #[test]
    fn lenenc_ints() {
        let cases: [(&[u8], Option<u64>); 5] = [
            (&[0xFA], Some(250)),
            (&[0xFB], None),
            (&[0xFC, 0x34, 0x12], Some(0x1234)),
            (&[0xFD, 0x56, 0x34, 0x12], Some(0x12_3456)),
            (&[0xFE, 1, 2, 3, 4, 5, 6, 7, 8], Some(0x0807_0605_0403_0201)),
        ];
        for (bytes, want) in cases {
            let mut c = Cursor::new(bytes, "test");
            assert_eq!(c.lenenc_int().unwrap(), want, "{bytes:?}");
            assert_eq!(c.remaining(), 0);
        }
        for bad in [&[0xFF][..], &[0xFC, 1][..], &[0xFE, 1, 2, 3][..], &[][..]] {
            assert!(Cursor::new(bad, "test").lenenc_int().is_err(), "{bad:?}");
        }
        // A length-encoded string longer than the packet is rejected, not sliced.
        let mut c = Cursor::new(&[0xFC, 0xFF, 0xFF, b'a'], "test");
        assert!(c.lenenc_bytes().is_err());
    }

    #[test]
    fn rows_with_nulls_and_bad_rows() {
        let row = [0xFB, 1, b'7', 0, 0xFC, 3, 0, b'a', b'b', b'c'];
        assert_eq!(
            parse_text_row(&row, 4).unwrap(),
            vec![
                None,
                Some("7".into()),
                Some(String::new()),
                Some("abc".into())
            ]
        );
        assert!(parse_text_row(&row, 3).is_err(), "trailing bytes");
        assert!(parse_text_row(&row, 5).is_err(), "missing column");
    }

    #[test]
    fn err_packets() {
        let mut p = vec![0xFF, 0x15, 0x04, b'#'];
        p.extend_from_slice(b"28000Access denied for user 'u'@'h' (using password: YES)");
        match parse_err_packet(&p) {
            MySqlError::Server {
                code,
                sql_state,
                message,
            } => {
                assert_eq!(code, 1045);
                assert_eq!(sql_state, "28000");
                assert!(message.starts_with("Access denied"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_err_packet(&p).reason(), FailureReason::Auth);
        // Pre-handshake form without SQLSTATE (host blocked).
        let mut p = vec![0xFF, 0x69, 0x04];
        p.extend_from_slice(b"Host '10.0.0.1' is blocked because of many connection errors");
        let e = parse_err_packet(&p);
        assert_eq!(e.server_code(), Some(1129));
        assert_eq!(e.reason(), FailureReason::Protocol);
        assert!(e.to_string().contains("1129 (HY000)"), "{e}");
        assert!(matches!(
            parse_err_packet(&[0xFF, 1]),
            MySqlError::Protocol(_)
        ));
        assert!(matches!(parse_err_packet(&[]), MySqlError::Protocol(_)));
    }

    #[test]
    fn greeting_parses_and_truncations_fail_cleanly() {
        let g = greeting_bytes("5.5.5-10.11.19-MariaDB-0+deb12u1", NATIVE_PASSWORD, &NONCE1);
        let parsed = parse_greeting(&g).unwrap();
        assert_eq!(parsed.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1");
        assert_eq!(
            display_version(&parsed.server_version),
            "10.11.19-MariaDB-0+deb12u1"
        );
        assert_eq!(parsed.connection_id, 7);
        assert_eq!(parsed.scramble, NONCE1);
        assert_eq!(parsed.auth_plugin, NATIVE_PASSWORD);
        assert_ne!(parsed.capabilities & CLIENT_PLUGIN_AUTH, 0);
        // Every truncation before the plugin name is an error, never a panic.
        let plugin_start = g.len() - NATIVE_PASSWORD.len() - 1;
        for n in 0..plugin_start {
            assert!(parse_greeting(&g[..n]).is_err(), "prefix {n}");
        }
        // Byte flips never panic.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut m = g.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % m.len() as u64) as usize;
            m[i] = (rng >> 32) as u8;
            let _ = parse_greeting(&m);
        }
        let mut v9 = g.clone();
        v9[0] = 9;
        assert!(matches!(parse_greeting(&v9), Err(MySqlError::Protocol(_))));
    }

    #[test]
    fn handshake_response_layout() {
        let g = parse_greeting(&greeting_bytes("8.0.36", CACHING_SHA2_PASSWORD, &NONCE1)).unwrap();
        let auth = [9u8; 32];
        let r =
            handshake_response(&g, "probe", Some("mysql"), CACHING_SHA2_PASSWORD, &auth).unwrap();
        let flags = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        assert_ne!(flags & CLIENT_PROTOCOL_41, 0);
        assert_ne!(flags & CLIENT_SECURE_CONNECTION, 0);
        assert_ne!(flags & CLIENT_PLUGIN_AUTH, 0);
        assert_ne!(flags & CLIENT_CONNECT_WITH_DB, 0);
        assert_eq!(flags & 0x0800, 0, "never CLIENT_SSL");
        assert_eq!(flags & 0x0100_0000, 0, "never CLIENT_DEPRECATE_EOF");
        assert_eq!(&r[4..8], &(16u32 << 20).to_le_bytes());
        assert_eq!(r[8], CHARSET_UTF8MB4_GENERAL_CI);
        assert_eq!(&r[9..32], &[0u8; 23]);
        let mut want = b"probe\0".to_vec();
        want.push(32);
        want.extend_from_slice(&auth);
        want.extend_from_slice(b"mysql\0caching_sha2_password\0");
        assert_eq!(&r[32..], &want[..]);
        assert!(handshake_response(&g, "a\0b", None, NATIVE_PASSWORD, &[]).is_err());
    }

    #[tokio::test]
    async fn packet_framing_multi_packet_and_limits() {
        // Write side: a payload of exactly 0xFFFFFF bytes needs a trailing empty packet.
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let payload = vec![b'x'; MAX_CHUNK + 1]; // 16 MiB, the cap
        let writer = tokio::spawn(async move {
            let mut io = PacketIo::new(client, MAX_PACKET_BYTES);
            io.write_packet(&payload).await.unwrap();
            io.write_packet(&vec![b'y'; MAX_CHUNK]).await.unwrap();
            io.seq
        });
        let mut raw = Vec::new();
        server.read_to_end(&mut raw).await.unwrap();
        assert_eq!(writer.await.unwrap(), 4);
        assert_eq!(&raw[..4], &[0xFF, 0xFF, 0xFF, 0]);
        let second = 4 + MAX_CHUNK;
        assert_eq!(&raw[second..second + 4], &[1, 0, 0, 1]);
        let third = second + 4 + 1;
        assert_eq!(&raw[third..third + 4], &[0xFF, 0xFF, 0xFF, 2]);
        let fourth = third + 4 + MAX_CHUNK;
        assert_eq!(&raw[fourth..], &[0, 0, 0, 3]);

        // Read side reassembles both.
        let mut io = PacketIo::new(&raw[..], MAX_PACKET_BYTES);
        assert_eq!(io.read_packet().await.unwrap().len(), MAX_CHUNK + 1);
        assert_eq!(io.read_packet().await.unwrap().len(), MAX_CHUNK);

        // Bounded: a server announcing more than the cap is refused before reading it.
        let mut io = PacketIo::new(&[0x00, 0x10, 0x00, 0, 1, 2][..], 1000);
        assert!(matches!(io.read_packet().await, Err(MySqlError::Limit(_))));
        // Out-of-order sequence id.
        let mut io = PacketIo::new(&[1, 0, 0, 5, 0][..], 1000);
        assert!(matches!(
            io.read_packet().await,
            Err(MySqlError::Protocol(_))
        ));
        // EOF in the middle of a payload.
        let mut io = PacketIo::new(&[10, 0, 0, 0, 1, 2][..], 1000);
        let e = io.read_packet().await.unwrap_err();
        assert!(
            matches!(e, MySqlError::Io(io::ErrorKind::UnexpectedEof)),
            "{e:?}"
        );
        assert_eq!(e.reason(), FailureReason::Protocol);
    }

    #[test]
    fn errors_never_show_the_password() {
        let password = "Tr0ub4dor&3-leak-check";
        let errors = vec![
            MySqlError::Connect(ConnectError::Refused {
                endpoint: "db:3306".into(),
            }),
            MySqlError::Timeout { after_ms: 5 },
            MySqlError::Io(io::ErrorKind::UnexpectedEof),
            MySqlError::Server {
                code: 1045,
                sql_state: "28000".into(),
                message: "Access denied for user 'u'@'h' (using password: YES)".into(),
            },
            MySqlError::Protocol("x".into()),
            MySqlError::Unsupported("y".into()),
            MySqlError::FullAuthRequired,
            MySqlError::Limit("z".into()),
            MySqlError::Broken,
            auth_response("dialog", &Secret::new(password), &[1; 20]).unwrap_err(),
        ];
        for e in &errors {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(password), "{text}");
        }
        assert_eq!(errors[3].reason(), FailureReason::Auth);
        assert_eq!(errors[0].reason(), FailureReason::Refused);
        assert_eq!(errors[1].reason(), FailureReason::Timeout);
        assert_eq!(errors[6].reason(), FailureReason::Protocol);
    }

    // ----- a scripted fake server ------------------------------------------------------

    const NONCE1: [u8; 20] = *b"abcdefghijklmnopqrst";
    const NONCE2: [u8; 20] = *b"ABCDEFGHIJKLMNOPQRST";

    fn greeting_bytes(version: &str, plugin: &str, nonce: &[u8; 20]) -> Vec<u8> {
        let caps: u32 = CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_CONNECT_WITH_DB
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH;
        let mut p = vec![10];
        p.extend_from_slice(version.as_bytes());
        p.push(0);
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&nonce[..8]);
        p.push(0);
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(&nonce[8..]);
        p.push(0);
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        p
    }

    fn verify_native(password: &str, nonce: &[u8], auth: &[u8]) -> bool {
        if auth.is_empty() {
            return password.is_empty();
        }
        let stage2 = Sha1::digest(Sha1::digest(password.as_bytes()));
        let mut h = Sha1::new();
        h.update(nonce);
        h.update(stage2);
        let mask = h.finalize();
        let candidate: Vec<u8> = auth.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        auth.len() == 20 && Sha1::digest(candidate) == stage2
    }

    fn verify_sha2(password: &str, nonce: &[u8], auth: &[u8]) -> bool {
        if auth.is_empty() {
            return password.is_empty();
        }
        let stage2 = Sha256::digest(Sha256::digest(password.as_bytes()));
        let mut h = Sha256::new();
        h.update(stage2);
        h.update(nonce);
        let mask = h.finalize();
        let candidate: Vec<u8> = auth.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        auth.len() == 32 && Sha256::digest(candidate) == stage2
    }

    async fn write_pkt(s: &mut TcpStream, seq: u8, payload: &[u8]) {
        let len = (payload.len() as u32).to_le_bytes();
        let mut frame = vec![len[0], len[1], len[2], seq];
        frame.extend_from_slice(payload);
        let _ = s.write_all(&frame).await;
    }

    async fn read_pkt(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).await.ok()?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        let mut p = vec![0; len];
        s.read_exact(&mut p).await.ok()?;
        Some((h[3], p))
    }

    fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
        out.push(s.len() as u8);
        out.extend_from_slice(s);
    }

    /// What the fake server saw from the client.
    #[derive(Debug, Default)]
    struct Seen {
        user: String,
        database: Option<String>,
        client_plugin: String,
        authenticated: bool,
        queries: Vec<String>,
        quit: bool,
    }

    #[derive(Clone)]
    struct FakeMySql {
        greeting_error: Option<(u16, &'static str)>,
        greeting_plugin: &'static str,
        switch_to: Option<&'static str>,
        password: &'static str,
        sha2_full_auth: bool,
    }

    impl FakeMySql {
        fn new(greeting_plugin: &'static str, password: &'static str) -> Self {
            FakeMySql {
                greeting_error: None,
                greeting_plugin,
                switch_to: None,
                password,
                sha2_full_auth: false,
            }
        }

        async fn start(self) -> (Endpoint, JoinHandle<Seen>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let task = tokio::spawn(async move {
                let mut seen = Seen::default();
                let Ok((mut s, _)) = listener.accept().await else {
                    return seen;
                };
                self.serve(&mut s, &mut seen).await;
                seen
            });
            (Endpoint::new("127.0.0.1", port), task)
        }

        async fn serve(&self, s: &mut TcpStream, seen: &mut Seen) -> Option<()> {
            if let Some((code, msg)) = self.greeting_error {
                let mut p = vec![0xFF];
                p.extend_from_slice(&code.to_le_bytes());
                p.extend_from_slice(msg.as_bytes());
                write_pkt(s, 0, &p).await;
                return None;
            }
            write_pkt(
                s,
                0,
                &greeting_bytes("8.0.36-fake", self.greeting_plugin, &NONCE1),
            )
            .await;
            let (seq, resp) = read_pkt(s).await?;
            assert_eq!(seq, 1);
            let mut c = Cursor::new(&resp, "handshake response");
            let flags = c.u32().ok()?;
            assert_ne!(flags & CLIENT_PROTOCOL_41, 0);
            c.take(4 + 1 + 23).ok()?;
            seen.user = String::from_utf8_lossy(c.null_terminated().ok()?).into_owned();
            let auth_len = c.u8().ok()? as usize;
            let mut auth = c.take(auth_len).ok()?.to_vec();
            if flags & CLIENT_CONNECT_WITH_DB != 0 {
                seen.database =
                    Some(String::from_utf8_lossy(c.null_terminated().ok()?).into_owned());
            }
            seen.client_plugin = String::from_utf8_lossy(c.null_terminated().ok()?).into_owned();
            let mut plugin = seen.client_plugin.clone();
            let mut nonce = NONCE1;
            let mut seq = 2u8;
            if let Some(switch) = self.switch_to {
                let mut p = vec![0xFE];
                p.extend_from_slice(switch.as_bytes());
                p.push(0);
                p.extend_from_slice(&NONCE2);
                p.push(0);
                write_pkt(s, seq, &p).await;
                let (got, a) = read_pkt(s).await?;
                assert_eq!(got, seq + 1);
                seq += 2;
                auth = a;
                plugin = switch.to_string();
                nonce = NONCE2;
            }
            let ok = match plugin.as_str() {
                NATIVE_PASSWORD => verify_native(self.password, &nonce, &auth),
                CACHING_SHA2_PASSWORD => verify_sha2(self.password, &nonce, &auth),
                _ => false,
            };
            if !ok {
                let msg = format!(
                    "#28000Access denied for user '{}'@'localhost' (using password: YES)",
                    seen.user
                );
                let mut p = vec![0xFF, 0x15, 0x04];
                p.extend_from_slice(msg.as_bytes());
                write_pkt(s, seq, &p).await;
                return None;
            }
            if plugin == CACHING_SHA2_PASSWORD && !self.password.is_empty() {
                if self.sha2_full_auth {
                    write_pkt(s, seq, &[0x01, 0x04]).await;
                    let _ = read_pkt(s).await; // the client hangs up
                    return None;
                }
                write_pkt(s, seq, &[0x01, 0x03]).await;
                seq += 1;
            }
            write_pkt(s, seq, &[0x00, 0, 0, 2, 0, 0, 0]).await;
            seen.authenticated = true;
            loop {
                let (seq, cmd) = read_pkt(s).await?;
                assert_eq!(seq, 0);
                match cmd.first()? {
                    0x01 => {
                        seen.quit = true;
                        return Some(());
                    }
                    0x03 => {
                        let sql = String::from_utf8_lossy(&cmd[1..]).into_owned();
                        seen.queries.push(sql.clone());
                        let value: &[u8] = if sql == "SELECT 1" { b"1" } else { b"2" };
                        write_pkt(s, 1, &[1]).await;
                        let mut def = Vec::new();
                        for part in [&b"def"[..], b"", b"", b"", b"1", b""] {
                            lenenc_str(&mut def, part);
                        }
                        def.extend_from_slice(&[0x0c, 63, 0, 1, 0, 0, 0, 8, 0x81, 0, 0, 0, 0]);
                        write_pkt(s, 2, &def).await;
                        write_pkt(s, 3, &[0xFE, 0, 0, 2, 0]).await;
                        let mut row = Vec::new();
                        lenenc_str(&mut row, value);
                        write_pkt(s, 4, &row).await;
                        write_pkt(s, 5, &[0xFE, 0, 0, 2, 0]).await;
                    }
                    _ => return None,
                }
            }
        }
    }

    const D: Duration = Duration::from_secs(3);

    #[tokio::test]
    async fn fake_native_password_login_and_probe() {
        let (ep, task) = FakeMySql::new(NATIVE_PASSWORD, "n4tive-pw").start().await;
        let out = probe(&ep, "probe", &Secret::new("n4tive-pw"), D).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "8.0.36-fake: SELECT 1 ok");
        let seen = task.await.unwrap();
        assert_eq!(seen.user, "probe");
        assert_eq!(seen.client_plugin, NATIVE_PASSWORD);
        assert_eq!(seen.queries, ["SELECT 1"]);
        assert!(seen.quit, "COM_QUIT sent");
    }

    #[tokio::test]
    async fn fake_caching_sha2_fast_path() {
        let (ep, task) = FakeMySql::new(CACHING_SHA2_PASSWORD, "sha2-pw")
            .start()
            .await;
        let out = probe(&ep, "probe", &Secret::new("sha2-pw"), D).await;
        assert!(out.ok, "{out:?}");
        let seen = task.await.unwrap();
        assert_eq!(seen.client_plugin, CACHING_SHA2_PASSWORD);
        assert!(seen.authenticated && seen.quit);
    }

    #[tokio::test]
    async fn fake_caching_sha2_full_auth_is_protocol() {
        let mut fake = FakeMySql::new(CACHING_SHA2_PASSWORD, "sha2-pw");
        fake.sha2_full_auth = true;
        let (ep, task) = fake.start().await;
        let out = probe(&ep, "probe", &Secret::new("sha2-pw"), D).await;
        assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
        assert!(out.detail.contains("full authentication"), "{}", out.detail);
        assert!(out.detail.contains("TLS"), "{}", out.detail);
        assert!(!task.await.unwrap().authenticated);
    }

    #[tokio::test]
    async fn fake_auth_switch_to_native_like_mysql8() {
        let mut fake = FakeMySql::new(CACHING_SHA2_PASSWORD, "sw-pw");
        fake.switch_to = Some(NATIVE_PASSWORD);
        let (ep, task) = fake.start().await;
        let conn = MySqlConn::connect(&ep, "probe", &Secret::new("sw-pw"), D).await;
        let mut conn = conn.unwrap();
        assert_eq!(conn.server_version(), "8.0.36-fake");
        assert_eq!(conn.connection_id(), 7);
        let rs = conn.query("SELECT 2").await.unwrap();
        assert_eq!(rs.columns, ["1"]);
        assert_eq!(rs.rows, vec![vec![Some("2".to_string())]]);
        conn.close().await.unwrap();
        let seen = task.await.unwrap();
        assert!(seen.authenticated && seen.quit);
    }

    #[tokio::test]
    async fn fake_auth_switch_to_caching_sha2_and_database() {
        let mut fake = FakeMySql::new(NATIVE_PASSWORD, "sw-pw");
        fake.switch_to = Some(CACHING_SHA2_PASSWORD);
        let (ep, task) = fake.start().await;
        let conn =
            MySqlConn::connect_with_db(&ep, "probe", &Secret::new("sw-pw"), Some("_gravity"), D)
                .await
                .unwrap();
        conn.close().await.unwrap();
        let seen = task.await.unwrap();
        assert_eq!(seen.database.as_deref(), Some("_gravity"));
        assert!(seen.authenticated);
    }

    #[tokio::test]
    async fn fake_empty_password() {
        let (ep, task) = FakeMySql::new(CACHING_SHA2_PASSWORD, "").start().await;
        let out = probe(&ep, "root", &Secret::default(), D).await;
        assert!(out.ok, "{out:?}");
        assert!(task.await.unwrap().authenticated);
    }

    #[tokio::test]
    async fn fake_wrong_password_is_auth() {
        let password = "wr0ng-secret-value";
        let (ep, _task) = FakeMySql::new(NATIVE_PASSWORD, "right").start().await;
        let out = probe(&ep, "probe", &Secret::new(password), D).await;
        assert_eq!(out.reason, Some(FailureReason::Auth), "{out:?}");
        assert!(out.detail.contains("1045"), "{}", out.detail);
        assert!(!out.detail.contains(password));
        assert!(!format!("{out:?}").contains(password));
    }

    #[tokio::test]
    async fn fake_unsupported_plugin_is_protocol() {
        let mut fake = FakeMySql::new(NATIVE_PASSWORD, "pw");
        fake.switch_to = Some("dialog");
        let (ep, _task) = fake.start().await;
        let out = probe(&ep, "probe", &Secret::new("pw"), D).await;
        assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
        assert!(out.detail.contains("dialog"), "{}", out.detail);
    }

    #[tokio::test]
    async fn fake_refused_before_handshake() {
        for (code, msg, reason) in [
            (1040, "Too many connections", FailureReason::Protocol),
            (
                1129,
                "Host '127.0.0.1' is blocked because of many connection errors",
                FailureReason::Protocol,
            ),
            (
                1130,
                "Host '127.0.0.1' is not allowed to connect to this MySQL server",
                FailureReason::Auth,
            ),
        ] {
            let mut fake = FakeMySql::new(NATIVE_PASSWORD, "");
            fake.greeting_error = Some((code, msg));
            let (ep, _task) = fake.start().await;
            let out = probe(&ep, "probe", &Secret::default(), D).await;
            assert_eq!(out.reason, Some(reason), "{out:?}");
            assert!(out.detail.contains(&code.to_string()), "{}", out.detail);
        }
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let out = probe(
            &Endpoint::new("127.0.0.1", port),
            "u",
            &Secret::default(),
            D,
        )
        .await;
        assert_eq!(out.reason, Some(FailureReason::Refused), "{out:?}");
        assert!(!out.ok);
    }

    #[tokio::test]
    async fn silent_server_times_out_within_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept (kernel backlog) but never say anything.
        let _hold = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(conn);
        });
        let deadline = Duration::from_millis(300);
        let start = Instant::now();
        let out = probe(
            &Endpoint::new("127.0.0.1", port),
            "u",
            &Secret::default(),
            deadline,
        )
        .await;
        let took = start.elapsed();
        assert_eq!(out.reason, Some(FailureReason::Timeout), "{out:?}");
        assert!(took >= deadline, "{took:?}");
        assert!(took < deadline + Duration::from_millis(100), "{took:?}");
    }

    #[tokio::test]
    async fn garbage_server_is_protocol() {
        for garbage in [
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
            &b"\x05\x00\x00\x00\x09hello"[..], // well framed, protocol version 9
            &b"\x02\x00\x00\x00\x0a"[..],      // truncated header, then EOF
            &b"\x03\x00\x00\x00\x0aab"[..],    // handshake cut short
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let _srv = tokio::spawn(async move {
                if let Ok((mut s, _)) = listener.accept().await {
                    let _ = s.write_all(garbage).await;
                    let _ = s.shutdown().await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
            let out = probe(
                &Endpoint::new("127.0.0.1", port),
                "u",
                &Secret::default(),
                D,
            )
            .await;
            assert_eq!(
                out.reason,
                Some(FailureReason::Protocol),
                "{garbage:?}: {out:?}"
            );
        }
    }

    // ----- against the real server (MariaDB / MySQL) -----------------------------------

    fn live_params() -> (Endpoint, String, Secret) {
        let addr = std::env::var("GX_MYSQL_ADDR").unwrap_or_else(|_| "127.0.0.1:3306".into());
        let endpoint: Endpoint = addr.parse().expect("GX_MYSQL_ADDR must be host:port");
        let user = std::env::var("GX_MYSQL_USER").unwrap_or_else(|_| "root".into());
        let password = Secret::new(std::env::var("GX_MYSQL_PASSWORD").unwrap_or_default());
        (endpoint, user, password)
    }

    /// A logged-in connection to the test server, or `None` (test skipped) when nothing
    /// listens there. Uses a full login, not a bare TCP connect (see the module docs).
    async fn live_conn() -> Option<MySqlConn> {
        let (endpoint, user, password) = live_params();
        match MySqlConn::connect(&endpoint, &user, &password, Duration::from_secs(5)).await {
            Ok(conn) => Some(conn),
            Err(MySqlError::Connect(e)) => {
                eprintln!("SKIP: no MySQL server at {endpoint} ({e}); set GX_MYSQL_ADDR");
                None
            }
            Err(e) => panic!("cannot log in to the test server at {endpoint}: {e}"),
        }
    }

    #[tokio::test]
    async fn live_probe_ok() {
        let Some(conn) = live_conn().await else {
            return;
        };
        conn.close().await.unwrap();
        let (endpoint, user, password) = live_params();
        let out = probe(&endpoint, &user, &password, Duration::from_secs(5)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.reason, None);
        assert!(out.latency > Duration::ZERO);
        assert!(out.detail.ends_with("SELECT 1 ok"), "{}", out.detail);
    }

    #[tokio::test]
    async fn live_queries() {
        let Some(mut conn) = live_conn().await else {
            return;
        };

        let rs = conn.query("SELECT @@version, @@hostname").await.unwrap();
        assert_eq!(rs.columns, ["@@version", "@@hostname"]);
        assert_eq!(rs.rows.len(), 1);
        assert_eq!(rs.rows[0].len(), 2);
        let version = rs.value(0, "@@version").unwrap();
        assert!(!version.is_empty());
        assert!(conn
            .server_version()
            .contains(version.split('-').next().unwrap()));

        let rs = conn
            .query("SELECT NULL AS n, 'a' AS s, '' AS e")
            .await
            .unwrap();
        assert_eq!(rs.columns, ["n", "s", "e"]);
        assert_eq!(
            rs.rows,
            vec![vec![None, Some("a".into()), Some(String::new())]]
        );

        // SHOW BINARY LOGS: rows when binary logging is on, else a clean ERR 1381.
        let log_bin = conn.query("SELECT @@log_bin").await.unwrap();
        let log_bin_on = log_bin.rows[0][0].as_deref() == Some("1");
        match conn.query("SHOW BINARY LOGS").await {
            Ok(rs) => {
                assert!(log_bin_on, "got binlogs although @@log_bin is off");
                assert_eq!(rs.column_index("Log_name"), Some(0));
                assert_eq!(rs.column_index("File_size"), Some(1));
                assert!(!rs.rows.is_empty());
            }
            Err(e) => {
                assert!(!log_bin_on, "binlog on but SHOW BINARY LOGS failed: {e}");
                assert_eq!(e.server_code(), Some(1381), "{e}");
                assert_eq!(e.reason(), FailureReason::Protocol);
                assert!(e.to_string().contains("binary logging"), "{e}");
            }
        }

        // A server error leaves the connection usable.
        let e = conn
            .query("SELECT * FROM mysql.gx_no_such_table")
            .await
            .unwrap_err();
        assert_eq!(e.server_code(), Some(1146), "{e}");
        let e = conn.query("SELEC 1").await.unwrap_err();
        assert_eq!(e.server_code(), Some(1064), "{e}");

        // Statement without a result set.
        let rs = conn.query("DO 1").await.unwrap();
        assert_eq!(rs, ResultSet::default());

        // 5,000 rows: MariaDB's sequence engine, or a cross join elsewhere.
        let rs = match conn.query("SELECT seq FROM mysql.seq_1_to_5000").await {
            Ok(rs) => rs,
            Err(MySqlError::Server { .. }) => {
                let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL \
                              SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL \
                              SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
                let sql = format!(
                    "SELECT a.d*1000+b.d*100+c.d*10+e.d+1 AS seq FROM {digits} a, {digits} b, \
                     {digits} c, {digits} e ORDER BY seq LIMIT 5000"
                );
                conn.query(&sql).await.unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(rs.rows.len(), 5000);
        assert_eq!(rs.rows[0][0].as_deref(), Some("1"));
        assert_eq!(rs.rows[4999][0].as_deref(), Some("5000"));

        // Row cap: exceeding it is a typed error and the connection is then unusable.
        conn.set_max_rows(1000);
        let e = conn
            .query("SELECT seq FROM mysql.seq_1_to_5000")
            .await
            .unwrap_err();
        assert!(
            matches!(e, MySqlError::Limit(_)) || e.server_code() == Some(1146),
            "{e}"
        );
        if matches!(e, MySqlError::Limit(_)) {
            assert!(matches!(
                conn.query("SELECT 1").await,
                Err(MySqlError::Broken)
            ));
        }
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn live_result_byte_cap() {
        let Some(mut conn) = live_conn().await else {
            return;
        };
        conn.set_max_result_bytes(10_000);
        let e = conn.query("SELECT REPEAT('x', 20000)").await.unwrap_err();
        assert!(matches!(e, MySqlError::Limit(_)), "{e}");
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn live_wrong_password_and_dedicated_user() {
        let Some(mut admin) = live_conn().await else {
            return;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let user = format!("gx_probe_{}_{}", std::process::id(), nanos % 1_000_000);
        let password = format!("Right-Pw-{nanos}");
        let wrong = format!("Wrong-Pw-{nanos}");
        if let Err(e) = admin
            .query(&format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"
            ))
            .await
        {
            eprintln!("SKIP: cannot create a test user ({e})");
            return;
        }
        let (endpoint, _, _) = live_params();
        let good = probe(&endpoint, &user, &Secret::new(password.clone()), D).await;
        let bad = probe(&endpoint, &user, &Secret::new(wrong.clone()), D).await;
        let empty = probe(&endpoint, &user, &Secret::default(), D).await;
        let bad_conn = MySqlConn::connect(&endpoint, &user, &Secret::new(wrong.clone()), D).await;
        let no_db = MySqlConn::connect_with_db(
            &endpoint,
            &user,
            &Secret::new(password.clone()),
            Some("gx_no_such_db"),
            D,
        )
        .await;
        // Clean up before asserting.
        admin
            .query(&format!("DROP USER '{user}'@'%'"))
            .await
            .unwrap();
        admin.close().await.unwrap();

        assert!(good.ok, "{good:?}");
        assert_eq!(bad.reason, Some(FailureReason::Auth), "{bad:?}");
        assert!(bad.detail.contains("1045"), "{}", bad.detail);
        assert_eq!(empty.reason, Some(FailureReason::Auth), "{empty:?}");
        let e = bad_conn.unwrap_err();
        assert_eq!(e.server_code(), Some(1045));
        assert_eq!(e.reason(), FailureReason::Auth);
        let db_err = no_db.unwrap_err();
        // 1044 (no access to it) or 1049 (unknown database), depending on privileges.
        assert!(
            matches!(db_err.server_code(), Some(1044) | Some(1049)),
            "{db_err}"
        );
        for text in [
            format!("{good:?}"),
            format!("{bad:?}"),
            format!("{empty:?}"),
            format!("{e} {e:?}"),
            format!("{db_err} {db_err:?}"),
        ] {
            assert!(!text.contains(&password), "{text}");
            assert!(!text.contains(&wrong), "{text}");
        }
    }
}
