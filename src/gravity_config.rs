//! Reading gravity's own config file (TOML, or JSON when the path ends in `.json`) for
//! what the exporter needs: the pipeline name, the input and output kinds, and the
//! endpoints around the pipeline (source, probe DB, target, Kafka brokers, Elasticsearch).
//!
//! The file holds passwords. They are kept in memory as [`Secret`], whose `Debug` is
//! redacted and which has no `Display`, so they cannot slip into a log line, metric or
//! page through formatting.

use std::path::Path;

use serde_json::Value;

pub use crate::redact::Secret;
pub use crate::tls::TlsOptions;

/// What an endpoint is, as the `component` label of connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointRole {
    /// The MySQL/Mongo source.
    Source,
    /// gravity's heartbeat probe DB (`source-probe-config`).
    ProbeDb,
    /// The MySQL target.
    Target,
    /// A Kafka broker.
    Kafka,
    /// An Elasticsearch server.
    Elasticsearch,
}

impl EndpointRole {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointRole::Source => "source",
            EndpointRole::ProbeDb => "probe_db",
            EndpointRole::Target => "target",
            EndpointRole::Kafka => "kafka",
            EndpointRole::Elasticsearch => "elasticsearch",
        }
    }
}

/// The protocol spoken at an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MySQL client protocol.
    Mysql,
    /// MongoDB wire protocol.
    Mongo,
    /// Kafka protocol.
    Kafka,
    /// HTTP (Elasticsearch).
    Http,
}

/// One endpoint around the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What it is.
    pub role: EndpointRole,
    /// How to talk to it.
    pub protocol: Protocol,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user, if the config has one.
    pub user: Option<String>,
    /// Login password (never printed).
    pub password: Secret,
    /// Whether the endpoint speaks TLS (an `https://` Elasticsearch URL, a Kafka config
    /// with `cert-file`, `key-file` and `ca-file`, a Mongo source with `tls = true`).
    pub tls: bool,
    /// How TLS is set up when `tls` (CA, client certificate, verification).
    pub tls_options: TlsOptions,
    /// Kafka: the SASL mechanism when `net.sasl.enable = true` (then `user`/`password` are
    /// the SASL login); `None`: no SASL.
    pub sasl: Option<SaslMechanism>,
    /// Mongo: the database the credentials are checked in (`database`, as the path of
    /// gravity's `mongodb://user:pass@host:port/database` URL; default `admin`).
    pub auth_source: Option<String>,
}

impl Endpoint {
    /// `host:port` (IPv6 in brackets), the `endpoint` label value: never holds a password.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the exporter knows from gravity's config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GravityConfig {
    /// Pipeline name (`name`).
    pub name: Option<String>,
    /// `[input] type`: mysql, mongo, ...
    pub input_type: Option<String>,
    /// `[input] mode`: stream, batch, replication.
    pub input_mode: Option<String>,
    /// `[output] type`: mysql, async-kafka, elasticsearch, ...
    pub output_type: Option<String>,
    /// `internal-db-name` (default `_gravity`).
    pub internal_db_name: String,
    /// Endpoints, in config order.
    pub endpoints: Vec<Endpoint>,
    /// `[[output.config.routes]]` of a MySQL or Kafka output, in order (at most [`MAX_ROUTES`]).
    pub routes: Vec<Route>,
    /// The settings that shape the pipeline as in force: the config's, else gravity's
    /// defaults (`[scheduler.config]`, the MySQL target's `max-open`, the batch input's).
    pub settings: crate::diagnosis::Settings,
}

/// Most routes read from gravity's config.
pub const MAX_ROUTES: usize = 1024;

/// One `[[output.config.routes]]` entry of a MySQL or Kafka output: which source tables it
/// takes (glob patterns, `*` and `?`) and where it writes them (MySQL: target schema and
/// table, unset: the same name; Kafka: the `dml-topic`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// `match-schema`.
    pub match_schema: String,
    /// `match-table`.
    pub match_table: String,
    /// `target-schema`, if set.
    pub target_schema: Option<String>,
    /// `target-table`, if set.
    pub target_table: Option<String>,
    /// `dml-topic` of an `async-kafka` output (gravity's `KafkaRoute.DMLTargetTopic`), if set.
    pub dml_topic: Option<String>,
}

impl Route {
    /// Whether this route takes `schema.table`.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob_match(&self.match_schema, schema) && glob_match(&self.match_table, table)
    }
}

/// Glob matching as gravity's routes use it: `*` any run of characters, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Greedy matcher with one backtrack point, the last `*` seen.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or(&[]).iter().all(|c| *c == '*')
}

impl GravityConfig {
    /// The first endpoint with this role.
    pub fn endpoint(&self, role: EndpointRole) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.role == role)
    }
}

/// Why gravity's config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GravityConfigError {
    /// I/O.
    #[error("cannot read gravity config {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Error.
        source: std::io::Error,
    },
    /// Parse error (the message never holds file content beyond a position).
    #[error("cannot parse gravity config {path}: {reason}")]
    Parse {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Largest config file read (gravity configs are a few KB).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and parses gravity's config file.
pub fn read(path: &Path) -> Result<GravityConfig, GravityConfigError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| GravityConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(GravityConfigError::Parse {
            path: shown,
            reason: format!(
                "file is {} bytes, over the {MAX_CONFIG_BYTES} byte limit",
                meta.len()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| GravityConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    parse(&text, json).map_err(|reason| GravityConfigError::Parse {
        path: shown,
        reason,
    })
}

/// Parses the text of a gravity config (`json` selects JSON, else TOML).
pub fn parse(text: &str, json: bool) -> Result<GravityConfig, String> {
    let root: Value = if json {
        serde_json::from_str(text)
            .map_err(|e| format!("invalid JSON at line {} column {}", e.line(), e.column()))?
    } else {
        let t: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|p| p.matches('\n').count() + 1)
                .unwrap_or(0);
            format!("invalid TOML at line {line}")
        })?;
        serde_json::to_value(t).map_err(|_| "TOML not representable".to_string())?
    };
    Ok(from_value(&root))
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}

fn string(v: &Value, path: &[&str]) -> Option<String> {
    get(v, path).and_then(Value::as_str).map(str::to_string)
}

fn db_endpoint(
    v: Option<&Value>,
    role: EndpointRole,
    protocol: Protocol,
    default_port: u16,
) -> Option<Endpoint> {
    let v = v?;
    let host = v.get("host").and_then(Value::as_str)?.trim().to_string();
    if host.is_empty() {
        return None;
    }
    let port = match v.get("port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(default_port),
        Some(Value::String(s)) => s.parse().unwrap_or(default_port),
        _ => default_port,
    };
    let user = v
        .get("username")
        .or_else(|| v.get("user"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let password = Secret::new(v.get("password").and_then(Value::as_str).unwrap_or(""));
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    // Mongo: the auth database of gravity's URL (`database`), and TLS when the section
    // says so (`tls`/`ssl`, with `ca-file`, `cert-file`, `key-file`, `tls-insecure`).
    let (tls, tls_options, auth_source) = if protocol == Protocol::Mongo {
        let tls_options = TlsOptions {
            ca_file: text("ca-file").map(Into::into),
            cert_file: text("cert-file").map(Into::into),
            key_file: text("key-file").map(Into::into),
            insecure_skip_verify: flag("tls-insecure"),
        };
        (
            flag("tls") || flag("ssl"),
            tls_options,
            text("auth-source").or_else(|| text("database")),
        )
    } else {
        (false, TlsOptions::default(), None)
    };
    Some(Endpoint {
        role,
        protocol,
        host,
        port,
        user,
        password,
        tls,
        tls_options,
        sasl: None,
        auth_source,
    })
}

/// Splits `host:port`, `[v6]:port` or `host` (with a default port).
pub fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let s = s.trim();
    let s = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    // drop user:pass@ from URLs
    let s = s.rsplit('@').next().unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => Some((s.to_string(), default_port)), // bare IPv6
        None => Some((s.to_string(), default_port)),
    }
}

fn from_value(root: &Value) -> GravityConfig {
    let input_type = string(root, &["input", "type"]);
    let source_protocol = match input_type.as_deref() {
        Some("mongo") => Protocol::Mongo,
        _ => Protocol::Mysql,
    };
    let source_default_port = if source_protocol == Protocol::Mongo {
        27017
    } else {
        3306
    };
    let mut endpoints = Vec::new();
    endpoints.extend(db_endpoint(
        get(root, &["input", "config", "source"]),
        EndpointRole::Source,
        source_protocol,
        source_default_port,
    ));
    endpoints.extend(db_endpoint(
        get(root, &["input", "config", "source-probe-config", "mysql"]),
        EndpointRole::ProbeDb,
        Protocol::Mysql,
        3306,
    ));
    endpoints.extend(db_endpoint(
        get(root, &["output", "config", "target"]),
        EndpointRole::Target,
        Protocol::Mysql,
        3306,
    ));
    let kafka = get(root, &["output", "config", "kafka-global-config"]);
    let kafka_text = |k: &str| {
        kafka
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(std::path::PathBuf::from)
    };
    // gravity (pkg/kafka) turns TLS on only when cert-file, key-file and ca-file are all
    // set, presents the client certificate, and sets Go's InsecureSkipVerify to the value
    // of verify-ssl: verify-ssl = true switches verification *off*. The probe does the same
    // so that it fails exactly when gravity would.
    let (kafka_tls, kafka_tls_options) = match (
        kafka_text("cert-file"),
        kafka_text("key-file"),
        kafka_text("ca-file"),
    ) {
        (Some(cert), Some(key), Some(ca)) => (
            true,
            TlsOptions {
                ca_file: Some(ca),
                cert_file: Some(cert),
                key_file: Some(key),
                insecure_skip_verify: kafka
                    .and_then(|v| v.get("verify-ssl"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
        ),
        _ => (false, TlsOptions::default()),
    };
    let sasl_path = |k: &'static str| ["output", "config", "kafka-global-config", "net", "sasl", k];
    let sasl_enabled = get(root, &sasl_path("enable"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // gravity 0.9 leaves sarama's mechanism at its default, PLAIN; a `mechanism` key (sarama's
    // name) is honoured for builds that set it.
    let sasl = sasl_enabled.then(|| {
        string(root, &sasl_path("mechanism"))
            .and_then(|m| SaslMechanism::parse(&m))
            .unwrap_or(SaslMechanism::Plain)
    });
    let sasl_user = string(
        root,
        &[
            "output",
            "config",
            "kafka-global-config",
            "net",
            "sasl",
            "user",
        ],
    );
    let sasl_pw = string(
        root,
        &[
            "output",
            "config",
            "kafka-global-config",
            "net",
            "sasl",
            "password",
        ],
    );
    if let Some(brokers) = get(
        root,
        &["output", "config", "kafka-global-config", "broker-addrs"],
    )
    .and_then(Value::as_array)
    {
        for b in brokers.iter().filter_map(Value::as_str).take(64) {
            if let Some((host, port)) = split_host_port(b, 9092) {
                endpoints.push(Endpoint {
                    role: EndpointRole::Kafka,
                    protocol: Protocol::Kafka,
                    host,
                    port,
                    user: sasl_user.clone(),
                    password: Secret::new(sasl_pw.clone().unwrap_or_default()),
                    tls: kafka_tls,
                    tls_options: kafka_tls_options.clone(),
                    sasl,
                    auth_source: None,
                });
            }
        }
    }
    // Elasticsearch: [output.config.server] urls = [...] (esmodel/elasticsearch outputs),
    // basic auth in [output.config.server.auth] username/password.
    let es_urls = get(root, &["output", "config", "server", "urls"])
        .or_else(|| get(root, &["output", "config", "urls"]))
        .and_then(Value::as_array);
    let es_user =
        string(root, &["output", "config", "server", "auth", "username"]).filter(|u| !u.is_empty());
    let es_pw = string(root, &["output", "config", "server", "auth", "password"]);
    if let Some(urls) = es_urls {
        for u in urls.iter().filter_map(Value::as_str).take(64) {
            if let Some((host, port)) = split_host_port(u, 9200) {
                endpoints.push(Endpoint {
                    role: EndpointRole::Elasticsearch,
                    protocol: Protocol::Http,
                    host,
                    port,
                    user: es_user.clone(),
                    password: Secret::new(es_pw.clone().unwrap_or_default()),
                    tls: u.trim().to_ascii_lowercase().starts_with("https://"),
                    tls_options: TlsOptions::default(),
                    sasl: None,
                    auth_source: None,
                });
            }
        }
    }
    GravityConfig {
        name: string(root, &["name"]).filter(|s| !s.is_empty()),
        input_type,
        input_mode: string(root, &["input", "mode"]),
        output_type: string(root, &["output", "type"]),
        internal_db_name: string(root, &["internal-db-name"]).unwrap_or_else(|| "_gravity".into()),
        endpoints,
        routes: routes(root),
        settings: crate::diagnosis::Settings::from_config_value(root),
    }
}

fn routes(root: &Value) -> Vec<Route> {
    let Some(list) = get(root, &["output", "config", "routes"]).and_then(Value::as_array) else {
        return Vec::new();
    };
    let field = |r: &Value, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    list.iter()
        .take(MAX_ROUTES)
        .filter_map(|r| {
            Some(Route {
                match_schema: field(r, "match-schema")?,
                match_table: field(r, "match-table").unwrap_or_else(|| "*".into()),
                target_schema: field(r, "target-schema"),
                target_table: field(r, "target-table"),
                dml_topic: field(r, "dml-topic"),
            })
        })
        .collect()
}

/// A SASL mechanism gravity's Kafka client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    /// SASL/PLAIN (RFC 4616): user and password in the clear, so normally over TLS.
    Plain,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name on the wire (and in gravity's config).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a mechanism name (case-insensitive).
    pub fn parse(name: &str) -> Option<SaslMechanism> {
        match name.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Some(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_routes() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "orders", true),
            ("order*", "orders_2024", true),
            ("order*", "order", true),
            ("order*", "xorder", false),
            ("o?ders", "orders", true),
            ("o?ders", "oders", false),
            ("*_log", "access_log", true),
            ("*_log", "access_logs", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("test_db", "test_db", true),
            ("test_db", "test_db2", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
        let cfg = parse(
            "[output]\ntype = \"mysql\"\n[[output.config.routes]]\nmatch-schema = \"shop\"\nmatch-table = \"order*\"\ntarget-schema = \"shop_copy\"\n\n[[output.config.routes]]\nmatch-schema = \"app\"\n\n[[output.config.routes]]\nmatch-table = \"no-schema\"\n",
            false,
        )
        .unwrap();
        assert_eq!(
            cfg.routes.len(),
            2,
            "a route without match-schema is skipped"
        );
        assert!(cfg.routes[0].matches("shop", "orders"));
        assert!(!cfg.routes[0].matches("shop", "users"));
        assert_eq!(cfg.routes[0].target_schema.as_deref(), Some("shop_copy"));
        assert_eq!(cfg.routes[0].target_table, None);
        assert_eq!(cfg.routes[1].match_table, "*");
        let m2m = parse(M2M, false).unwrap();
        assert_eq!(m2m.routes.len(), 1);
        assert!(m2m.routes[0].matches("test_db", "anything"));
    }

    const M2M: &str = include_str!("../tests/fixtures/configs/mysql2mysql-stream.toml");
    const M2K: &str = include_str!("../tests/fixtures/configs/mysql2kafka-stream.toml");
    const MONGO: &str = include_str!("../tests/fixtures/configs/mongo2kafka.toml");
    const FULL: &str = include_str!("../tests/fixtures/configs/mysql-full-dump.toml");
    const ES: &str = include_str!("../tests/fixtures/configs/mysql2es.toml");

    #[test]
    fn mysql2mysql() {
        let c = parse(M2M, false).unwrap();
        assert_eq!(c.name.as_deref(), Some("mysql2mysqlDemo"));
        assert_eq!(c.input_mode.as_deref(), Some("stream"));
        let s = c.endpoint(EndpointRole::Source).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_deref()),
            ("127.0.0.1", 3306, Some("repl"))
        );
        assert_eq!(s.password.expose(), "s3cret-source-pw");
        let t = c.endpoint(EndpointRole::Target).unwrap();
        assert_eq!(t.address(), "127.0.0.1:3307");
        assert_eq!(c.internal_db_name, "_gravity");
    }

    #[test]
    fn mysql2kafka_with_probe_and_sasl() {
        let c = parse(M2K, false).unwrap();
        assert_eq!(c.name.as_deref(), Some("orders-to-kafka"));
        assert_eq!(c.internal_db_name, "_gravity_orders");
        assert_eq!(
            c.endpoint(EndpointRole::ProbeDb).unwrap().user.as_deref(),
            Some("probe")
        );
        let brokers: Vec<String> = c
            .endpoints
            .iter()
            .filter(|e| e.role == EndpointRole::Kafka)
            .map(Endpoint::address)
            .collect();
        assert_eq!(
            brokers,
            [
                "kafka-1.internal:9092",
                "kafka-2.internal:9092",
                "127.0.0.1:9092"
            ]
        );
        assert_eq!(c.routes.len(), 1);
        assert!(c.routes[0].matches("shop", "orders_2026"));
        assert_eq!(c.routes[0].dml_topic.as_deref(), Some("binlog.shop.orders"));
    }

    #[test]
    fn kafka_tls_and_sasl_as_gravity_reads_them() {
        // SASL only when enabled; mechanism PLAIN unless set.
        let c = parse(M2K, false).unwrap();
        let k = c.endpoint(EndpointRole::Kafka).unwrap();
        assert_eq!(k.sasl, Some(SaslMechanism::Plain));
        assert_eq!(k.user.as_deref(), Some("gravity"));
        assert!(!k.tls);
        let text = r#"
[output]
type = "async-kafka"
[output.config.kafka-global-config]
broker-addrs = ["k:9093"]
cert-file = "/etc/gravity/client.pem"
key-file = "/etc/gravity/client.key"
ca-file = "/etc/gravity/ca.pem"
verify-ssl = true
[output.config.kafka-global-config.net.sasl]
enable = true
mechanism = "scram-sha-512"
user = "u"
password = "p-secret"
"#;
        let k = parse(text, false).unwrap().endpoints.remove(0);
        assert!(k.tls);
        assert_eq!(k.sasl, Some(SaslMechanism::ScramSha512));
        assert_eq!(
            k.tls_options,
            TlsOptions {
                ca_file: Some("/etc/gravity/ca.pem".into()),
                cert_file: Some("/etc/gravity/client.pem".into()),
                key_file: Some("/etc/gravity/client.key".into()),
                // gravity hands verify-ssl to Go's InsecureSkipVerify
                insecure_skip_verify: true,
            }
        );
        // Two of the three files: gravity leaves TLS off; SASL disabled: no SASL.
        let partial = text
            .replace("ca-file = \"/etc/gravity/ca.pem\"\n", "")
            .replace("enable = true", "enable = false");
        let k = parse(&partial, false).unwrap().endpoints.remove(0);
        assert!(!k.tls);
        assert_eq!(k.sasl, None);
        assert!(!format!("{k:?}").contains("p-secret"));
    }

    #[test]
    fn mongo_auth_source_and_tls() {
        let c = parse(MONGO, false).unwrap();
        let s = c.endpoint(EndpointRole::Source).unwrap();
        assert_eq!((s.tls, s.auth_source.as_deref()), (false, None));
        let text = "[input]\ntype = \"mongo\"\n[input.config.source]\nhost = \"m\"\nusername = \"u\"\npassword = \"pw\"\ndatabase = \"app\"\ntls = true\nca-file = \"/ca.pem\"\n";
        let c = parse(text, false).unwrap();
        let s = c.endpoint(EndpointRole::Source).unwrap();
        assert_eq!(s.auth_source.as_deref(), Some("app"));
        assert!(s.tls);
        assert_eq!(s.tls_options.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn mongo_and_batch() {
        let c = parse(MONGO, false).unwrap();
        let s = c.endpoint(EndpointRole::Source).unwrap();
        assert_eq!((s.protocol, s.port), (Protocol::Mongo, 27017));
        let c = parse(FULL, false).unwrap();
        assert_eq!(c.input_mode.as_deref(), Some("batch"));
        assert_eq!(c.endpoint(EndpointRole::Target).unwrap().port, 3307);
    }

    #[test]
    fn elasticsearch_with_auth() {
        let c = parse(ES, false).unwrap();
        let es: Vec<&Endpoint> = c
            .endpoints
            .iter()
            .filter(|e| e.role == EndpointRole::Elasticsearch)
            .collect();
        assert_eq!(es.len(), 2);
        assert_eq!(
            (es[0].address(), es[0].tls, es[0].protocol),
            ("es-1.internal:9200".to_string(), false, Protocol::Http)
        );
        assert_eq!(
            (es[1].address(), es[1].tls),
            ("127.0.0.1:9243".into(), true)
        );
        assert_eq!(es[0].user.as_deref(), Some("elastic"));
        assert_eq!(es[0].password.expose(), "es-pw");
        let s = c.endpoint(EndpointRole::Source).unwrap();
        assert_eq!(s.address(), "127.0.0.1:3306");
        assert!(!format!("{c:?}").contains("es-pw"));
    }

    #[test]
    fn json_config() {
        let c = parse(r#"{"name":"j","input":{"type":"mysql","config":{"source":{"host":"db","port":"3310","password":"pw"}}}}"#, true).unwrap();
        assert_eq!(c.name.as_deref(), Some("j"));
        assert_eq!(c.endpoint(EndpointRole::Source).unwrap().port, 3310);
    }

    #[test]
    fn secrets_never_in_debug_or_errors() {
        for (text, pws) in [
            (M2M, &["s3cret-source-pw", "s3cret-target-pw"][..]),
            (M2K, &["kafka-pipeline-pw", "probe-pw", "sasl-pw"][..]),
            (MONGO, &["mongo-pw"][..]),
            (ES, &["es-source-pw", "es-pw"][..]),
        ] {
            let c = parse(text, false).unwrap();
            let dbg = format!("{c:?}");
            for pw in pws {
                assert!(!dbg.contains(pw), "{pw} leaked in {dbg}");
            }
            // a broken file's error names a line, never content
            let broken = format!("{text}\npassword = = \"{}\"", pws[0]);
            let e = parse(&broken, false).unwrap_err();
            assert!(!e.contains(pws[0]), "{e}");
        }
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a:1", 9), Some(("a".into(), 1)));
        assert_eq!(split_host_port("a", 9), Some(("a".into(), 9)));
        assert_eq!(split_host_port("[::1]:5", 9), Some(("::1".into(), 5)));
        assert_eq!(
            split_host_port("http://u:p@es:9201/x", 9200),
            Some(("es".into(), 9201))
        );
        assert_eq!(split_host_port("a:notaport", 9), None);
    }
}
