//! A fake `mongod` for the tests (no MongoDB server can be installed here): OP_MSG over TCP
//! (or TLS), `hello`/`isMaster`, a SCRAM-SHA-1/256 login checked like mongod checks it, and
//! the few data commands the exporter and the gravity double use: `find` (with `sort`
//! `{$natural: ±1}`, `limit`, `projection` and an equality `filter`), `insert` and `update`
//! (`$set` or replacement, `upsert`), on a replica set's `local.oplog.rs` and on ordinary
//! collections. Misbehaving modes (garbage, bad BSON, hang, command errors) exercise the
//! exporter's client.
//!
//! BSON is MongoDB's own `bson` crate: an implementation independent of the exporter's
//! hand-written codec, so a shared misreading of the spec cannot hide. TLS uses the acceptor
//! of [`crate::tls`] and SCRAM the verifying server side of [`crate::scram`], both written
//! independently of the exporter's client.
//!
//! The oplog is a capped, growing list of entries with real BSON timestamps (seconds since
//! the epoch, ordinal within the second): seeded over [`OplogSpec::seed_span`], a no-op
//! entry every [`OplogSpec::tick`] (mongod writes a periodic no-op on replica sets), one
//! entry per written document, the oldest dropped past [`OplogSpec::cap`] entries.
//! [`FakeMongod::truncate_oplog_before`] drops the oldest entries at once, as a busy primary
//! rolling its capped oplog over would, so a lagging position falls out of the window.
//!
//! Authorization, as far as the tests need it: with users configured every command but
//! `hello`/`isMaster`/`saslStart`/`saslContinue` needs a login (`Unauthorized`, code 13);
//! reads are allowed to every user (but those of `local` to a user whose read role there was
//! taken with [`FakeMongod::set_can_read_local`]); writes only to a user with [`MongoUser::can_write`]
//! (else code 13, `not authorized on <db> to execute command`). A secondary (or a node made
//! unwritable with [`FakeMongod::set_writable`]) refuses writes with `NotWritablePrimary`
//! (code 10107).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use bson;
use bson::{doc, Bson, Document, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::scram::{ScramHash, ScramServer};
use gravity_exporter::probe::Endpoint;

/// `OP_MSG` opcode.
const OP_MSG: i32 = 2013;
/// Largest request read (mongod's own limit is 48 MB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
const MAX_RECORDED: usize = 1000;
/// `Unauthorized`.
pub const UNAUTHORIZED: i32 = 13;
/// `NotWritablePrimary` (called `NotMaster` before 4.4).
pub const NOT_WRITABLE_PRIMARY: i32 = 10107;

/// A user of a fake mongod with authentication on.
#[derive(Clone)]
pub struct MongoUser {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// The database holding the user.
    pub db: String,
    /// Mechanisms of its credentials (`createUser`'s `mechanisms`).
    pub mechanisms: Vec<ScramHash>,
    /// Whether its roles allow writes (`readWrite`); reads are allowed to every user.
    pub can_write: bool,
}

impl MongoUser {
    /// A read-only user with SCRAM-SHA-256 credentials in `admin`.
    pub fn reader(user: &str, password: &str) -> MongoUser {
        MongoUser {
            user: user.into(),
            password: password.into(),
            db: "admin".into(),
            mechanisms: vec![ScramHash::Sha256],
            can_write: false,
        }
    }

    /// A user allowed to write, SCRAM-SHA-256 credentials in `admin`.
    pub fn writer(user: &str, password: &str) -> MongoUser {
        MongoUser {
            can_write: true,
            ..MongoUser::reader(user, password)
        }
    }
}

impl std::fmt::Debug for MongoUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoUser")
            .field("user", &self.user)
            .field("db", &self.db)
            .field("can_write", &self.can_write)
            .finish_non_exhaustive()
    }
}

/// TLS (`net.tls.mode: requireTLS`) and authentication (`security.authorization`).
#[derive(Clone, Default)]
pub struct Security {
    /// Listen with TLS only.
    pub tls: Option<TlsAcceptor>,
    /// The users; empty: no authentication.
    pub users: Vec<MongoUser>,
}

impl Security {
    /// Authentication with these users, no TLS.
    pub fn users(users: Vec<MongoUser>) -> Security {
        Security { tls: None, users }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users)
            .finish()
    }
}

/// How the fake server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A writable primary of replica set `rs0` (no set name in `hello`: it looks standalone
    /// to the probe, and has an oplog all the same).
    Primary,
    /// A replica-set secondary of set `rs0`, with `$clusterTime` and friends.
    Secondary,
    /// `ok: 0` with this code and message.
    CommandError {
        /// Error code.
        code: i32,
        /// errmsg.
        message: String,
    },
    /// A pre-4.4.2 server: `hello` is CommandNotFound, `isMaster` works.
    LegacyOnly,
    /// Reads the request, answers with HTTP text, closes.
    Garbage,
    /// A well-framed OP_MSG whose BSON length points past the message.
    BadBson,
    /// Reads the request and never answers.
    Hang,
}

/// The shape of the fake oplog.
#[derive(Debug, Clone, Copy)]
pub struct OplogSpec {
    /// The seeded entries span this much time before the start (one per minute).
    pub seed_span: Duration,
    /// A no-op entry is appended this often.
    pub tick: Duration,
    /// Most entries kept (a capped collection: the oldest go first).
    pub cap: usize,
}

impl Default for OplogSpec {
    fn default() -> Self {
        OplogSpec {
            seed_span: Duration::from_secs(3600),
            tick: Duration::from_secs(1),
            cap: 100_000,
        }
    }
}

/// One oplog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OplogEntry {
    /// `ts`.
    pub ts: Timestamp,
    /// `op`: `n` (no-op), `i` (insert), `u` (update).
    pub op: String,
    /// `ns`: `db.collection` (empty for a no-op).
    pub ns: String,
    /// `o`: the document (insert), the update, or the no-op's message.
    pub o: Document,
    /// `o2`: the updated document's `_id`.
    pub o2: Option<Document>,
}

impl OplogEntry {
    fn to_doc(&self) -> Document {
        let mut d = doc! {
            "ts": self.ts,
            "t": 1_i64,
            "v": 2_i64,
            "op": self.op.clone(),
            "ns": self.ns.clone(),
            "wall": bson::DateTime::from_millis(i64::from(self.ts.time) * 1000),
            "o": self.o.clone(),
        };
        if let Some(o2) = &self.o2 {
            d.insert("o2", o2.clone());
        }
        d
    }
}

/// The data of a fake mongod, shared by its connections.
#[derive(Debug)]
struct World {
    oplog: VecDeque<OplogEntry>,
    cap: usize,
    last: Timestamp,
    collections: BTreeMap<String, Vec<Document>>,
    writable: bool,
    /// Users whose write role was revoked (`revokeRolesFromUser`).
    revoked: std::collections::BTreeSet<String>,
    /// Users without the read role on `local` (the oplog).
    no_local_read: std::collections::BTreeSet<String>,
}

impl World {
    fn new(spec: OplogSpec, now: u32) -> World {
        let mut w = World {
            oplog: VecDeque::new(),
            cap: spec.cap.max(1),
            last: Timestamp {
                time: 0,
                increment: 0,
            },
            collections: BTreeMap::new(),
            writable: true,
            revoked: std::collections::BTreeSet::new(),
            no_local_read: std::collections::BTreeSet::new(),
        };
        let span = u32::try_from(spec.seed_span.as_secs()).unwrap_or(u32::MAX);
        let mut t = now.saturating_sub(span);
        while t < now {
            w.push_at(t, "n", "", doc! {"msg": "periodic noop"}, None);
            t = t.saturating_add(60);
        }
        w
    }

    fn next_ts(&mut self, now: u32) -> Timestamp {
        self.last = if now > self.last.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last.time,
                increment: self.last.increment.saturating_add(1),
            }
        };
        self.last
    }

    fn push_at(&mut self, now: u32, op: &str, ns: &str, o: Document, o2: Option<Document>) {
        let ts = self.next_ts(now);
        self.oplog.push_back(OplogEntry {
            ts,
            op: op.into(),
            ns: ns.into(),
            o,
            o2,
        });
        while self.oplog.len() > self.cap {
            self.oplog.pop_front();
        }
    }

    fn push(&mut self, op: &str, ns: &str, o: Document, o2: Option<Document>) {
        self.push_at(unix_now(), op, ns, o, o2);
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn world(w: &Mutex<World>) -> MutexGuard<'_, World> {
    match w.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A running fake mongod on 127.0.0.1; stops (closing all connections) when dropped.
#[derive(Debug)]
pub struct FakeMongod {
    addr: SocketAddr,
    commands: Arc<Mutex<Vec<String>>>,
    world: Arc<Mutex<World>>,
    task: JoinHandle<()>,
    ticker: JoinHandle<()>,
}

impl FakeMongod {
    /// Binds 127.0.0.1:0 and starts serving in `mode` (plaintext, no authentication).
    pub async fn start(mode: Mode) -> io::Result<FakeMongod> {
        Self::start_secure(mode, Security::default()).await
    }

    /// Binds 127.0.0.1:0 and starts serving in `mode` behind `security`, with the default
    /// oplog.
    pub async fn start_secure(mode: Mode, security: Security) -> io::Result<FakeMongod> {
        Self::start_with(mode, security, OplogSpec::default()).await
    }

    /// Binds 127.0.0.1:0 and starts serving in `mode` behind `security`, with this oplog.
    pub async fn start_with(
        mode: Mode,
        security: Security,
        oplog: OplogSpec,
    ) -> io::Result<FakeMongod> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let commands = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Mutex::new(World::new(oplog, unix_now())));
        let recorded = Arc::clone(&commands);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let next_id = Arc::new(AtomicI32::new(1000));
            while let Ok((stream, _)) = listener.accept().await {
                let conn = Conn {
                    mode: mode.clone(),
                    users: security.users.clone(),
                    recorded: Arc::clone(&recorded),
                    next_id: Arc::clone(&next_id),
                    world: Arc::clone(&shared),
                };
                let tls = security.tls.clone();
                connections.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                conn.serve(tls).await;
                            }
                        }
                        None => {
                            // mongod without TLS closes a connection that starts with a TLS
                            // handshake record ("SSL handshake received but server is
                            // started without SSL support").
                            let mut first = [0u8; 2];
                            if matches!(stream.peek(&mut first).await, Ok(2) if first == [0x16, 0x03])
                            {
                                return;
                            }
                            conn.serve(stream).await
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        let ticking = Arc::clone(&state);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(oplog.tick.max(Duration::from_millis(10)));
            every.tick().await;
            loop {
                every.tick().await;
                world(&ticking).push("n", "", doc! {"msg": "periodic noop"}, None);
            }
        });
        Ok(FakeMongod {
            addr,
            commands,
            world: state,
            task,
            ticker,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening address as an [`Endpoint`].
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr.ip().to_string(), self.addr.port())
    }

    /// Names of the commands received so far (`hello`, `isMaster`, `find`, ...).
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The oldest and newest oplog timestamps.
    pub fn oplog_bounds(&self) -> Option<(Timestamp, Timestamp)> {
        let w = world(&self.world);
        Some((w.oplog.front()?.ts, w.oplog.back()?.ts))
    }

    /// The oplog entries, oldest first.
    pub fn oplog(&self) -> Vec<OplogEntry> {
        world(&self.world).oplog.iter().cloned().collect()
    }

    /// Drops every oplog entry older than `ts` (the capped collection rolled over); at
    /// least the newest entry stays.
    pub fn truncate_oplog_before(&self, ts: Timestamp) {
        let mut w = world(&self.world);
        while w.oplog.len() > 1 && w.oplog.front().is_some_and(|e| e.ts < ts) {
            w.oplog.pop_front();
        }
    }

    /// Appends a no-op entry now.
    pub fn append_noop(&self) -> Timestamp {
        let mut w = world(&self.world);
        w.push("n", "", doc! {"msg": "noop"}, None);
        w.last
    }

    /// Lets a primary take writes or refuse them with `NotWritablePrimary` (a step-down).
    pub fn set_writable(&self, writable: bool) {
        world(&self.world).writable = writable;
    }

    /// Revokes (`false`) or grants again the write role of `user`, for connections that log
    /// in from now on and those already logged in.
    pub fn set_can_write(&self, user: &str, can: bool) {
        let mut w = world(&self.world);
        if can {
            w.revoked.remove(user);
        } else {
            w.revoked.insert(user.to_string());
        }
    }

    /// Takes (`false`) or gives back the read role on `local` of `user`: without it, a
    /// `find` on `local` (the oplog) is refused with `Unauthorized`, as mongod does.
    pub fn set_can_read_local(&self, user: &str, can: bool) {
        let mut w = world(&self.world);
        if can {
            w.no_local_read.remove(user);
        } else {
            w.no_local_read.insert(user.to_string());
        }
    }

    /// The documents of collection `ns` (`db.collection`).
    pub fn documents(&self, ns: &str) -> Vec<Document> {
        world(&self.world)
            .collections
            .get(ns)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for FakeMongod {
    fn drop(&mut self) {
        self.task.abort();
        self.ticker.abort();
    }
}

/// gravity's data path for a Mongo source and a MySQL target, for the canary tests: it tails
/// the fake's oplog like gravity's `mongostream` input (from the newest entry at start, in
/// timestamp order), writes each inserted or updated document of collection `ns` into the
/// target table as gravity's MySQL output does (every top-level field into the column of
/// that name, `REPLACE` by primary key; `_id` included), and pins the gravity double's
/// `/status` watermark to its progress (`/_double/watermark`: EventTime = the seconds of
/// the last oplog entry taken in, ProcessTime = now), every 100 ms.
///
/// [`DataPath::pause`] stops the output only: the input goes on reading the oplog and the
/// watermark stays fresh, so gravity looks healthy while nothing arrives (silent loss).
/// A failed write leaves the entry to the next round.
#[derive(Debug)]
pub struct DataPath {
    paused: Arc<std::sync::atomic::AtomicBool>,
    written: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

/// Where [`DataPath`] writes.
#[derive(Debug, Clone)]
pub struct MysqlTarget {
    /// The target server.
    pub endpoint: Endpoint,
    /// A user allowed to write the target table.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Target schema and table (gravity's route for `ns`).
    pub schema: String,
    /// Target table.
    pub table: String,
}

impl DataPath {
    /// Starts tailing `mongod`'s oplog for `ns` into `target`, pinning the watermark of the
    /// gravity double listening on 127.0.0.1:`double_port`.
    pub fn start(mongod: &FakeMongod, ns: &str, target: MysqlTarget, double_port: u16) -> DataPath {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let paused = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let state = Arc::clone(&mongod.world);
        let ns = ns.to_string();
        let (p, w) = (Arc::clone(&paused), Arc::clone(&written));
        let task = tokio::spawn(async move {
            let mut after = world(&state).last;
            let mut conn = None;
            loop {
                let entries: Vec<(OplogEntry, Option<Document>)> = {
                    let w = world(&state);
                    w.oplog
                        .iter()
                        .filter(|e| e.ts > after)
                        .map(|e| {
                            let id = match &e.o2 {
                                Some(o2) => o2.get("_id").cloned(),
                                None => e.o.get("_id").cloned(),
                            };
                            let doc = (e.ns == ns).then_some(()).and(id).and_then(|id| {
                                w.collections
                                    .get(&ns)
                                    .and_then(|l| l.iter().find(|d| d.get("_id") == Some(&id)))
                                    .cloned()
                            });
                            (e.clone(), doc)
                        })
                        .collect()
                };
                for (entry, doc) in entries {
                    if let (Some(doc), false) = (doc, p.load(Ordering::Relaxed)) {
                        if conn.is_none() {
                            conn = gravity_exporter::probe::mysql::MySqlConn::connect(
                                &target.endpoint,
                                &target.user,
                                &gravity_exporter::redact::Secret::new(target.password.clone()),
                                Duration::from_secs(5),
                            )
                            .await
                            .ok();
                        }
                        let Some(c) = conn.as_mut() else { break };
                        if c.query(&replace_sql(&target.schema, &target.table, &doc))
                            .await
                            .is_err()
                        {
                            conn = None;
                            break;
                        }
                        w.fetch_add(1, Ordering::Relaxed);
                    }
                    after = entry.ts;
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                post(
                    double_port,
                    &format!(
                        "/_double/watermark?event={}&process={now}",
                        f64::from(after.time)
                    ),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        DataPath {
            paused,
            written,
            task,
        }
    }

    /// Stops (`true`) or resumes the output; the input and the watermark go on.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Rows written into the target so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// gravity's MySQL output of one Mongo document: `REPLACE INTO` with a column per top-level
/// field (strings and ObjectIds as text, numbers as numbers, booleans as 0/1).
pub fn replace_sql(schema: &str, table: &str, doc: &Document) -> String {
    use gravity_exporter::collector::consistency::{quote_ident, quote_literal};
    let cols: Vec<String> = doc.keys().map(|k| quote_ident(k)).collect();
    let vals: Vec<String> = doc
        .values()
        .map(|v| match v {
            Bson::Int32(i) => i.to_string(),
            Bson::Int64(i) => i.to_string(),
            Bson::Double(d) => d.to_string(),
            Bson::Boolean(b) => u8::from(*b).to_string(),
            Bson::Null => "NULL".into(),
            Bson::String(s) => quote_literal(s),
            Bson::ObjectId(o) => quote_literal(&o.to_hex()),
            other => quote_literal(&other.to_string()),
        })
        .collect();
    format!(
        "REPLACE INTO {}.{} ({}) VALUES ({})",
        quote_ident(schema),
        quote_ident(table),
        cols.join(", "),
        vals.join(", ")
    )
}

/// One `POST` to the gravity double's control API (errors ignored: the next round retries).
async fn post(port: u16, path_and_query: &str) {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!(
            "POST {path_and_query} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
}

/// A parsed OP_MSG request: request id and body, with document sequences (kind 1) added to
/// the body as arrays under their identifier, as mongod does.
fn parse_request(message: &[u8]) -> Option<(i32, Document)> {
    let le = |at: usize| -> Option<i32> {
        Some(i32::from_le_bytes(
            message.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let request_id = le(4)?;
    if le(12)? != OP_MSG {
        return None;
    }
    let flags = u32::from_le_bytes(message.get(16..20)?.try_into().ok()?);
    let end = if flags & 1 != 0 {
        message.len().checked_sub(4)?
    } else {
        message.len()
    };
    let mut rest = message.get(20..end)?;
    let mut body: Option<Document> = None;
    let mut sequences = Vec::new();
    while let Some((&kind, after)) = rest.split_first() {
        match kind {
            0 => {
                let len =
                    usize::try_from(i32::from_le_bytes(after.get(..4)?.try_into().ok()?)).ok()?;
                let raw = after.get(..len)?;
                body = Some(Document::from_reader(raw).ok()?);
                rest = after.get(len..)?;
            }
            1 => {
                let size =
                    usize::try_from(i32::from_le_bytes(after.get(..4)?.try_into().ok()?)).ok()?;
                let section = after.get(4..size)?;
                let nul = section.iter().position(|&b| b == 0)?;
                let id = String::from_utf8_lossy(&section[..nul]).into_owned();
                let mut docs = section.get(nul + 1..)?;
                let mut items = Vec::new();
                while !docs.is_empty() {
                    let len = usize::try_from(i32::from_le_bytes(docs.get(..4)?.try_into().ok()?))
                        .ok()?;
                    items.push(Bson::Document(
                        Document::from_reader(docs.get(..len)?).ok()?,
                    ));
                    docs = docs.get(len..)?;
                }
                sequences.push((id, items));
                rest = after.get(size..)?;
            }
            _ => return None,
        }
    }
    let mut body = body?;
    for (id, items) in sequences {
        body.insert(id, Bson::Array(items));
    }
    Some((request_id, body))
}

fn encode_reply(request_id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + 1 + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&OP_MSG.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let total = usize::try_from(i32::from_le_bytes(len))
        .ok()
        .filter(|n| (21..=MAX_MESSAGE).contains(n))?;
    let mut message = vec![0u8; total];
    message[..4].copy_from_slice(&len);
    stream.read_exact(&mut message[4..]).await.ok()?;
    Some(message)
}

fn bytes(d: &Document) -> Vec<u8> {
    d.to_vec().unwrap_or_default()
}

fn error_doc(code: i32, message: &str, code_name: &str) -> Document {
    doc! {"ok": 0.0, "errmsg": message, "code": code, "codeName": code_name}
}

/// The password bytes mongod derives SCRAM credentials from: SCRAM-SHA-1 the hex MD5 of
/// `user:mongo:password`, SCRAM-SHA-256 the SASLprep'd password.
fn scram_password(u: &MongoUser, hash: ScramHash) -> Option<Vec<u8>> {
    if hash == ScramHash::Sha1 {
        use md5::{Digest, Md5};
        let digest = Md5::digest(format!("{}:mongo:{}", u.user, u.password).as_bytes());
        Some(
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        )
    } else {
        stringprep::saslprep(&u.password)
            .ok()
            .map(|p| p.as_bytes().to_vec())
    }
}

struct Conn {
    mode: Mode,
    users: Vec<MongoUser>,
    recorded: Arc<Mutex<Vec<String>>>,
    next_id: Arc<AtomicI32>,
    world: Arc<Mutex<World>>,
}

/// Per-connection login state.
#[derive(Default)]
struct Session {
    user: Option<MongoUser>,
    conversation: Option<(ScramServer, MongoUser)>,
}

impl Conn {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, mut stream: S) {
        let mut session = Session::default();
        loop {
            let Some(message) = read_request(&mut stream).await else {
                return;
            };
            let Some((request_id, body)) = parse_request(&message) else {
                return;
            };
            // A command names itself with its first key and must carry $db.
            let Some(command) = body.keys().next().cloned() else {
                return;
            };
            let Ok(db) = body.get_str("$db").map(str::to_string) else {
                return;
            };
            if let Ok(mut c) = self.recorded.lock() {
                if c.len() < MAX_RECORDED {
                    c.push(command.clone());
                }
            }
            let reply = match &self.mode {
                Mode::Garbage => {
                    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nIt looks like you are trying to access MongoDB over HTTP on the native driver port.\r\n").await;
                    return;
                }
                Mode::Hang => {
                    std::future::pending::<()>().await;
                    return;
                }
                Mode::BadBson => {
                    let mut raw = bytes(&doc! {"ok": 1.0});
                    raw[0] = 0x7F; // length far beyond the message
                    raw
                }
                Mode::CommandError { .. } if !is_hello(&command) => bytes(&error_doc(
                    59,
                    &format!("no such command: '{command}'"),
                    "CommandNotFound",
                )),
                Mode::CommandError { code, message } => bytes(&error_doc(*code, message, "Error")),
                Mode::LegacyOnly if command == "hello" => bytes(&error_doc(
                    59,
                    "no such command: 'hello'",
                    "CommandNotFound",
                )),
                _ => bytes(&self.answer(&command, &db, &body, &mut session)),
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if stream
                .write_all(&encode_reply(id, request_id, &reply))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    fn secondary(&self) -> bool {
        self.mode == Mode::Secondary
    }

    fn answer(&self, command: &str, db: &str, body: &Document, s: &mut Session) -> Document {
        if is_hello(command) {
            let mechs = body.get_str("saslSupportedMechs").ok().and_then(|n| {
                self.users
                    .iter()
                    .find(|u| format!("{}.{}", u.db, u.user) == n)
                    .map(|u| {
                        u.mechanisms
                            .iter()
                            .map(|m| m.mechanism())
                            .collect::<Vec<_>>()
                    })
            });
            return hello_doc(command == "hello", self.secondary(), mechs.as_deref());
        }
        if command == "saslStart" || command == "saslContinue" {
            if self.users.is_empty() {
                return error_doc(
                    18,
                    "Authentication failed: authentication is off",
                    "AuthenticationFailed",
                );
            }
            return self.sasl_step(body, command, db, s);
        }
        if !self.users.is_empty() && s.user.is_none() {
            return error_doc(
                UNAUTHORIZED,
                &format!("command {command} requires authentication"),
                "Unauthorized",
            );
        }
        match command {
            "find"
                if db == "local"
                    && s.user
                        .as_ref()
                        .is_some_and(|u| world(&self.world).no_local_read.contains(&u.user)) =>
            {
                error_doc(
                    UNAUTHORIZED,
                    &format!(
                        "not authorized on local to execute command {{ find: \"{}\" }}",
                        body.get_str("find").unwrap_or("")
                    ),
                    "Unauthorized",
                )
            }
            "find" => self.find(db, body),
            "insert" | "update" => {
                let user_may = self.users.is_empty()
                    || s.user.as_ref().is_some_and(|u| {
                        u.can_write && !world(&self.world).revoked.contains(&u.user)
                    });
                if !user_may {
                    return error_doc(
                        UNAUTHORIZED,
                        &format!(
                            "not authorized on {db} to execute command {{ {command}: \"{}\" }}",
                            body.get_str(command).unwrap_or("")
                        ),
                        "Unauthorized",
                    );
                }
                if self.secondary() || !world(&self.world).writable {
                    return error_doc(NOT_WRITABLE_PRIMARY, "not primary", "NotWritablePrimary");
                }
                if command == "insert" {
                    self.insert(db, body)
                } else {
                    self.update(db, body)
                }
            }
            _ => error_doc(
                59,
                &format!("no such command: '{command}'"),
                "CommandNotFound",
            ),
        }
    }

    fn find(&self, db: &str, body: &Document) -> Document {
        let Ok(coll) = body.get_str("find") else {
            return error_doc(2, "find needs a collection name", "BadValue");
        };
        let ns = format!("{db}.{coll}");
        let filter = body.get_document("filter").cloned().unwrap_or_default();
        let projection = body.get_document("projection").ok().cloned();
        let limit = body
            .get("limit")
            .and_then(bson_i64)
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(101);
        let backwards = body
            .get_document("sort")
            .ok()
            .and_then(|s| s.get("$natural"))
            .and_then(bson_i64)
            .is_some_and(|d| d < 0);
        let w = world(&self.world);
        let all: Vec<Document> = if ns == "local.oplog.rs" {
            w.oplog.iter().map(OplogEntry::to_doc).collect()
        } else {
            w.collections.get(&ns).cloned().unwrap_or_default()
        };
        drop(w);
        let mut hits: Vec<Document> = all.into_iter().filter(|d| matches(d, &filter)).collect();
        if backwards {
            hits.reverse();
        }
        let batch: Vec<Bson> = hits
            .into_iter()
            .take(limit)
            .map(|d| Bson::Document(project(d, projection.as_ref())))
            .collect();
        doc! {"cursor": {"firstBatch": batch, "id": 0_i64, "ns": ns}, "ok": 1.0}
    }

    fn insert(&self, db: &str, body: &Document) -> Document {
        let (Ok(coll), Ok(docs)) = (body.get_str("insert"), body.get_array("documents")) else {
            return error_doc(2, "insert needs documents", "BadValue");
        };
        let ns = format!("{db}.{coll}");
        let mut w = world(&self.world);
        let mut n = 0;
        let mut write_errors = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            let Bson::Document(d) = d else { continue };
            let mut d = d.clone();
            if !d.contains_key("_id") {
                d.insert("_id", bson::oid::ObjectId::new());
            }
            let id = d.get("_id").cloned();
            let list = w.collections.entry(ns.clone()).or_default();
            if list.iter().any(|e| e.get("_id") == id.as_ref()) {
                write_errors.push(Bson::Document(doc! {
                    "index": i32::try_from(i).unwrap_or(i32::MAX),
                    "code": 11000,
                    "errmsg": format!("E11000 duplicate key error collection: {ns} index: _id_"),
                }));
                continue;
            }
            list.push(d.clone());
            w.push("i", &ns, d, None);
            n += 1;
        }
        let mut reply = doc! {"n": n};
        if !write_errors.is_empty() {
            reply.insert("writeErrors", write_errors);
        }
        reply.insert("ok", 1.0);
        reply
    }

    fn update(&self, db: &str, body: &Document) -> Document {
        let (Ok(coll), Ok(updates)) = (body.get_str("update"), body.get_array("updates")) else {
            return error_doc(2, "update needs updates", "BadValue");
        };
        let ns = format!("{db}.{coll}");
        let mut w = world(&self.world);
        let (mut n, mut modified) = (0_i32, 0_i32);
        let mut upserted = Vec::new();
        for (i, u) in updates.iter().enumerate() {
            let Bson::Document(u) = u else { continue };
            let q = u.get_document("q").cloned().unwrap_or_default();
            let Ok(change) = u.get_document("u") else {
                continue;
            };
            let upsert = u.get_bool("upsert").unwrap_or(false);
            let set = change.get_document("$set").ok().cloned();
            let list = w.collections.entry(ns.clone()).or_default();
            let found = list.iter_mut().find(|d| matches(d, &q));
            let (doc, id) = match found {
                Some(d) => {
                    match &set {
                        Some(set) => {
                            for (k, v) in set {
                                d.insert(k.clone(), v.clone());
                            }
                        }
                        None => {
                            let id = d.get("_id").cloned();
                            *d = change.clone();
                            if let Some(id) = id {
                                d.insert("_id", id);
                            }
                        }
                    }
                    n += 1;
                    modified += 1;
                    (d.clone(), None)
                }
                None if upsert => {
                    let mut d = q.clone();
                    match &set {
                        Some(set) => {
                            for (k, v) in set {
                                d.insert(k.clone(), v.clone());
                            }
                        }
                        None => {
                            for (k, v) in change {
                                d.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    if !d.contains_key("_id") {
                        d.insert("_id", bson::oid::ObjectId::new());
                    }
                    list.push(d.clone());
                    n += 1;
                    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                    (d, Some(id))
                }
                None => continue,
            };
            let key = doc! {"_id": doc.get("_id").cloned().unwrap_or(Bson::Null)};
            match id {
                Some(id) => {
                    upserted.push(Bson::Document(
                        doc! {"index": i32::try_from(i).unwrap_or(i32::MAX), "_id": id},
                    ));
                    w.push("i", &ns, doc, None);
                }
                None => {
                    let o = match &set {
                        Some(set) => doc! {"$v": 2, "diff": {"u": set.clone()}},
                        None => doc,
                    };
                    w.push("u", &ns, o, Some(key));
                }
            }
        }
        let mut reply = doc! {"n": n, "nModified": modified};
        if !upserted.is_empty() {
            reply.insert("upserted", upserted);
        }
        reply.insert("ok", 1.0);
        reply
    }

    /// One step of mongod's SCRAM conversation.
    fn sasl_step(&self, body: &Document, command: &str, db: &str, s: &mut Session) -> Document {
        let failed = || error_doc(18, "Authentication failed.", "AuthenticationFailed");
        let Ok(payload) = body.get_binary_generic("payload").cloned() else {
            return failed();
        };
        if command == "saslStart" {
            let mechanism = body.get_str("mechanism").unwrap_or("").to_string();
            // The user comes from the client's first message ("n,,n=user,r=...").
            let name = std::str::from_utf8(&payload)
                .ok()
                .and_then(|t| t.strip_prefix("n,,n="))
                .and_then(|t| t.split(',').next())
                .map(|n| n.replace("=2C", ",").replace("=3D", "="));
            let Some(u) = self
                .users
                .iter()
                .find(|u| Some(&u.user) == name.as_ref() && u.db == db)
            else {
                return failed();
            };
            let Some(hash) = u
                .mechanisms
                .iter()
                .copied()
                .find(|h| h.mechanism() == mechanism)
            else {
                return error_doc(334, &format!("Unable to use {mechanism} based authentication for user without any {mechanism} credentials registered"), "MechanismUnavailable");
            };
            let Some(password) = scram_password(u, hash) else {
                return failed();
            };
            match ScramServer::start(hash, &password, b"fake-mongod-salt", 4096, &payload) {
                Ok((server, first)) if server.user() == u.user => {
                    s.conversation = Some((server, u.clone()));
                    doc! {
                        "conversationId": 1,
                        "done": false,
                        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: first.into_bytes() },
                        "ok": 1.0,
                    }
                }
                _ => failed(),
            }
        } else {
            let Some((server, user)) = s.conversation.take() else {
                return failed();
            };
            match server.finish(&payload) {
                Ok(last) => {
                    s.user = Some(user);
                    doc! {
                        "conversationId": 1,
                        "done": true,
                        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: last.into_bytes() },
                        "ok": 1.0,
                    }
                }
                Err(_) => failed(),
            }
        }
    }
}

fn is_hello(command: &str) -> bool {
    command == "hello" || command.eq_ignore_ascii_case("ismaster")
}

fn bson_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// Equality on every top-level field of `filter` (numbers compared by value).
fn matches(d: &Document, filter: &Document) -> bool {
    filter.iter().all(|(k, want)| match (d.get(k), want) {
        (Some(have), want) if have == want => true,
        (Some(have), want) => bson_i64(have).is_some() && bson_i64(have) == bson_i64(want),
        (None, _) => false,
    })
}

/// An inclusion projection (`{ts: 1}`): the listed fields, `_id` unless excluded.
fn project(d: Document, projection: Option<&Document>) -> Document {
    let Some(p) = projection.filter(|p| !p.is_empty()) else {
        return d;
    };
    let keep_id = !matches!(p.get("_id").and_then(bson_i64), Some(0));
    d.into_iter()
        .filter(|(k, _)| {
            (k == "_id" && keep_id)
                || p.get(k).is_some_and(|v| {
                    bson_i64(v).is_some_and(|n| n != 0) || v == &Bson::Boolean(true)
                })
        })
        .collect()
}

/// A `hello` reply shaped like mongod 6.0's, with `saslSupportedMechs` when the request
/// asked about a known user.
fn hello_doc(modern: bool, secondary: bool, mechs: Option<&[&str]>) -> Document {
    let writable_key = if modern {
        "isWritablePrimary"
    } else {
        "ismaster"
    };
    let mut b = doc! {
        "topologyVersion": {
            "processId": bson::oid::ObjectId::from_bytes(*b"\x65\x1a\x2b\x3c\x4d\x5e\x6f\x70\x81\x92\xa3\xb4"),
            "counter": 6_i64,
        },
    };
    if secondary {
        b.insert(
            "hosts",
            vec!["mongo-a:27017", "mongo-b:27017", "mongo-c:27017"],
        );
        b.insert("setName", "rs0");
        b.insert("setVersion", 3);
        b.insert(writable_key, false);
        b.insert("secondary", true);
        b.insert("primary", "mongo-a:27017");
        b.insert("me", "mongo-b:27017");
    } else {
        b.insert(writable_key, true);
    }
    b.insert("maxBsonObjectSize", 16_777_216);
    b.insert("maxMessageSizeBytes", 48_000_000);
    b.insert("maxWriteBatchSize", 100_000);
    b.insert("localTime", bson::DateTime::from_millis(1_700_000_000_000));
    b.insert("logicalSessionTimeoutMinutes", 30);
    b.insert("connectionId", 17);
    b.insert("minWireVersion", 0);
    b.insert("maxWireVersion", 17);
    b.insert("readOnly", false);
    if let Some(m) = mechs {
        b.insert("saslSupportedMechs", m.to_vec());
    }
    if secondary {
        let t = Timestamp {
            time: 1_700_000_000,
            increment: 1,
        };
        b.insert(
            "$clusterTime",
            doc! {
                "clusterTime": t,
                "signature": {
                    "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] },
                    "keyId": 0_i64,
                },
            },
        );
        b.insert("operationTime", t);
    }
    b.insert("ok", 1.0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_oplog_spans_the_seed_and_is_capped() {
        let w = World::new(
            OplogSpec {
                seed_span: Duration::from_secs(600),
                tick: Duration::from_secs(1),
                cap: 5,
            },
            1_700_000_000,
        );
        assert_eq!(w.oplog.len(), 5);
        let mut w = World::new(OplogSpec::default(), 1_700_000_000);
        assert_eq!(
            w.oplog.front().map(|e| e.ts.time),
            Some(1_700_000_000 - 3600)
        );
        w.push_at(1_700_000_000, "n", "", Document::new(), None);
        w.push_at(1_700_000_000, "n", "", Document::new(), None);
        let last: Vec<_> = w.oplog.iter().rev().take(2).map(|e| e.ts).collect();
        assert_eq!(
            last,
            [
                Timestamp {
                    time: 1_700_000_000,
                    increment: 2
                },
                Timestamp {
                    time: 1_700_000_000,
                    increment: 1
                }
            ]
        );
    }

    #[test]
    fn a_document_becomes_a_replace_of_its_fields() {
        let d = doc! {"_id": "p1", "pipeline": "p1", "seq": 7_i64, "trace_id": "ab'c", "ok": true};
        assert_eq!(
            replace_sql("gravity_canary", "heartbeat", &d),
            "REPLACE INTO `gravity_canary`.`heartbeat` (`_id`, `pipeline`, `seq`, `trace_id`, `ok`) VALUES ('p1', 'p1', 7, 'ab''c', 1)"
        );
    }

    #[test]
    fn projection_and_filter() {
        let d = doc! {"_id": "p", "seq": 3_i64, "x": 1};
        assert!(matches(&d, &doc! {"_id": "p", "seq": 3}));
        assert!(!matches(&d, &doc! {"_id": "q"}));
        assert_eq!(
            project(d.clone(), Some(&doc! {"seq": 1, "_id": 0})),
            doc! {"seq": 3_i64}
        );
        assert_eq!(project(d, Some(&doc! {"x": 1})), doc! {"_id": "p", "x": 1});
    }
}
