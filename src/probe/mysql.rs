//! The MySQL / MariaDB client of the exporter, on top of the maintained `mysql_async` driver.
//!
//! What the exporter needs from MySQL is small (log in, `SELECT 1`, `SHOW BINARY LOGS`, a
//! few `SELECT @@...`, the consistency checker's checksum queries), but the login must work
//! wherever gravity's own driver works. `mysql_async` brings the parts a hand-written client
//! got wrong or left out: `caching_sha2_password` *full* authentication (the server's RSA
//! key is fetched and the password sent RSA-OAEP encrypted, or in clear over TLS),
//! `mysql_native_password`, MariaDB's `client_ed25519`, TLS through rustls (ring provider),
//! and the protocol details (multi-packet payloads, `CLIENT_DEPRECATE_EOF`, auth switch).
//!
//! This module wraps it into what the collectors use:
//!
//! * [`MySqlConn`]: one logged-in connection; [`MySqlConn::query`] returns a text
//!   [`ResultSet`] capped at [`DEFAULT_MAX_ROWS`] rows and [`DEFAULT_MAX_RESULT_BYTES`]
//!   bytes, every call under a timeout; [`MySqlConn::close`] sends `COM_QUIT`.
//! * [`MySqlError`] with [`MySqlError::reason`]: a closed [`FailureReason`] (`tls_required`,
//!   `auth`, `auth_plugin_unsupported`, `too_many_connections`, `privilege`, `refused`,
//!   `timeout`, `protocol`, `dns`) and [`MySqlError::hint`]: what an operator does about it.
//! * [`Hub`] / [`SharedConn`]: one connection per (endpoint, user), shared by the connection
//!   probe and the source collector, reused between runs, reconnected once when the server
//!   dropped it (`wait_timeout`, restart, `KILL`), with a backoff after failed logins and
//!   a growing one after timeouts (no handshakes queued on a hung server).
//!
//! A login refused with "Access denied" is retried once over TLS when the plain login
//! failed: if the TLS login works, the server demands TLS for this account (`REQUIRE SSL`)
//! and the reason is `tls_required`, not `auth` (the password is right). That retry does
//! not verify the certificate: it only asks "would TLS let this user in", no data is read
//! over it and it is closed at once.
//!
//! Connections are made with `prefer_socket=false` (the driver would otherwise switch to
//! the server's unix socket when it runs on the same host: the exporter must see what
//! gravity sees over TCP), no statement cache, `max_allowed_packet` fixed at
//! [`MAX_PACKET_BYTES`] for the client's own packet bound (so no settings query after the
//! login) and the connect attribute `program_name=gravity-exporter`.
//!
//! The password is taken as a [`Secret`], handed to the driver only, and never written into
//! an error.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::{
    io_reason, run_probe, sanitize, ConnectError, Endpoint, FailureReason, ProbeOutcome, Secret,
};

/// Largest packet payload accepted from the server (16 MiB).
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on the rows of one result set.
pub const DEFAULT_MAX_ROWS: usize = 100_000;
/// Default cap on the bytes (values plus per-value overhead) of one result set.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// Longest server error message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 300;
/// Most addresses tried for one host name (a DNS answer is outside input: bound it).
const MAX_ADDRS: usize = 16;
/// Longest wait after consecutive login timeouts.
const MAX_TIMEOUT_BACKOFF: Duration = Duration::from_secs(300);
/// Most shared connections a [`Hub`] keeps (endpoints are capped at 64 upstream).
const MAX_SHARED: usize = 128;

/// Server errors: the credentials were rejected (or the account cannot log in).
const AUTH_CODES: [u16; 7] = [
    1045, // ER_ACCESS_DENIED_ERROR
    1130, // ER_HOST_NOT_PRIVILEGED
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1820, // ER_MUST_CHANGE_PASSWORD
    1862, // ER_MUST_CHANGE_PASSWORD_LOGIN
    3118, // ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
    4151, // ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
];
/// Server errors: logged in (or known), but a privilege is missing.
const PRIVILEGE_CODES: [u16; 5] = [
    1044, // ER_DBACCESS_DENIED_ERROR
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1143, // ER_COLUMNACCESS_DENIED_ERROR
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
    1370, // ER_PROCACCESS_DENIED_ERROR
];
/// Server errors: a connection limit was reached.
const TOO_MANY_CODES: [u16; 3] = [
    1040, // ER_CON_COUNT_ERROR: max_connections
    1203, // ER_TOO_MANY_USER_CONNECTIONS: max_user_connections
    1226, // ER_USER_LIMIT_REACHED: MAX_USER_CONNECTIONS / MAX_CONNECTIONS_PER_HOUR ...
];
/// Server errors: the authentication plugin cannot be used by this client.
const PLUGIN_CODES: [u16; 2] = [
    1251, // ER_NOT_SUPPORTED_AUTH_MODE
    1524, // ER_PLUGIN_IS_NOT_LOADED
];
/// Server errors: the server wants TLS. (MariaDB answers `require_secure_transport=ON` with
/// 1045 "Access denied": found by the TLS retry, see the module docs.)
const TLS_CODES: [u16; 1] = [
    3159, // ER_SECURE_TRANSPORT_REQUIRED (MySQL 5.7+)
];
/// Server errors that mean the connection is gone (reconnect and retry once).
const GONE_CODES: [u16; 6] = [
    1053, // ER_SERVER_SHUTDOWN
    1927, // ER_CONNECTION_KILLED (MariaDB)
    2006, // CR_SERVER_GONE_ERROR
    2013, // CR_SERVER_LOST
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+: wait_timeout)
    1317, // ER_QUERY_INTERRUPTED when the session is killed
];

/// Errors of the MySQL client. `Display` never contains the password (it is not kept).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MySqlError {
    /// The TCP connection could not be opened (DNS, refused, unreachable).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connect deadline or the per-query timeout passed.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
    /// The connection failed in the middle of an exchange (EOF, reset, closed by the server).
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
    /// A plain login was refused but the same login over TLS works: the account or the
    /// server requires TLS (`REQUIRE SSL`), gravity's config connects without it.
    #[error("plain login refused: {plain}")]
    TlsRequired {
        /// What the server answered to the plain login.
        plain: String,
    },
    /// The account's authentication plugin is not one this client can speak.
    #[error("authentication plugin not supported by the client: {0}")]
    AuthPluginUnsupported(String),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer sent something that is not valid MySQL protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A result set or packet exceeded a configured bound.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// An earlier error (timeout, limit, protocol violation) left the connection in an
    /// unknown state; open a new one.
    #[error("connection unusable after an earlier error")]
    Broken,
    /// No login attempted: an earlier one failed recently (see [`SharedConn`]).
    #[error("{last} (not retried for another {retry_in_s} s)")]
    Backoff {
        /// The reason of the earlier failure.
        reason: FailureReason,
        /// The earlier failure, as text.
        last: String,
        /// Seconds until the next attempt.
        retry_in_s: u64,
    },
}

impl MySqlError {
    /// The probe [`FailureReason`] for this error.
    pub fn reason(&self) -> FailureReason {
        match self {
            MySqlError::Connect(e) => e.reason(),
            MySqlError::Timeout { .. } => FailureReason::Timeout,
            MySqlError::Io(kind) => io_reason(*kind),
            MySqlError::Server { code, message, .. } => server_reason(*code, message),
            MySqlError::TlsRequired { .. } => FailureReason::TlsRequired,
            MySqlError::AuthPluginUnsupported(_) => FailureReason::AuthPluginUnsupported,
            MySqlError::Backoff { reason, .. } => *reason,
            MySqlError::Tls(_)
            | MySqlError::Protocol(_)
            | MySqlError::Limit(_)
            | MySqlError::Broken => FailureReason::Protocol,
        }
    }

    /// The server error code, for [`MySqlError::Server`].
    pub fn server_code(&self) -> Option<u16> {
        match self {
            MySqlError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection is gone (closed by the server, reset, killed): a new
    /// connection may well work.
    pub fn is_gone(&self) -> bool {
        match self {
            MySqlError::Io(_) => true,
            MySqlError::Server { code, .. } => GONE_CODES.contains(code),
            _ => false,
        }
    }

    /// What an operator does about it, in a few words (for the status page, `check` and
    /// the probe detail).
    pub fn hint(&self) -> &'static str {
        if let MySqlError::Server { code: 1129, .. } = self {
            return "the server blocks this host after connection errors: run FLUSH HOSTS (mysqladmin flush-hosts) and find what aborts handshakes";
        }
        if let MySqlError::Server { code: 1049, .. } = self {
            return "the database named in the login does not exist";
        }
        match self.reason() {
            FailureReason::TlsRequired => "the server requires TLS (require_secure_transport or REQUIRE SSL), gravity connects without: not a password problem",
            FailureReason::Auth => "the server rejected the user or password: check gravity's configured user, password and allowed host",
            FailureReason::AuthPluginUnsupported => "the account uses an authentication plugin the client cannot speak: switch it to mysql_native_password, caching_sha2_password or ed25519",
            FailureReason::TooManyConnections => "a connection limit is reached (max_connections, or the user's MAX_USER_CONNECTIONS): gravity may be refused too",
            FailureReason::Privilege => "logged in, but a privilege is missing: see the grants in docs/connections.md",
            FailureReason::Refused => "nothing accepts connections there: is the server up and the port right?",
            FailureReason::Timeout => "no answer in time: the server or the network is hung or overloaded",
            FailureReason::Dns => "the host name does not resolve",
            FailureReason::Protocol => "the server answered, but not as expected",
            FailureReason::Tls => "the TLS handshake failed: check the server's certificate and the CA",
        }
    }

    /// `hint: error`, the text shown to operators.
    pub fn operator_detail(&self) -> String {
        format!("{}: {self}", self.hint())
    }

    fn from_driver(e: mysql_async::Error, endpoint: &Endpoint) -> MySqlError {
        use mysql_async::{DriverError, Error, IoError};
        match e {
            Error::Server(s) => MySqlError::Server {
                code: s.code,
                sql_state: sanitize(&s.state, 5),
                message: sanitize(&s.message, MAX_MESSAGE_CHARS),
            },
            Error::Io(IoError::Io(err)) => match err.kind() {
                io::ErrorKind::ConnectionRefused => MySqlError::Connect(ConnectError::Refused {
                    endpoint: endpoint.to_string(),
                }),
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    MySqlError::Connect(ConnectError::Other {
                        endpoint: endpoint.to_string(),
                        kind: err.kind(),
                    })
                }
                kind => MySqlError::Io(kind),
            },
            Error::Io(IoError::Tls(err)) => {
                MySqlError::Tls(sanitize(&err.to_string(), MAX_MESSAGE_CHARS))
            }
            Error::Driver(DriverError::ConnectionClosed) => {
                MySqlError::Io(io::ErrorKind::UnexpectedEof)
            }
            Error::Driver(DriverError::UnknownAuthPlugin { name }) => {
                MySqlError::AuthPluginUnsupported(sanitize(&name, 64))
            }
            Error::Driver(DriverError::MysqlOldPasswordDisabled) => {
                MySqlError::AuthPluginUnsupported("mysql_old_password".into())
            }
            Error::Driver(DriverError::CleartextPluginDisabled) => {
                MySqlError::AuthPluginUnsupported("mysql_clear_password".into())
            }
            Error::Driver(DriverError::PacketTooLarge) => {
                MySqlError::Limit(format!("packet larger than {MAX_PACKET_BYTES} bytes"))
            }
            Error::Driver(DriverError::UnexpectedPacket { payload }) => {
                MySqlError::Protocol(format!("unexpected packet of {} bytes", payload.len()))
            }
            Error::Driver(d) => MySqlError::Protocol(sanitize(&d.to_string(), MAX_MESSAGE_CHARS)),
            other => MySqlError::Protocol(sanitize(&other.to_string(), MAX_MESSAGE_CHARS)),
        }
    }
}

/// The reason for a server error code (`message` decides for servers that reuse 1045 for
/// "insecure transport").
fn server_reason(code: u16, message: &str) -> FailureReason {
    if TLS_CODES.contains(&code) || message.contains("insecure transport") {
        FailureReason::TlsRequired
    } else if AUTH_CODES.contains(&code) {
        FailureReason::Auth
    } else if PRIVILEGE_CODES.contains(&code) {
        FailureReason::Privilege
    } else if TOO_MANY_CODES.contains(&code) {
        FailureReason::TooManyConnections
    } else if PLUGIN_CODES.contains(&code) {
        FailureReason::AuthPluginUnsupported
    } else {
        FailureReason::Protocol
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

/// How a connection secures its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tls {
    /// Plain TCP (gravity's MySQL config has no TLS setting, so this is what gravity does).
    #[default]
    Off,
    /// TLS without certificate verification (only for the `tls_required` diagnosis).
    Unverified,
}

/// An authenticated connection to a MySQL or MariaDB server.
pub struct MySqlConn {
    conn: Option<mysql_async::Conn>,
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

/// Resolves `endpoint` (at most [`MAX_ADDRS`] addresses), mapping failures to
/// [`ConnectError::Dns`].
async fn resolve(endpoint: &Endpoint) -> Result<Vec<IpAddr>, MySqlError> {
    match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
        Ok(found) => {
            let ips: Vec<IpAddr> = found.take(MAX_ADDRS).map(|a| a.ip()).collect();
            if ips.is_empty() {
                Err(MySqlError::Connect(ConnectError::Dns {
                    host: sanitize(&endpoint.host, 100),
                    message: "no addresses found".into(),
                }))
            } else {
                Ok(ips)
            }
        }
        Err(e) => Err(MySqlError::Connect(ConnectError::Dns {
            host: sanitize(&endpoint.host, 100),
            message: sanitize(&e.to_string(), 100),
        })),
    }
}

impl MySqlConn {
    /// Connects and logs in without selecting a database, without TLS (as gravity does).
    /// `deadline` bounds the whole connect + login (and a TLS retry after "access denied",
    /// see the module docs) and becomes the default timeout of each later [`query`].
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

    /// Like [`MySqlConn::connect`], selecting `database` during the handshake.
    pub async fn connect_with_db(
        endpoint: &Endpoint,
        user: &str,
        password: &Secret,
        database: Option<&str>,
        deadline: Duration,
    ) -> Result<MySqlConn, MySqlError> {
        let start = Instant::now();
        let plain = Self::connect_tls(endpoint, user, password, database, Tls::Off, deadline).await;
        match plain {
            Err(e) if e.server_code() == Some(1045) => {
                // Is it the password, or does this login need TLS? Ask once over TLS.
                let left = deadline.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(e);
                }
                match Self::connect_tls(endpoint, user, password, database, Tls::Unverified, left)
                    .await
                {
                    Ok(tls) => {
                        let _ = tls.close().await;
                        Err(MySqlError::TlsRequired {
                            plain: e.to_string(),
                        })
                    }
                    Err(_) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Connects with the given TLS mode, without the `tls_required` diagnosis.
    pub async fn connect_tls(
        endpoint: &Endpoint,
        user: &str,
        password: &Secret,
        database: Option<&str>,
        tls: Tls,
        deadline: Duration,
    ) -> Result<MySqlConn, MySqlError> {
        let work = async {
            let ips = resolve(endpoint).await?;
            let mut opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(endpoint.host.clone())
                .tcp_port(endpoint.port)
                .resolved_ips(Some(ips))
                .user(Some(user))
                .pass(Some(password.expose()))
                .db_name(database)
                .prefer_socket(false)
                .stmt_cache_size(0)
                .tcp_nodelay(true)
                .max_allowed_packet(Some(MAX_PACKET_BYTES))
                .wait_timeout(Some(28_800))
                .connect_attribute("program_name", "gravity-exporter");
            if tls == Tls::Unverified {
                opts = opts.ssl_opts(Some(
                    mysql_async::SslOpts::default()
                        .with_danger_accept_invalid_certs(true)
                        .with_danger_skip_domain_validation(true),
                ));
            }
            let conn = mysql_async::Conn::new(opts)
                .await
                .map_err(|e| MySqlError::from_driver(e, endpoint))?;
            let (major, minor, patch) = conn.server_version();
            // MySQL never had a major version >= 10; MariaDB has since 10.0.
            let flavour = if major >= 10 { "MariaDB " } else { "MySQL " };
            Ok(MySqlConn {
                server_version: format!("{flavour}{major}.{minor}.{patch}"),
                connection_id: conn.id(),
                conn: Some(conn),
                endpoint: endpoint.clone(),
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

    /// The server version (`MariaDB 10.11.6`, `MySQL 8.0.36`).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The connection (thread) id the server assigned.
    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    /// Whether an earlier error or a cancelled query left the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken || self.conn.is_none()
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
    #[cfg(test)]
    pub fn set_max_result_bytes(&mut self, max_bytes: usize) {
        self.max_result_bytes = max_bytes;
    }

    /// Runs `sql` (text protocol) and returns its result set (empty for statements without
    /// one). A server error ([`MySqlError::Server`]) leaves the connection usable; a
    /// timeout, a limit, a lost connection or a protocol violation makes every later call
    /// return [`MySqlError::Broken`]. Do not put secrets into `sql`: server error messages
    /// may quote it.
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
        match &result {
            Ok(_) => self.broken = false,
            Err(e @ MySqlError::Server { .. }) if !e.is_gone() => self.broken = false,
            Err(_) => {
                // Drop the driver's connection: it closes the socket (COM_QUIT when it can).
                self.conn = None;
            }
        }
        result
    }

    async fn query_inner(&mut self, sql: &str) -> Result<ResultSet, MySqlError> {
        let endpoint = self.endpoint.clone();
        let driver = |e| MySqlError::from_driver(e, &endpoint);
        let Some(conn) = self.conn.as_mut() else {
            return Err(MySqlError::Broken);
        };
        let mut result = conn.query_iter(sql).await.map_err(driver)?;
        let columns: Vec<String> = result
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        let per_value = std::mem::size_of::<Option<String>>();
        let mut budget = self.max_result_bytes;
        let mut charge = |bytes: usize| -> Result<(), MySqlError> {
            budget = budget.checked_sub(bytes).ok_or_else(|| {
                MySqlError::Limit(format!(
                    "result set larger than {} bytes",
                    self.max_result_bytes
                ))
            })?;
            Ok(())
        };
        charge(columns.iter().map(|c| c.len() + per_value).sum())?;
        let mut rows = Vec::new();
        while let Some(row) = result.next().await.map_err(driver)? {
            if rows.len() >= self.max_rows {
                return Err(MySqlError::Limit(format!(
                    "result set has more than {} rows",
                    self.max_rows
                )));
            }
            let values = row.unwrap();
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                let text = match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    // The text protocol only sends strings; keep any other value readable.
                    other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                };
                charge(text.as_ref().map_or(0, String::len) + per_value)?;
                out.push(text);
            }
            if out.len() != columns.len() {
                return Err(MySqlError::Protocol(format!(
                    "row of {} values for {} columns",
                    out.len(),
                    columns.len()
                )));
            }
            rows.push(out);
        }
        // Any further result set (there should be none: no multi-statements) is drained.
        result.drop_result().await.map_err(driver)?;
        Ok(ResultSet { columns, rows })
    }

    /// Sends `COM_QUIT` and closes the connection (within the connection's timeout).
    /// A broken connection is simply dropped.
    pub async fn close(mut self) -> Result<(), MySqlError> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        if self.broken {
            return Ok(());
        }
        let endpoint = self.endpoint.clone();
        match tokio::time::timeout(self.timeout, conn.disconnect()).await {
            Ok(result) => result.map_err(|e| MySqlError::from_driver(e, &endpoint)),
            Err(_) => Err(MySqlError::Timeout {
                after_ms: self.timeout.as_millis(),
            }),
        }
    }
}

/// Checks the answer of `SELECT 1`.
fn check_select_one(rs: &ResultSet) -> Result<(), (FailureReason, String)> {
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
    Ok(())
}

fn split(e: MySqlError) -> (FailureReason, String) {
    (e.reason(), e.operator_detail())
}

/// Probes a MySQL/MariaDB server on a new connection: log in as `user`, `SELECT 1` (the
/// answer must be one row holding `1`), `COM_QUIT`, all within `deadline`. The connection
/// prober uses [`SharedConn::probe`] instead, which reuses the shared connection.
pub async fn probe(
    endpoint: &Endpoint,
    user: &str,
    password: &Secret,
    deadline: Duration,
) -> ProbeOutcome {
    run_probe(deadline, async {
        let mut conn = MySqlConn::connect(endpoint, user, password, deadline)
            .await
            .map_err(split)?;
        let rs = conn.query("SELECT 1").await.map_err(split)?;
        check_select_one(&rs)?;
        let detail = format!("{}: SELECT 1 ok", conn.server_version());
        // The probe already succeeded; a failing COM_QUIT only means the server hung up.
        let _ = conn.close().await;
        Ok(detail)
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Shared connections
// ---------------------------------------------------------------------------------------

/// Who logs in where: the key of a shared connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Login {
    /// Server address.
    pub endpoint: Endpoint,
    /// User name.
    pub user: String,
    /// Password (redacted `Debug`).
    pub password: Secret,
}

/// A future borrowing the connection, as taken by [`SharedConn::with`].
pub type ConnFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, MySqlError>> + Send + 'c>>;

#[derive(Debug, Default)]
struct Slot {
    conn: Option<MySqlConn>,
    /// After a failed login: no new one before this instant; the error meanwhile.
    backoff: Option<(Instant, MySqlError)>,
    /// Consecutive login timeouts (the backoff doubles with each).
    timeouts: u32,
    /// Logins made (for tests and the docs' connection budget).
    logins: u64,
}

/// One connection to one (endpoint, user), shared by everything that reads from that
/// server (the connection probe, the source collector), used by one caller at a time.
#[derive(Debug)]
pub struct SharedConn {
    login: Login,
    slot: tokio::sync::Mutex<Slot>,
}

impl SharedConn {
    /// A shared connection that logs in as `login` when first used.
    pub fn new(login: Login) -> SharedConn {
        SharedConn {
            login,
            slot: tokio::sync::Mutex::new(Slot::default()),
        }
    }

    /// The login this connection uses.
    pub fn login(&self) -> &Login {
        &self.login
    }

    /// Logins made so far (a new connection after a failure or a drop counts again).
    pub async fn logins(&self) -> u64 {
        self.slot.lock().await.logins
    }

    /// The server version of the current connection (`MariaDB 10.11.6`), if one is open.
    pub async fn server_version(&self) -> Option<String> {
        self.slot
            .lock()
            .await
            .conn
            .as_ref()
            .map(|c| c.server_version().to_string())
    }

    /// The server's id of the current connection, if one is open.
    pub async fn connection_id(&self) -> Option<u32> {
        self.slot
            .lock()
            .await
            .conn
            .as_ref()
            .map(|c| c.connection_id())
    }

    /// Runs `work` on the connection, logging in first when there is none. `timeout` bounds
    /// the login and each query. When a reused connection turns out to be gone (server
    /// restart, `wait_timeout`, `KILL`), it logs in again and runs `work` once more, so a
    /// short `wait_timeout` costs a login, not a failed run. A failed login is not retried
    /// before `retry_after` has passed (the error is returned meanwhile); after a login
    /// timeout the wait is at least `retry_after` and doubles with each further timeout (up
    /// to 5 minutes), so a hung server is not sent a queue of handshakes.
    pub async fn with<T, F>(
        &self,
        timeout: Duration,
        retry_after: Duration,
        mut work: F,
    ) -> Result<T, MySqlError>
    where
        F: for<'c> FnMut(&'c mut MySqlConn) -> ConnFuture<'c, T>,
    {
        let mut slot = self.slot.lock().await;
        if slot.conn.as_ref().is_some_and(MySqlConn::is_broken) {
            // A query of an earlier caller was cancelled half-way (its collector timed out).
            slot.conn = None;
        }
        if let Some(conn) = slot.conn.as_mut() {
            conn.set_timeout(timeout);
            match work(conn).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_gone() => {
                    tracing::debug!(endpoint = %self.login.endpoint, error = %e, "MySQL connection gone, logging in again");
                    slot.conn = None;
                }
                Err(e) => {
                    if !matches!(e, MySqlError::Server { .. }) {
                        slot.conn = None;
                    }
                    return Err(e);
                }
            }
        }
        let now = Instant::now();
        if let Some((until, last)) = &slot.backoff {
            if now < *until {
                return Err(MySqlError::Backoff {
                    reason: last.reason(),
                    last: last.to_string(),
                    retry_in_s: until.saturating_duration_since(now).as_secs().max(1),
                });
            }
        }
        slot.logins = slot.logins.saturating_add(1);
        let l = &self.login;
        match MySqlConn::connect(&l.endpoint, &l.user, &l.password, timeout).await {
            Ok(conn) => {
                slot.backoff = None;
                slot.timeouts = 0;
                let conn = slot.conn.insert(conn);
                match work(conn).await {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        if !matches!(e, MySqlError::Server { .. }) || e.is_gone() {
                            slot.conn = None;
                        }
                        Err(e)
                    }
                }
            }
            Err(e) => {
                let wait = if e.reason() == FailureReason::Timeout {
                    slot.timeouts = slot.timeouts.saturating_add(1);
                    let factor = 1u32 << slot.timeouts.saturating_sub(1).min(8);
                    retry_after
                        .max(timeout)
                        .saturating_mul(factor)
                        .min(MAX_TIMEOUT_BACKOFF)
                } else {
                    retry_after
                };
                slot.backoff = Some((Instant::now() + wait, e.clone()));
                Err(e)
            }
        }
    }

    /// The connection probe on the shared connection: `SELECT 1` (logging in first when
    /// needed), each step within `deadline`. A reused connection makes it a round trip, not
    /// a login; a reused connection found gone costs one more login (so at most twice
    /// `deadline` in all).
    pub async fn probe(&self, deadline: Duration, retry_after: Duration) -> ProbeOutcome {
        run_probe(deadline * 2 + Duration::from_millis(100), async {
            let rs = self
                .with(deadline, retry_after, |c| Box::pin(c.query("SELECT 1")))
                .await
                .map_err(split)?;
            check_select_one(&rs)?;
            let version = {
                let slot = self.slot.lock().await;
                slot.conn
                    .as_ref()
                    .map(|c| c.server_version().to_string())
                    .unwrap_or_default()
            };
            Ok(format!("{version}: SELECT 1 ok"))
        })
        .await
    }

    /// Closes the connection with `COM_QUIT` (within `timeout`), if one is open.
    pub async fn close(&self, timeout: Duration) {
        let conn = self.slot.lock().await.conn.take();
        if let Some(mut conn) = conn {
            conn.set_timeout(timeout);
            if let Err(e) = conn.close().await {
                tracing::debug!(endpoint = %self.login.endpoint, error = %e, "COM_QUIT failed");
            }
        }
    }
}

/// The shared MySQL connections of one exporter: at most one per (endpoint, user,
/// password), alive as long as some collector holds it.
#[derive(Debug, Default)]
pub struct Hub {
    conns: Mutex<HashMap<Login, Weak<SharedConn>>>,
}

impl Hub {
    /// A hub without connections.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// The shared connection for `login` (created when nobody holds one).
    pub fn get(&self, login: Login) -> Arc<SharedConn> {
        let mut map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = map.get(&login).and_then(Weak::upgrade) {
            return shared;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let shared = Arc::new(SharedConn::new(login.clone()));
        if map.len() < MAX_SHARED {
            map.insert(login, Arc::downgrade(&shared));
        }
        shared
    }

    /// Sends `COM_QUIT` on every open shared connection (at shutdown), each within `timeout`.
    pub async fn close_all(&self, timeout: Duration) {
        for shared in self.live() {
            shared.close(timeout).await;
        }
    }

    /// The shared connections some collector holds now. Holding them keeps them open after
    /// their users are gone (the supervisor's shutdown drops the tasks before `COM_QUIT`).
    pub fn live(&self) -> Vec<Arc<SharedConn>> {
        let map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(Weak::upgrade).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};
    use sha2::Sha256;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    const NATIVE_PASSWORD: &str = "mysql_native_password";
    const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

    #[test]
    fn server_codes_map_to_precise_reasons() {
        let server = |code: u16, message: &str| MySqlError::Server {
            code,
            sql_state: "HY000".into(),
            message: message.into(),
        };
        for (code, reason) in [
            (1045, FailureReason::Auth),
            (1698, FailureReason::Auth),
            (1130, FailureReason::Auth),
            (4151, FailureReason::Auth),
            (1044, FailureReason::Privilege),
            (1142, FailureReason::Privilege),
            (1227, FailureReason::Privilege),
            (1040, FailureReason::TooManyConnections),
            (1203, FailureReason::TooManyConnections),
            (1226, FailureReason::TooManyConnections),
            (1251, FailureReason::AuthPluginUnsupported),
            (1524, FailureReason::AuthPluginUnsupported),
            (3159, FailureReason::TlsRequired),
            (4036, FailureReason::Protocol), // MariaDB: ER_JSON_NOT_JSON_CHR
            (1129, FailureReason::Protocol),
            (1381, FailureReason::Protocol),
        ] {
            assert_eq!(server(code, "x").reason(), reason, "{code}");
        }
        assert_eq!(
            server(1045, "Connections using insecure transport are prohibited while --require_secure_transport=ON.").reason(),
            FailureReason::TlsRequired
        );
        let tls = MySqlError::TlsRequired {
            plain: server(1045, "Access denied").to_string(),
        };
        assert_eq!(tls.reason(), FailureReason::TlsRequired);
        assert!(
            tls.operator_detail().contains("requires TLS"),
            "{}",
            tls.operator_detail()
        );
        assert!(tls.operator_detail().contains("not a password problem"));
        assert_eq!(
            MySqlError::AuthPluginUnsupported("dialog".into()).reason(),
            FailureReason::AuthPluginUnsupported
        );
        assert!(server(2013, "lost").is_gone() && server(4031, "idle").is_gone());
        assert!(MySqlError::Io(io::ErrorKind::UnexpectedEof).is_gone());
        assert!(!server(1045, "x").is_gone());
        let backoff = MySqlError::Backoff {
            reason: FailureReason::Timeout,
            last: "no answer within 3000 ms".into(),
            retry_in_s: 20,
        };
        assert_eq!(backoff.reason(), FailureReason::Timeout);
        assert!(backoff.to_string().contains("not retried for another 20 s"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let password = "Tr0ub4dor&3-leak-check";
        let login = Login {
            endpoint: Endpoint::new("db", 3306),
            user: "u".into(),
            password: Secret::new(password),
        };
        let shared = SharedConn::new(login.clone());
        let hub = Hub::new();
        let _held = hub.get(login.clone());
        for text in [
            format!("{login:?}"),
            format!("{shared:?}"),
            format!("{hub:?}"),
        ] {
            assert!(!text.contains(password), "{text}");
        }
    }

    // ----- a scripted fake server ------------------------------------------------------

    const NONCE1: [u8; 20] = *b"abcdefghijklmnopqrst";
    const NONCE2: [u8; 20] = *b"ABCDEFGHIJKLMNOPQRST";

    const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
    const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
    const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
    const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
    const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
    const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
    const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
    const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;

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

    /// Splits a NUL-terminated string off the front of `b`.
    fn cstr(b: &mut &[u8]) -> Option<String> {
        let end = b.iter().position(|&c| c == 0)?;
        let s = String::from_utf8_lossy(&b[..end]).into_owned();
        *b = &b[end + 1..];
        Some(s)
    }

    /// An RSA key pair made with the `openssl` CLI, for `caching_sha2_password` full
    /// authentication; `None` (test skipped) without `openssl`.
    fn rsa_key(dir: &std::path::Path) -> Option<(std::path::PathBuf, Vec<u8>)> {
        let key = dir.join("key.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .output()
            .ok()?
            .status
            .success();
        if !ok {
            return None;
        }
        let public = std::process::Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&key)
            .output()
            .ok()?;
        public.status.success().then_some((key, public.stdout))
    }

    fn rsa_decrypt(key: &std::path::Path, data: &[u8]) -> Vec<u8> {
        let dir = key.parent().unwrap();
        let input = dir.join("enc.bin");
        std::fs::write(&input, data).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "pkeyutl",
                "-decrypt",
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-inkey",
            ])
            .arg(key)
            .arg("-in")
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// What the fake server saw from the client.
    #[derive(Debug, Default)]
    struct Seen {
        user: String,
        database: Option<String>,
        client_plugin: String,
        authenticated: bool,
        full_auth: bool,
        queries: Vec<String>,
        quit: bool,
    }

    #[derive(Clone)]
    struct FakeMySql {
        greeting_error: Option<(u16, &'static str)>,
        greeting_plugin: &'static str,
        switch_to: Option<&'static str>,
        password: &'static str,
        /// caching_sha2_password "perform full authentication" with this RSA key
        /// (private key file, public key PEM).
        sha2_full_auth: Option<(std::path::PathBuf, Vec<u8>)>,
        /// Connections served (each on a fresh accept).
        accepts: usize,
    }

    impl FakeMySql {
        fn new(greeting_plugin: &'static str, password: &'static str) -> Self {
            FakeMySql {
                greeting_error: None,
                greeting_plugin,
                switch_to: None,
                password,
                sha2_full_auth: None,
                accepts: 1,
            }
        }

        async fn start(self) -> (Endpoint, JoinHandle<Seen>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let task = tokio::spawn(async move {
                let mut seen = Seen::default();
                for _ in 0..self.accepts {
                    let Ok((mut s, _)) = listener.accept().await else {
                        return seen;
                    };
                    self.serve(&mut s, &mut seen).await;
                }
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
            let flags = u32::from_le_bytes(resp.get(..4)?.try_into().ok()?);
            assert_ne!(flags & CLIENT_PROTOCOL_41, 0);
            let mut c = resp.get(4 + 4 + 1 + 23..)?;
            seen.user = cstr(&mut c)?;
            assert_eq!(flags & CLIENT_PLUGIN_AUTH_LENENC, 0);
            let auth_len = *c.first()? as usize;
            let mut auth = c.get(1..1 + auth_len)?.to_vec();
            c = &c[1 + auth_len..];
            if flags & CLIENT_CONNECT_WITH_DB != 0 {
                seen.database = Some(cstr(&mut c)?);
            }
            seen.client_plugin = cstr(&mut c)?;
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
                if let Some((key, public)) = &self.sha2_full_auth {
                    // Not in the server's cache: "perform full authentication".
                    write_pkt(s, seq, &[0x01, 0x04]).await;
                    let (got, req) = read_pkt(s).await?;
                    assert_eq!(
                        (got, req.as_slice()),
                        (seq + 1, &[0x02u8][..]),
                        "public key request"
                    );
                    let mut p = vec![0x01];
                    p.extend_from_slice(public);
                    write_pkt(s, seq + 2, &p).await;
                    let (got, encrypted) = read_pkt(s).await?;
                    assert_eq!(got, seq + 3);
                    let plain = rsa_decrypt(key, &encrypted);
                    let password: Vec<u8> = plain
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ nonce[i % nonce.len()])
                        .collect();
                    let mut expected = self.password.as_bytes().to_vec();
                    expected.push(0);
                    if password != expected {
                        let mut p = vec![0xFF, 0x15, 0x04];
                        p.extend_from_slice(b"#28000Access denied (full auth)");
                        write_pkt(s, seq + 4, &p).await;
                        return None;
                    }
                    seen.full_auth = true;
                    seq += 4;
                } else {
                    write_pkt(s, seq, &[0x01, 0x03]).await;
                    seq += 1;
                }
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
        assert_eq!(out.detail, "MySQL 8.0.36: SELECT 1 ok");
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
        assert!(seen.authenticated && seen.quit && !seen.full_auth);
    }

    /// MySQL 8 after a restart / FLUSH PRIVILEGES: the account is not in the server's
    /// cache, the server asks for full authentication; without TLS the client fetches the
    /// server's RSA public key and sends the password RSA-OAEP encrypted (XOR the nonce).
    /// The fake decrypts it with the private key and checks it.
    #[tokio::test]
    async fn fake_caching_sha2_full_auth_with_rsa_key_retrieval() {
        let dir = tempfile::tempdir().unwrap();
        let Some(key) = rsa_key(dir.path()) else {
            eprintln!("SKIP: the openssl CLI is needed to make an RSA key");
            return;
        };
        let mut fake = FakeMySql::new(CACHING_SHA2_PASSWORD, "sha2-full-pw");
        fake.sha2_full_auth = Some(key);
        let (ep, task) = fake.start().await;
        let out = probe(&ep, "probe", &Secret::new("sha2-full-pw"), D).await;
        assert!(out.ok, "{out:?}");
        let seen = task.await.unwrap();
        assert!(
            seen.full_auth && seen.authenticated && seen.quit,
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn fake_auth_switch_to_native_like_mysql8() {
        let mut fake = FakeMySql::new(CACHING_SHA2_PASSWORD, "sw-pw");
        fake.switch_to = Some(NATIVE_PASSWORD);
        let (ep, task) = fake.start().await;
        let conn = MySqlConn::connect(&ep, "probe", &Secret::new("sw-pw"), D).await;
        let mut conn = conn.unwrap();
        assert_eq!(conn.server_version(), "MySQL 8.0.36");
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
        assert!(
            out.detail.contains("rejected the user or password"),
            "{}",
            out.detail
        );
        assert!(!out.detail.contains(password));
        assert!(!format!("{out:?}").contains(password));
    }

    #[tokio::test]
    async fn fake_unsupported_plugin() {
        let mut fake = FakeMySql::new(NATIVE_PASSWORD, "pw");
        fake.switch_to = Some("dialog");
        let (ep, _task) = fake.start().await;
        let out = probe(&ep, "probe", &Secret::new("pw"), D).await;
        assert_eq!(
            out.reason,
            Some(FailureReason::AuthPluginUnsupported),
            "{out:?}"
        );
        assert!(out.detail.contains("dialog"), "{}", out.detail);
    }

    #[tokio::test]
    async fn fake_refused_before_handshake() {
        for (code, msg, reason) in [
            (
                1040,
                "Too many connections",
                FailureReason::TooManyConnections,
            ),
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
    async fn unknown_host_is_dns() {
        let out = probe(
            &Endpoint::new("gx-no-such-host.invalid", 3306),
            "u",
            &Secret::default(),
            D,
        )
        .await;
        assert_eq!(out.reason, Some(FailureReason::Dns), "{out:?}");
    }

    /// A server that accepts TCP but never says anything: the probe times out within its
    /// deadline, and the shared connection then backs off instead of sending a new
    /// handshake each round.
    #[tokio::test]
    async fn silent_server_times_out_then_backs_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
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
        assert_eq!(out.reason, Some(FailureReason::Timeout), "{out:?}");
        assert!(start.elapsed() >= deadline);

        let shared = SharedConn::new(Login {
            endpoint: Endpoint::new("127.0.0.1", port),
            user: "u".into(),
            password: Secret::default(),
        });
        let first = shared.probe(deadline, Duration::from_secs(60)).await;
        assert_eq!(first.reason, Some(FailureReason::Timeout), "{first:?}");
        let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            let again = shared.probe(deadline, Duration::from_secs(60)).await;
            assert_eq!(again.reason, Some(FailureReason::Timeout), "{again:?}");
            assert!(again.detail.contains("not retried"), "{}", again.detail);
        }
        assert_eq!(shared.logins().await, 1);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), before);
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

    /// A caller cancelled half-way through a query (its collector's timeout) leaves the
    /// shared connection in an unknown state: the next caller gets a new login, not an error.
    #[tokio::test]
    async fn live_shared_conn_after_a_cancelled_query() {
        let Some(conn) = live_conn().await else {
            return;
        };
        conn.close().await.unwrap();
        let (endpoint, user, password) = live_params();
        let shared = SharedConn::new(Login {
            endpoint,
            user,
            password,
        });
        let retry = Duration::from_secs(10);
        assert!(shared.probe(D, retry).await.ok);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            shared.with(D, retry, |c| Box::pin(c.query("SELECT SLEEP(3)"))),
        )
        .await;
        assert!(cancelled.is_err(), "the query should have been cancelled");
        let after = shared.probe(D, retry).await;
        assert!(after.ok, "{after:?}");
        assert_eq!(shared.logins().await, 2);
        shared.close(D).await;
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
