//! MongoDB probe: one `hello` command over `OP_MSG`.
//!
//! `hello` (called `isMaster` before MongoDB 4.4.2 / 4.2.10 / 4.0.21 / 3.6.21) needs no
//! authentication and is what drivers use to discover a server. A reply with `ok: 1`
//! proves `mongod`/`mongos` is up; `isWritablePrimary` (or legacy `ismaster`) and
//! `secondary` tell the replica-set role. When a server answers `hello` with
//! CommandNotFound (code 59) the probe retries with `isMaster` on the same connection.
//! Servers older than 3.6 (no `OP_MSG`) are not supported.
//!
//! Wire format (MongoDB Wire Protocol, <https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/>),
//! all integers little-endian:
//!
//! ```text
//! MsgHeader => messageLength:int32 requestID:int32 responseTo:int32 opCode:int32 (2013 = OP_MSG)
//! OP_MSG    => flagBits:uint32 sections... [checksum:uint32 if flagBits bit 0]
//!   section kind 0 => 0x00 BSON-document           (the command body, exactly one)
//!   section kind 1 => 0x01 size:int32 identifier:cstring BSON-document*  (skipped)
//! ```
//!
//! The request body is `{hello: 1, $db: "admin"}`. BSON (<https://bsonspec.org/spec.html>)
//! is encoded and decoded by the small bounds-checked codec in this file: the decoder reads
//! the top-level elements of a document and skips every other standard type, including
//! embedded documents and arrays, without recursing.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scram::{self, ScramClient, ScramHash};
use super::{connect_tcp, run_probe, sanitize, Endpoint, ProbeOutcome, Secret, WireError};
use crate::tls::{self, TlsOptions};

/// `OP_MSG` opcode.
pub const OP_MSG: i32 = 2013;
/// Largest reply accepted (a `hello` reply is around 1 KiB; servers allow 48 MB messages).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

const HEADER_LEN: usize = 16;
const FLAG_CHECKSUM_PRESENT: u32 = 1;
/// flagBits 0-15 are "required": a parser must reject unknown ones. Known: 0 and 1.
const UNKNOWN_REQUIRED_FLAGS: u32 = 0x0000_FFFC;
const COMMAND_NOT_FOUND: i32 = 59;

static NEXT_REQUEST_ID: AtomicI32 = AtomicI32::new(1);

/// What a successful `hello` reply says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// `isWritablePrimary` (or `ismaster`): a standalone, a primary or a mongos.
    pub is_writable_primary: bool,
    /// `secondary`: a replica-set secondary.
    pub secondary: bool,
    /// `setName`: the replica set's name, if any.
    pub set_name: Option<String>,
    /// `maxWireVersion`, if present.
    pub max_wire_version: Option<i32>,
    /// `msg: "isdbgrid"`: the server is a mongos router.
    pub is_mongos: bool,
    /// Whether the legacy `isMaster` command had to be used.
    pub legacy: bool,
    /// `saslSupportedMechs`: the SCRAM mechanisms of the user named in the request (absent
    /// when the user does not exist or was not asked about).
    pub sasl_supported_mechs: Option<Vec<String>>,
}

/// The login gravity uses (`username`, `password`, the auth database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoLogin {
    /// User name.
    pub user: String,
    /// Password (never printed).
    pub password: Secret,
    /// The database holding the user (`admin` unless gravity's config names one).
    pub auth_source: String,
}

/// How the probe connects: TLS and a SCRAM login when gravity's config has them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MongoSecurity {
    /// TLS before anything else.
    pub tls: Option<TlsOptions>,
    /// SCRAM login after `hello`.
    pub login: Option<MongoLogin>,
}

/// What the probe says when a plaintext request is answered with a TLS alert.
const TLS_REQUIRED: &str = "the server speaks TLS only, gravity's config has no TLS for it";

impl From<bson::BsonError> for WireError {
    fn from(e: bson::BsonError) -> Self {
        WireError::Protocol(e.to_string())
    }
}

/// Runs `hello` (falling back to `isMaster`) against `endpoint` within `deadline`
/// (plaintext, no login).
pub async fn hello(endpoint: &Endpoint, deadline: Duration) -> Result<HelloReply, WireError> {
    let work = async {
        let mut stream = connect_tcp(endpoint, deadline).await?;
        hello_on(&mut stream, None).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(WireError::Timeout {
            after_ms: deadline.as_millis(),
        }),
    }
}

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The `hello` reply.
    pub hello: HelloReply,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The SCRAM mechanism of the login, when there was one.
    pub mechanism: Option<&'static str>,
}

/// Connects like gravity (TLS and login per `security`), runs `hello` and the SCRAM login,
/// then `then` on the same connection (with the `hello` reply), all within `deadline`.
pub async fn check_then<T, F>(
    endpoint: &Endpoint,
    security: &MongoSecurity,
    deadline: Duration,
    then: F,
) -> Result<(CheckReport, T), WireError>
where
    F: for<'a> FnOnce(
        HelloReply,
        &'a mut (dyn Duplex + 'a),
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, WireError>> + Send + 'a>,
    >,
{
    let work = async {
        let tcp = connect_tcp(endpoint, deadline).await?;
        match &security.tls {
            Some(opts) => {
                let config = tls::client_config_async(opts).await?;
                let mut stream = tls::connect(tcp, &endpoint.host, config).await?;
                let (hello, mechanism) = session(&mut stream, security.login.as_ref()).await?;
                let extra = then(hello.clone(), &mut stream).await?;
                Ok((
                    CheckReport {
                        hello,
                        tls: true,
                        mechanism,
                    },
                    extra,
                ))
            }
            None => {
                let mut stream = tcp;
                let (hello, mechanism) = session(&mut stream, security.login.as_ref()).await?;
                let extra = then(hello.clone(), &mut stream).await?;
                Ok((
                    CheckReport {
                        hello,
                        tls: false,
                        mechanism,
                    },
                    extra,
                ))
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(WireError::Timeout {
            after_ms: deadline.as_millis(),
        }),
    }
}

/// A byte stream the probe talks over (TCP or TLS).
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// [`check_then`] with nothing after the login.
pub async fn check(
    endpoint: &Endpoint,
    security: &MongoSecurity,
    deadline: Duration,
) -> Result<CheckReport, WireError> {
    check_then(endpoint, security, deadline, |_, _| {
        Box::pin(async { Ok(()) })
    })
    .await
    .map(|(report, ())| report)
}

/// Probes a MongoDB server with `hello` within `deadline` (plaintext, no login). Any
/// `ok: 1` reply is a success; the role goes into `detail`.
pub async fn probe(endpoint: &Endpoint, deadline: Duration) -> ProbeOutcome {
    probe_with(endpoint, &MongoSecurity::default(), deadline).await
}

/// Probes a MongoDB server as gravity connects (`security`): TLS, `hello`, SCRAM login.
pub async fn probe_with(
    endpoint: &Endpoint,
    security: &MongoSecurity,
    deadline: Duration,
) -> ProbeOutcome {
    run_probe(deadline, async {
        match check(endpoint, security, deadline).await {
            Ok(report) => Ok(describe_report(&report, security)),
            Err(e) => Err((e.reason(), e.to_string())),
        }
    })
    .await
}

fn describe_report(report: &CheckReport, security: &MongoSecurity) -> String {
    let mut detail = describe(&report.hello);
    if report.tls {
        detail.push_str(", TLS");
    }
    if let (Some(m), Some(login)) = (report.mechanism, &security.login) {
        detail.push_str(&format!(", {m} login of {} ok", sanitize(&login.user, 64)));
    }
    detail
}

/// `hello` (or `isMaster`), then the SCRAM login when configured.
async fn session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: &mut S,
    login: Option<&MongoLogin>,
) -> Result<(HelloReply, Option<&'static str>), WireError> {
    let hello = hello_on(stream, login).await?;
    let Some(login) = login else {
        return Ok((hello, None));
    };
    // Drivers' rule (MongoDB auth spec): SCRAM-SHA-256 when the server lists it for the
    // user, else SCRAM-SHA-1.
    let hash = match &hello.sasl_supported_mechs {
        Some(m) if m.iter().any(|m| m == "SCRAM-SHA-256") => ScramHash::Sha256,
        _ => ScramHash::Sha1,
    };
    authenticate(stream, login, hash).await?;
    Ok((hello, Some(hash.mechanism())))
}

async fn hello_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    login: Option<&MongoLogin>,
) -> Result<HelloReply, WireError> {
    match command(stream, "hello", login).await {
        Err(WireError::Command {
            code: COMMAND_NOT_FOUND,
            ..
        }) => {
            let mut reply = command(stream, "isMaster", login).await?;
            reply.legacy = true;
            Ok(reply)
        }
        other => other,
    }
}

/// The password bytes SCRAM uses: MongoDB's SCRAM-SHA-1 takes the hex MD5 of
/// `user:mongo:password` (the legacy MONGODB-CR digest), SCRAM-SHA-256 the SASLprep'd
/// password (RFC 4013).
fn prepared_password(login: &MongoLogin, hash: ScramHash) -> Result<Vec<u8>, WireError> {
    match hash {
        ScramHash::Sha1 => {
            use md5::{Digest, Md5};
            let mut h = Md5::new();
            h.update(login.user.as_bytes());
            h.update(b":mongo:");
            h.update(login.password.expose().as_bytes());
            let digest = h.finalize();
            Ok(digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes())
        }
        _ => stringprep::saslprep(login.password.expose())
            .map(|p| p.as_bytes().to_vec())
            .map_err(|_| WireError::PasswordPrep),
    }
}

/// `saslStart` / `saslContinue` (MongoDB auth spec, SCRAM conversation).
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: &mut S,
    login: &MongoLogin,
    hash: ScramHash,
) -> Result<(), WireError> {
    let password = prepared_password(login, hash)?;
    let client = ScramClient::new(hash, &login.user, &password, &scram::new_nonce()?);
    drop(password);
    let mut options = bson::DocBuilder::new();
    options.bool("skipEmptyExchange", true);
    let mut start = bson::DocBuilder::new();
    start
        .int32("saslStart", 1)
        .string("mechanism", hash.mechanism())
        .binary("payload", 0, client.client_first().as_bytes())
        .int32("autoAuthorize", 1)
        .document("options", &options.finish())
        .string("$db", &login.auth_source);
    let reply = run_command(stream, &start.finish()).await?;
    let (conversation_id, done, server_first) = sasl_reply(&reply)?;
    if done {
        return Err(WireError::Protocol(
            "saslStart ended the conversation early".to_string(),
        ));
    }
    let (client_final, signature) =
        tokio::task::spawn_blocking(move || client.client_final(&server_first))
            .await
            .map_err(|e| WireError::Protocol(format!("SCRAM task failed: {e}")))??;
    let mut cont = bson::DocBuilder::new();
    cont.int32("saslContinue", 1)
        .int32("conversationId", conversation_id)
        .binary("payload", 0, client_final.as_bytes())
        .string("$db", &login.auth_source);
    let reply = run_command(stream, &cont.finish()).await?;
    let (_, mut done, server_final) = sasl_reply(&reply)?;
    scram::check_server_final(&server_final, &signature)?;
    // A server that ignores skipEmptyExchange wants one more empty round.
    if !done {
        let mut last = bson::DocBuilder::new();
        last.int32("saslContinue", 1)
            .int32("conversationId", conversation_id)
            .binary("payload", 0, b"")
            .string("$db", &login.auth_source);
        let reply = run_command(stream, &last.finish()).await?;
        done = sasl_reply(&reply)?.1;
    }
    if !done {
        return Err(WireError::Protocol(
            "SCRAM conversation did not end".to_string(),
        ));
    }
    Ok(())
}

/// `conversationId`, `done` and `payload` of a saslStart/saslContinue reply.
fn sasl_reply(body: &[u8]) -> Result<(i32, bool, Vec<u8>), WireError> {
    use bson::Value;
    let doc = bson::Document::parse(body)?;
    command_ok(&doc)?;
    let id = match doc.get("conversationId")? {
        Some(Value::Int32(i)) => i,
        Some(Value::Int64(i)) => i32::try_from(i)
            .map_err(|_| WireError::Protocol("conversationId out of range".to_string()))?,
        _ => {
            return Err(WireError::Protocol(
                "SASL reply without conversationId".to_string(),
            ))
        }
    };
    let done = matches!(doc.get("done")?, Some(Value::Bool(true)));
    let payload = match doc.get("payload")? {
        Some(Value::Binary(_, data)) => data.to_vec(),
        Some(Value::String(s)) => s.to_vec(),
        _ => {
            return Err(WireError::Protocol(
                "SASL reply without payload".to_string(),
            ))
        }
    };
    Ok((id, done, payload))
}

/// `Err(Command)` unless the reply says `ok: 1`.
fn command_ok(doc: &bson::Document<'_>) -> Result<(), WireError> {
    use bson::Value;
    let ok = match doc.get("ok")? {
        Some(Value::Double(d)) => d == 1.0,
        Some(Value::Int32(i)) => i == 1,
        Some(Value::Int64(i)) => i == 1,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(WireError::Protocol("non-numeric ok field".to_string())),
        None => return Err(WireError::Protocol("reply without ok field".to_string())),
    };
    if ok {
        return Ok(());
    }
    let text = |v: Option<Value<'_>>, max: usize| match v {
        Some(Value::String(s)) => Some(sanitize(&String::from_utf8_lossy(s), max)),
        _ => None,
    };
    let code = match doc.get("code")? {
        Some(Value::Int32(c)) => c,
        Some(Value::Int64(c)) => i32::try_from(c).unwrap_or(0),
        Some(Value::Double(c)) if c.fract() == 0.0 && c.abs() < 1e9 => c as i32,
        _ => 0,
    };
    Err(WireError::Command {
        code,
        code_name: text(doc.get("codeName")?, 64).unwrap_or_default(),
        message: text(doc.get("errmsg")?, 200).unwrap_or_default(),
    })
}

/// Sends one command document and returns the reply's body document.
pub(crate) async fn run_command<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    doc: &[u8],
) -> Result<Vec<u8>, WireError> {
    let request_id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    stream.write_all(&encode_op_msg(request_id, 0, doc)).await?;
    stream.flush().await?;
    let message = read_message(stream).await?;
    let msg = parse_op_msg(&message)?;
    if msg.response_to != request_id {
        return Err(WireError::Protocol(format!(
            "responseTo {} does not match request {request_id}",
            msg.response_to
        )));
    }
    Ok(msg.body.to_vec())
}

/// The oldest and newest entry of a replica set's oplog (`local.oplog.rs`), as BSON
/// timestamps (`seconds << 32 | ordinal`, the form of gravity's Mongo position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogBounds {
    /// `ts` of the oldest entry still in the capped collection.
    pub oldest: u64,
    /// `ts` of the newest entry.
    pub newest: u64,
}

/// `ts` of the first entry of `local.oplog.rs` in natural order (`direction` 1: the
/// oldest, −1: the newest); `None` when the collection is empty or missing (a standalone
/// server has no oplog).
async fn oplog_edge<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    direction: i32,
) -> Result<Option<u64>, WireError> {
    let mut sort = bson::DocBuilder::new();
    sort.int32("$natural", direction);
    let mut projection = bson::DocBuilder::new();
    projection.int32("ts", 1).int32("_id", 0);
    let mut find = bson::DocBuilder::new();
    find.string("find", "oplog.rs")
        .document("filter", &bson::DocBuilder::new().finish())
        .document("sort", &sort.finish())
        .document("projection", &projection.finish())
        .int32("limit", 1)
        .bool("singleBatch", true)
        .string("$db", "local");
    let reply = run_command(stream, &find.finish()).await?;
    let Some(first) = first_in_batch(&reply)? else {
        return Ok(None);
    };
    match bson::Document::parse(&first)?.get("ts")? {
        Some(bson::Value::Timestamp(ts)) => Ok(Some(ts)),
        _ => Err(WireError::Protocol(
            "oplog entry without a timestamp ts".to_string(),
        )),
    }
}

/// The first document of a `find` reply's `cursor.firstBatch` (raw bytes).
fn first_in_batch(reply: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
    use bson::Value;
    let doc = bson::Document::parse(reply)?;
    command_ok(&doc)?;
    let Some(Value::Document(cursor)) = doc.get("cursor")? else {
        return Err(WireError::Protocol("find reply without cursor".to_string()));
    };
    let Some(Value::Array(batch)) = bson::Document::parse(cursor)?.get("firstBatch")? else {
        return Err(WireError::Protocol(
            "find reply without cursor.firstBatch".to_string(),
        ));
    };
    match bson::Document::parse(batch)?.values()?.first() {
        Some(Value::Document(raw)) => Ok(Some(raw.to_vec())),
        Some(_) => Err(WireError::Protocol(
            "cursor.firstBatch holds a non-document".to_string(),
        )),
        None => Ok(None),
    }
}

/// Reads the oplog's bounds on an open, logged-in connection: two `find`s on
/// `local.oplog.rs` sorted by `$natural` ±1, `limit` 1, projection `ts` (each reply a few
/// dozen bytes, bounded by [`MAX_MESSAGE_BYTES`] anyway). Needs the `read` role on `local`
/// (gravity's own user has it: gravity tails the oplog). `None`: no oplog.
pub async fn oplog_bounds<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
) -> Result<Option<OplogBounds>, WireError> {
    let Some(oldest) = oplog_edge(stream, 1).await? else {
        return Ok(None);
    };
    let Some(newest) = oplog_edge(stream, -1).await? else {
        return Ok(None);
    };
    Ok(Some(OplogBounds { oldest, newest }))
}

/// A field value of a document the exporter writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// A UTF-8 string.
    String(String),
    /// A 64-bit integer.
    Int64(i64),
}

/// `_id`'s document in `db.collection`: the integer field `field`, if the document exists
/// (`None` also when the field is missing or not an integer).
pub async fn find_i64_by_id<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    db: &str,
    collection: &str,
    id: &str,
    field: &str,
) -> Result<Option<i64>, WireError> {
    let mut filter = bson::DocBuilder::new();
    filter.string("_id", id);
    let mut projection = bson::DocBuilder::new();
    projection.int32(field, 1);
    let mut find = bson::DocBuilder::new();
    find.string("find", collection)
        .document("filter", &filter.finish())
        .document("projection", &projection.finish())
        .int32("limit", 1)
        .bool("singleBatch", true)
        .string("$db", db);
    let reply = run_command(stream, &find.finish()).await?;
    let Some(first) = first_in_batch(&reply)? else {
        return Ok(None);
    };
    Ok(match bson::Document::parse(&first)?.get(field)? {
        Some(bson::Value::Int64(v)) => Some(v),
        Some(bson::Value::Int32(v)) => Some(i64::from(v)),
        _ => None,
    })
}

/// Sets `fields` on the document `_id` of `db.collection`, creating it when missing: one
/// `update` with `upsert: true` and `$set`, acknowledged (`w: 1`). A write error or a write
/// concern error in the reply is an error (`Command` with its code).
pub async fn upsert_by_id<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    db: &str,
    collection: &str,
    id: &str,
    fields: &[(&str, FieldValue)],
) -> Result<(), WireError> {
    let mut q = bson::DocBuilder::new();
    q.string("_id", id);
    let mut set = bson::DocBuilder::new();
    for (name, value) in fields {
        match value {
            FieldValue::String(s) => set.string(name, s),
            FieldValue::Int64(v) => set.int64(name, *v),
        };
    }
    let mut u = bson::DocBuilder::new();
    u.document("$set", &set.finish());
    let mut statement = bson::DocBuilder::new();
    statement
        .document("q", &q.finish())
        .document("u", &u.finish())
        .bool("upsert", true)
        .bool("multi", false);
    let mut concern = bson::DocBuilder::new();
    concern.int32("w", 1);
    let mut update = bson::DocBuilder::new();
    update
        .string("update", collection)
        .document_array("updates", &[statement.finish()])
        .bool("ordered", true)
        .document("writeConcern", &concern.finish())
        .string("$db", db);
    let reply = run_command(stream, &update.finish()).await?;
    let doc = bson::Document::parse(&reply)?;
    command_ok(&doc)?;
    for key in ["writeErrors", "writeConcernError"] {
        let raw = match doc.get(key)? {
            Some(bson::Value::Array(list)) => {
                match bson::Document::parse(list)?.values()?.first() {
                    Some(bson::Value::Document(d)) => d.to_vec(),
                    _ => continue,
                }
            }
            Some(bson::Value::Document(d)) => d.to_vec(),
            _ => continue,
        };
        let e = bson::Document::parse(&raw)?;
        let code = match e.get("code")? {
            Some(bson::Value::Int32(c)) => c,
            _ => 0,
        };
        let message = match e.get("errmsg")? {
            Some(bson::Value::String(m)) => sanitize(&String::from_utf8_lossy(m), 200),
            _ => String::new(),
        };
        return Err(WireError::Command {
            code,
            code_name: key.to_string(),
            message,
        });
    }
    Ok(())
}

fn describe(reply: &HelloReply) -> String {
    let role = if reply.is_mongos {
        "mongos"
    } else if reply.is_writable_primary {
        "writable primary"
    } else if reply.secondary {
        "secondary"
    } else {
        "not writable"
    };
    let mut detail = format!("hello ok: {role}");
    if let Some(set) = &reply.set_name {
        detail.push_str(&format!(", set {}", sanitize(set, 64)));
    }
    if let Some(v) = reply.max_wire_version {
        detail.push_str(&format!(", maxWireVersion {v}"));
    }
    detail
}

/// Sends `{<name>: 1, [saslSupportedMechs: "db.user",] $db: "admin"}` and decodes the reply.
async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    name: &str,
    login: Option<&MongoLogin>,
) -> Result<HelloReply, WireError> {
    let mut doc = bson::DocBuilder::new();
    doc.int32(name, 1);
    if let Some(login) = login {
        doc.string(
            "saslSupportedMechs",
            &format!("{}.{}", login.auth_source, login.user),
        );
    }
    doc.string("$db", "admin");
    let request_id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    stream
        .write_all(&encode_op_msg(request_id, 0, &doc.finish()))
        .await?;
    stream.flush().await?;
    let message = read_message(stream).await?;
    decode_reply(&message, request_id)
}

/// Decodes a whole reply message (header included) to the request `request_id`: OP_MSG
/// framing, then the `hello` / `isMaster` body.
///
/// Public as the entry point of the fuzz harness (`tests/fuzz.rs`): it is the only code that
/// reads bytes a server sent, after [`read_message`]'s length check.
pub fn decode_reply(message: &[u8], request_id: i32) -> Result<HelloReply, WireError> {
    let msg = parse_op_msg(message)?;
    if msg.response_to != request_id {
        return Err(WireError::Protocol(format!(
            "responseTo {} does not match request {request_id}",
            msg.response_to
        )));
    }
    parse_hello_reply(msg.body)
}

/// A complete OP_MSG with one kind-0 section.
fn encode_op_msg(request_id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + 4 + 1 + body.len();
    let mut out = Vec::with_capacity(len);
    // Our documents are tiny; the length fits in an int32.
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&OP_MSG.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    out.push(0); // section kind 0
    out.extend_from_slice(body);
    out
}

/// Reads one whole message (header included), at most [`MAX_MESSAGE_BYTES`].
async fn read_message<R: AsyncRead + Unpin + ?Sized>(reader: &mut R) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    if tls::looks_like_tls_alert(&len) {
        return Err(WireError::TlsRequired {
            message: TLS_REQUIRED,
        });
    }
    let raw = i32::from_le_bytes(len);
    let total = usize::try_from(raw)
        .ok()
        .filter(|&n| (HEADER_LEN + 4 + 1 + 5..=MAX_MESSAGE_BYTES).contains(&n))
        .ok_or_else(|| WireError::Protocol(format!("implausible message length {raw}")))?;
    let mut message = Vec::with_capacity(total.min(64 * 1024));
    message.extend_from_slice(&len);
    let want = total - 4;
    let got = reader.take(want as u64).read_to_end(&mut message).await?;
    if got != want {
        return Err(WireError::Io(io::ErrorKind::UnexpectedEof));
    }
    Ok(message)
}

/// The parts of an OP_MSG the probe (and the fake server) needs.
struct OpMsg<'a> {
    response_to: i32,
    body: &'a [u8],
}

/// Parses a complete OP_MSG (header included, length already checked by the reader).
fn parse_op_msg(message: &[u8]) -> Result<OpMsg<'_>, WireError> {
    let field = |at: usize| -> Result<[u8; 4], WireError> {
        message
            .get(at..at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .ok_or_else(|| WireError::Protocol("truncated message header".to_string()))
    };
    let length = i32::from_le_bytes(field(0)?);
    if usize::try_from(length).ok() != Some(message.len()) {
        return Err(WireError::Protocol("message length mismatch".to_string()));
    }
    let response_to = i32::from_le_bytes(field(8)?);
    let opcode = i32::from_le_bytes(field(12)?);
    if opcode != OP_MSG {
        return Err(WireError::Protocol(format!(
            "opcode {opcode}, expected OP_MSG (2013)"
        )));
    }
    let flags = u32::from_le_bytes(field(16)?);
    if flags & UNKNOWN_REQUIRED_FLAGS != 0 {
        return Err(WireError::Protocol(format!(
            "unknown required OP_MSG flags {flags:#x}"
        )));
    }
    let end = if flags & FLAG_CHECKSUM_PRESENT != 0 {
        message.len().saturating_sub(4)
    } else {
        message.len()
    };
    let sections = message
        .get(HEADER_LEN + 4..end)
        .ok_or_else(|| WireError::Protocol("truncated OP_MSG".to_string()))?;
    let mut body = None;
    let mut pos = 0;
    while pos < sections.len() {
        let kind = sections[pos]; // pos < len checked by the loop condition
        let rest = sections.get(pos + 1..).unwrap_or(&[]);
        match kind {
            0 => {
                if body.is_some() {
                    return Err(WireError::Protocol(
                        "more than one body section".to_string(),
                    ));
                }
                let len = bson::document_len(rest)?;
                body = rest.get(..len);
                pos += 1 + len;
            }
            1 => {
                let size = rest
                    .get(..4)
                    .and_then(|s| <[u8; 4]>::try_from(s).ok())
                    .map(i32::from_le_bytes)
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|&s| s >= 4 && s <= rest.len())
                    .ok_or_else(|| {
                        WireError::Protocol("malformed document sequence".to_string())
                    })?;
                pos += 1 + size;
            }
            other => {
                return Err(WireError::Protocol(format!(
                    "unknown OP_MSG section kind {other}"
                )))
            }
        }
    }
    let body = body.ok_or_else(|| WireError::Protocol("OP_MSG without a body".to_string()))?;
    Ok(OpMsg { response_to, body })
}

/// Interprets the body of a `hello` / `isMaster` reply.
fn parse_hello_reply(body: &[u8]) -> Result<HelloReply, WireError> {
    use bson::Value;
    let doc = bson::Document::parse(body)?;
    command_ok(&doc)?;
    let text = |v: Option<Value<'_>>, max: usize| match v {
        Some(Value::String(s)) => Some(sanitize(&String::from_utf8_lossy(s), max)),
        _ => None,
    };
    let is_writable_primary = match (doc.get("isWritablePrimary")?, doc.get("ismaster")?) {
        (Some(Value::Bool(b)), _) | (None, Some(Value::Bool(b))) => b,
        _ => {
            return Err(WireError::Protocol(
                "reply lacks a boolean isWritablePrimary/ismaster".to_string(),
            ))
        }
    };
    let secondary = matches!(doc.get("secondary")?, Some(Value::Bool(true)));
    let max_wire_version = match doc.get("maxWireVersion")? {
        Some(Value::Int32(v)) => Some(v),
        _ => None,
    };
    let is_mongos = matches!(doc.get("msg")?, Some(Value::String(b"isdbgrid")));
    Ok(HelloReply {
        is_writable_primary,
        secondary,
        set_name: text(doc.get("setName")?, 64),
        max_wire_version,
        is_mongos,
        legacy: false,
        sasl_supported_mechs: match doc.get("saslSupportedMechs")? {
            Some(Value::Array(raw)) => Some(string_array(raw)?),
            _ => None,
        },
    })
}

/// The strings of a BSON array (at most 16, others skipped).
fn string_array(raw: &[u8]) -> Result<Vec<String>, WireError> {
    let doc = bson::Document::parse(raw)?;
    Ok(doc
        .values()?
        .into_iter()
        .filter_map(|v| match v {
            bson::Value::String(s) => Some(sanitize(&String::from_utf8_lossy(s), 32)),
            _ => None,
        })
        .take(16)
        .collect())
}

/// A minimal BSON codec: builder for flat documents, bounds-checked top-level reader.
mod bson {
    /// Malformed BSON.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("malformed BSON: {0}")]
    pub struct BsonError(pub &'static str);

    /// A top-level value. Strings are raw UTF-8 bytes (without the NUL); embedded
    /// documents and arrays are their raw bytes, not parsed.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Value<'a> {
        Double(f64),
        String(&'a [u8]),
        Document(&'a [u8]),
        Array(&'a [u8]),
        Bool(bool),
        Null,
        Int32(i32),
        Int64(i64),
        /// Binary data: subtype and bytes.
        Binary(u8, &'a [u8]),
        /// A BSON timestamp: seconds in the high 32 bits, ordinal in the low 32.
        Timestamp(u64),
        /// Any other type (ObjectId, dates, ...), skipped.
        Other(u8),
    }

    fn le4(bytes: &[u8], at: usize) -> Result<i32, BsonError> {
        bytes
            .get(at..at.saturating_add(4))
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(i32::from_le_bytes)
            .ok_or(BsonError("truncated"))
    }

    fn le8(bytes: &[u8], at: usize) -> Result<[u8; 8], BsonError> {
        bytes
            .get(at..at.saturating_add(8))
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .ok_or(BsonError("truncated"))
    }

    /// The declared length of the document at the start of `bytes`, checked against
    /// `bytes` (at least 5, fits, ends with NUL).
    pub fn document_len(bytes: &[u8]) -> Result<usize, BsonError> {
        let len = usize::try_from(le4(bytes, 0)?).map_err(|_| BsonError("negative length"))?;
        if len < 5 || len > bytes.len() {
            return Err(BsonError("document length out of bounds"));
        }
        if bytes.get(len - 1) != Some(&0) {
            return Err(BsonError("document not NUL-terminated"));
        }
        Ok(len)
    }

    /// A validated document: its top-level elements all decode within its bounds.
    #[derive(Debug, Clone, Copy)]
    pub struct Document<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Document<'a> {
        /// Checks the document at the start of `bytes` and every top-level element.
        pub fn parse(bytes: &'a [u8]) -> Result<Document<'a>, BsonError> {
            let len = document_len(bytes)?;
            let doc = Document {
                bytes: bytes.get(..len).ok_or(BsonError("truncated"))?,
            };
            let mut pos = 4;
            while let Some((_, _, next)) = doc.element_at(pos)? {
                pos = next;
            }
            Ok(doc)
        }

        /// The first top-level value called `name`.
        pub fn get(&self, name: &str) -> Result<Option<Value<'a>>, BsonError> {
            let mut pos = 4;
            while let Some((key, value, next)) = self.element_at(pos)? {
                if key == name.as_bytes() {
                    return Ok(Some(value));
                }
                pos = next;
            }
            Ok(None)
        }

        /// Every top-level value, in order (array elements).
        pub fn values(&self) -> Result<Vec<Value<'a>>, BsonError> {
            let mut out = Vec::new();
            let mut pos = 4;
            while let Some((_, value, next)) = self.element_at(pos)? {
                out.push(value);
                pos = next;
            }
            Ok(out)
        }

        /// Decodes the element starting at `pos`: `None` at the terminating NUL.
        #[allow(clippy::type_complexity)]
        fn element_at(
            &self,
            pos: usize,
        ) -> Result<Option<(&'a [u8], Value<'a>, usize)>, BsonError> {
            let b = self.bytes;
            let tag = *b.get(pos).ok_or(BsonError("truncated"))?;
            if tag == 0 {
                return if pos + 1 == b.len() {
                    Ok(None)
                } else {
                    Err(BsonError("NUL before the end of the document"))
                };
            }
            let name_start = pos + 1;
            let name_len = b
                .get(name_start..)
                .and_then(|rest| rest.iter().position(|&c| c == 0))
                .ok_or(BsonError("unterminated element name"))?;
            let name = &b[name_start..name_start + name_len]; // position() found it in range
            let v = name_start + name_len + 1;
            let string_at = |at: usize| -> Result<(&'a [u8], usize), BsonError> {
                let n = usize::try_from(le4(b, at)?).map_err(|_| BsonError("negative length"))?;
                if n == 0 {
                    return Err(BsonError("zero string length"));
                }
                let start = at + 4;
                let end = start.checked_add(n).ok_or(BsonError("string length"))?;
                let s = b.get(start..end).ok_or(BsonError("string out of bounds"))?;
                if s.last() != Some(&0) {
                    return Err(BsonError("string not NUL-terminated"));
                }
                Ok((&s[..n - 1], end))
            };
            let cstring_end = |at: usize| -> Result<usize, BsonError> {
                b.get(at..)
                    .and_then(|rest| rest.iter().position(|&c| c == 0))
                    .map(|n| at + n + 1)
                    .ok_or(BsonError("unterminated cstring"))
            };
            let fixed = |n: usize| -> Result<usize, BsonError> {
                v.checked_add(n)
                    .filter(|&end| end <= b.len())
                    .ok_or(BsonError("value out of bounds"))
            };
            let (value, next) = match tag {
                0x01 => (Value::Double(f64::from_le_bytes(le8(b, v)?)), v + 8),
                0x02 => {
                    let (s, end) = string_at(v)?;
                    (Value::String(s), end)
                }
                0x03 | 0x04 => {
                    let rest = b.get(v..).ok_or(BsonError("truncated"))?;
                    let n = document_len(rest)?;
                    let raw = &rest[..n]; // document_len checked n <= rest.len()
                    let value = if tag == 0x03 {
                        Value::Document(raw)
                    } else {
                        Value::Array(raw)
                    };
                    (value, v + n)
                }
                0x05 => {
                    let n =
                        usize::try_from(le4(b, v)?).map_err(|_| BsonError("negative length"))?;
                    let end = fixed(n.checked_add(5).ok_or(BsonError("length"))?)?;
                    let subtype = *b.get(v + 4).ok_or(BsonError("truncated"))?;
                    let data = b.get(v + 5..end).ok_or(BsonError("truncated"))?;
                    (Value::Binary(subtype, data), end)
                }
                0x06 | 0x7F | 0xFF => (Value::Other(tag), v),
                0x07 => (Value::Other(tag), fixed(12)?),
                0x08 => match b.get(v) {
                    Some(0) => (Value::Bool(false), v + 1),
                    Some(1) => (Value::Bool(true), v + 1),
                    _ => return Err(BsonError("invalid boolean")),
                },
                0x09 => (Value::Other(tag), fixed(8)?),
                0x11 => (Value::Timestamp(u64::from_le_bytes(le8(b, v)?)), v + 8),
                0x0A => (Value::Null, v),
                0x0B => (Value::Other(tag), cstring_end(cstring_end(v)?)?),
                0x0C => {
                    let (_, end) = string_at(v)?;
                    let end = end + 12;
                    if end > b.len() {
                        return Err(BsonError("value out of bounds"));
                    }
                    (Value::Other(tag), end)
                }
                0x0D | 0x0E => (Value::Other(tag), string_at(v)?.1),
                0x0F => {
                    let n =
                        usize::try_from(le4(b, v)?).map_err(|_| BsonError("negative length"))?;
                    if n < 14 {
                        return Err(BsonError("code with scope too short"));
                    }
                    (Value::Other(tag), fixed(n)?)
                }
                0x10 => (Value::Int32(le4(b, v)?), v + 4),
                0x12 => (Value::Int64(i64::from_le_bytes(le8(b, v)?)), v + 8),
                0x13 => (Value::Other(tag), fixed(16)?),
                _ => return Err(BsonError("unknown element type")),
            };
            // The terminating NUL must still follow.
            if next >= b.len() {
                return Err(BsonError("element runs past the document"));
            }
            Ok(Some((name, value, next)))
        }
    }

    /// Builds a flat BSON document.
    #[derive(Debug)]
    pub struct DocBuilder {
        buf: Vec<u8>,
    }

    impl DocBuilder {
        pub fn new() -> Self {
            DocBuilder {
                buf: vec![0, 0, 0, 0],
            }
        }

        fn key(&mut self, tag: u8, name: &str) {
            self.buf.push(tag);
            // Names come from this crate's code; strip any NUL rather than corrupt the doc.
            self.buf.extend(name.bytes().filter(|&b| b != 0));
            self.buf.push(0);
        }

        #[cfg(test)] // the unit tests' documents
        pub fn double(&mut self, name: &str, v: f64) -> &mut Self {
            self.key(0x01, name);
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }

        pub fn string(&mut self, name: &str, v: &str) -> &mut Self {
            self.key(0x02, name);
            // Strings built here are short literals.
            self.buf
                .extend_from_slice(&((v.len() + 1) as i32).to_le_bytes());
            self.buf.extend_from_slice(v.as_bytes());
            self.buf.push(0);
            self
        }

        pub fn int32(&mut self, name: &str, v: i32) -> &mut Self {
            self.key(0x10, name);
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }

        pub fn bool(&mut self, name: &str, v: bool) -> &mut Self {
            self.key(0x08, name);
            self.buf.push(u8::from(v));
            self
        }

        pub fn int64(&mut self, name: &str, v: i64) -> &mut Self {
            self.key(0x12, name);
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }

        #[cfg(test)] // the unit tests' documents
        pub fn null(&mut self, name: &str) -> &mut Self {
            self.key(0x0A, name);
            self
        }

        #[cfg(test)] // the unit tests' documents
        pub fn object_id(&mut self, name: &str, id: [u8; 12]) -> &mut Self {
            self.key(0x07, name);
            self.buf.extend_from_slice(&id);
            self
        }

        #[cfg(test)] // the unit tests' documents
        pub fn datetime(&mut self, name: &str, millis: i64) -> &mut Self {
            self.key(0x09, name);
            self.buf.extend_from_slice(&millis.to_le_bytes());
            self
        }

        #[cfg(test)] // the unit tests' documents
        pub fn timestamp(&mut self, name: &str, seconds: u32, ordinal: u32) -> &mut Self {
            self.key(0x11, name);
            self.buf.extend_from_slice(&ordinal.to_le_bytes());
            self.buf.extend_from_slice(&seconds.to_le_bytes());
            self
        }

        pub fn binary(&mut self, name: &str, subtype: u8, data: &[u8]) -> &mut Self {
            self.key(0x05, name);
            self.buf
                .extend_from_slice(&(data.len() as i32).to_le_bytes());
            self.buf.push(subtype);
            self.buf.extend_from_slice(data);
            self
        }

        pub fn document(&mut self, name: &str, raw: &[u8]) -> &mut Self {
            self.key(0x03, name);
            self.buf.extend_from_slice(raw);
            self
        }

        /// `docs` (finished documents) become an array.
        pub fn document_array(&mut self, name: &str, docs: &[Vec<u8>]) -> &mut Self {
            let mut inner = DocBuilder::new();
            for (i, d) in docs.iter().enumerate() {
                inner.document(&i.to_string(), d);
            }
            self.key(0x04, name);
            self.buf.extend_from_slice(&inner.finish());
            self
        }

        #[cfg(test)] // the unit tests' documents
        /// `items` become an array (a document keyed "0", "1", ...) of strings.
        pub fn string_array(&mut self, name: &str, items: &[&str]) -> &mut Self {
            let mut inner = DocBuilder::new();
            for (i, item) in items.iter().enumerate() {
                inner.string(&i.to_string(), item);
            }
            self.key(0x04, name);
            self.buf.extend_from_slice(&inner.finish());
            self
        }

        pub fn finish(&self) -> Vec<u8> {
            let mut out = self.buf.clone();
            out.push(0);
            // Documents built here are far below 2 GiB.
            let len = (out.len() as i32).to_le_bytes();
            out[..4].copy_from_slice(&len);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bson::{DocBuilder, Document, Value};
    use super::*;
    use crate::probe::FailureReason;

    const D: Duration = Duration::from_secs(3);

    #[test]
    fn request_bytes_match_the_spec() {
        let mut doc = DocBuilder::new();
        doc.int32("hello", 1).string("$db", "admin");
        let body = doc.finish();
        // {hello: 1, $db: "admin"} per bsonspec.org.
        let mut want_doc = vec![0x1f, 0, 0, 0, 0x10];
        want_doc.extend_from_slice(b"hello\0");
        want_doc.extend_from_slice(&[1, 0, 0, 0, 0x02]);
        want_doc.extend_from_slice(b"$db\0");
        want_doc.extend_from_slice(&[6, 0, 0, 0]);
        want_doc.extend_from_slice(b"admin\0");
        want_doc.push(0);
        assert_eq!(body, want_doc);
        let msg = encode_op_msg(5, 0, &body);
        assert_eq!(&msg[..4], &(16i32 + 4 + 1 + 31).to_le_bytes());
        assert_eq!(&msg[4..8], &5i32.to_le_bytes());
        assert_eq!(&msg[8..12], &0i32.to_le_bytes());
        assert_eq!(&msg[12..16], &2013i32.to_le_bytes());
        assert_eq!(&msg[16..21], &[0, 0, 0, 0, 0]);
        assert_eq!(&msg[21..], &body[..]);
        let parsed = parse_op_msg(&msg).unwrap();
        assert_eq!(parsed.body, &body[..]);
    }

    fn sample_reply() -> Vec<u8> {
        let mut inner = DocBuilder::new();
        inner.int32("x", 1).string_array("arr", &["a", "b"]);
        let mut b = DocBuilder::new();
        b.document("nested", &inner.finish())
            .bool("isWritablePrimary", false)
            .bool("secondary", true)
            .string("setName", "rs0")
            .int32("maxWireVersion", 21)
            .binary("bin", 4, &[1, 2, 3])
            .object_id("oid", [7; 12])
            .timestamp("ts", 1, 2)
            .datetime("dt", -5)
            .null("nothing")
            .int64("big", i64::MIN)
            .double("ok", 1.0);
        b.finish()
    }

    #[test]
    fn bson_reader_finds_fields_and_skips_others() {
        let raw = sample_reply();
        let doc = Document::parse(&raw).unwrap();
        assert_eq!(doc.get("ok").unwrap(), Some(Value::Double(1.0)));
        assert_eq!(doc.get("setName").unwrap(), Some(Value::String(b"rs0")));
        assert_eq!(doc.get("big").unwrap(), Some(Value::Int64(i64::MIN)));
        assert_eq!(doc.get("nothing").unwrap(), Some(Value::Null));
        assert!(matches!(
            doc.get("nested").unwrap(),
            Some(Value::Document(_))
        ));
        assert_eq!(doc.get("missing").unwrap(), None);
        let reply = parse_hello_reply(&raw).unwrap();
        assert_eq!(
            reply,
            HelloReply {
                is_writable_primary: false,
                secondary: true,
                set_name: Some("rs0".into()),
                max_wire_version: Some(21),
                is_mongos: false,
                legacy: false,
                sasl_supported_mechs: None,
            }
        );
    }

    #[test]
    fn bson_reader_rejects_malformed_input_without_panicking() {
        let raw = sample_reply();
        for n in 0..raw.len() {
            // Re-declare the shorter length so only the content is inconsistent.
            let mut cut = raw[..n].to_vec();
            if n >= 4 {
                cut[..4].copy_from_slice(&(n as i32).to_le_bytes());
            }
            assert!(Document::parse(&cut).is_err(), "prefix {n}");
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5000 {
            let mut m = raw.clone();
            for _ in 0..3 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % m.len() as u64) as usize;
                m[i] = (rng >> 40) as u8;
            }
            if let Ok(doc) = Document::parse(&m) {
                let _ = doc.get("ok");
            }
            let _ = parse_hello_reply(&m);
        }
        // Unknown type, bad boolean, negative lengths.
        for bad in [
            &[8, 0, 0, 0, 0x20, b'a', 0, 0][..],
            &[9, 0, 0, 0, 0x08, b'a', 0, 2, 0][..],
            &[12, 0, 0, 0, 0x02, b'a', 0, 0xff, 0xff, 0xff, 0xff, 0][..],
            &[0xff, 0xff, 0xff, 0xff, 0][..],
        ] {
            assert!(Document::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hello_reply_variants() {
        let mut b = DocBuilder::new();
        b.bool("ismaster", true)
            .int32("ok", 1)
            .string("msg", "isdbgrid");
        let r = parse_hello_reply(&b.finish()).unwrap();
        assert!(r.is_writable_primary && r.is_mongos);
        assert_eq!(describe(&r), "hello ok: mongos");

        let mut b = DocBuilder::new();
        b.double("ok", 0.0)
            .string("errmsg", "command hello requires authentication")
            .int32("code", 13)
            .string("codeName", "Unauthorized");
        let e = parse_hello_reply(&b.finish()).unwrap_err();
        assert_eq!(e.reason(), FailureReason::Auth);
        assert_eq!(
            e.to_string(),
            "command failed: code 13 Unauthorized: command hello requires authentication"
        );

        let mut b = DocBuilder::new();
        b.double("ok", 1.0);
        assert!(matches!(
            parse_hello_reply(&b.finish()),
            Err(WireError::Protocol(_))
        ));
        let mut b = DocBuilder::new();
        b.bool("isWritablePrimary", true);
        assert!(matches!(
            parse_hello_reply(&b.finish()),
            Err(WireError::Protocol(_))
        ));
    }

    #[test]
    fn op_msg_flags_sections_and_checksum() {
        let mut b = DocBuilder::new();
        b.bool("isWritablePrimary", true).double("ok", 1.0);
        let body = b.finish();
        let base = encode_op_msg(1, 9, &body);
        assert!(parse_op_msg(&base).is_ok());

        // Checksum present: the last 4 bytes are not a section.
        let mut with_crc = base.clone();
        with_crc[16] = 1;
        with_crc.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let len = with_crc.len() as i32;
        with_crc[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(parse_op_msg(&with_crc).unwrap().body, &body[..]);

        // Unknown required flag bit.
        let mut flagged = base.clone();
        flagged[16] = 4;
        assert!(parse_op_msg(&flagged).is_err());

        // A kind-1 section (document sequence) before the body is skipped.
        let mut seq = base[..20].to_vec();
        seq.push(1);
        let mut payload = b"documents\0".to_vec();
        payload.extend_from_slice(&body);
        seq.extend_from_slice(&((payload.len() + 4) as i32).to_le_bytes());
        seq.extend_from_slice(&payload);
        seq.push(0);
        seq.extend_from_slice(&body);
        let len = seq.len() as i32;
        seq[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(parse_op_msg(&seq).unwrap().body, &body[..]);

        // Legacy OP_REPLY opcode, unknown section kind, missing body.
        let mut reply = base.clone();
        reply[12..16].copy_from_slice(&1i32.to_le_bytes());
        assert!(parse_op_msg(&reply).is_err());
        let mut kind9 = base.clone();
        kind9[20] = 9;
        assert!(parse_op_msg(&kind9).is_err());
        let mut empty = base[..20].to_vec();
        empty[..4].copy_from_slice(&20i32.to_le_bytes());
        assert!(parse_op_msg(&empty).is_err());
    }

    #[tokio::test]
    async fn message_length_is_bounded() {
        let mut http = &b"HTTP/1.1 200 OK\r\n\r\n"[..];
        assert!(matches!(
            read_message(&mut http).await,
            Err(WireError::Protocol(_))
        ));
        let mut tiny = &[5, 0, 0, 0, 0][..];
        assert!(matches!(
            read_message(&mut tiny).await,
            Err(WireError::Protocol(_))
        ));
        let mut short = &[100, 0, 0, 0, 1, 2, 3][..];
        let e = read_message(&mut short).await.unwrap_err();
        assert_eq!(e.reason(), FailureReason::Protocol);
    }

    fn login(user: &str, pw: &str) -> MongoLogin {
        MongoLogin {
            user: user.into(),
            password: Secret::new(pw),
            auth_source: "admin".into(),
        }
    }

    #[test]
    fn scram_sha1_password_is_mongo_digest() {
        // MongoDB's SCRAM-SHA-1 password: hex MD5 of "user:mongo:password".
        let p = prepared_password(
            &login("user", "pencil"),
            crate::probe::scram::ScramHash::Sha1,
        )
        .unwrap();
        assert_eq!(p, b"1c33006ec1ffd90f9cadcbcc0e118200");
        // SASLprep maps non-ASCII space to ASCII space (RFC 4013 §2.1).
        let p = prepared_password(
            &login("u", "a\u{00A0}b"),
            crate::probe::scram::ScramHash::Sha256,
        )
        .unwrap();
        assert_eq!(p, b"a b");
    }

    #[tokio::test]
    async fn probe_closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let out = probe(&Endpoint::new("127.0.0.1", port), D).await;
        assert_eq!(out.reason, Some(FailureReason::Refused), "{out:?}");
    }
}
