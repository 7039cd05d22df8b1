//! Physical replication connections, for cairn's own `BASE_BACKUP`.
//!
//! `pg_basebackup -F tar -D -` can stream only a cluster without
//! tablespaces: with more than one archive it needs a directory to write
//! them to. Asked directly, the server sends every tablespace's archive
//! over one connection, so cairn speaks the replication protocol itself:
//! a start-up message with `replication=true` (which tokio-postgres cannot
//! send), password / MD5 / SCRAM-SHA-256 authentication through
//! `postgres-protocol`, then one `BASE_BACKUP` command whose archives are
//! passed on, as they arrive, through a bounded channel.
//!
//! Two stream formats exist: from PostgreSQL 15 on, one `COPY` carries all
//! archives, each `CopyData` starting with a type byte (`n` new archive,
//! `d` data, `p` progress, `m` manifest); before, every archive was a `COPY`
//! of its own, in the order of the tablespace list the server sent first.

use std::collections::HashMap;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_postgres::Config;
use tokio_postgres::config::{ChannelBinding as ChannelBindingSetting, SslMode};

use super::socket::{self, Transport};
use super::tls::RustlsConnect;

/// A tablespace other than the data directory's own, as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceArchive {
    pub oid: u32,
    /// Its directory on the server (`spclocation`).
    pub location: String,
}

/// What a running base backup hands over, in order.
#[derive(Debug)]
pub enum BaseBackupEvent {
    /// A new archive begins: a tablespace's, or (`None`) the data directory's.
    Archive(Option<TablespaceArchive>),
    /// The next bytes of the current archive (tar).
    Data(Bytes),
    /// The current archive is complete.
    ArchiveEnd,
}

/// Where a base backup started and ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupResult {
    pub start_lsn: String,
    pub start_timeline: u32,
    pub end_lsn: String,
    pub end_timeline: u32,
    pub tablespaces: Vec<TablespaceArchive>,
}

/// Why a base backup over the replication connection failed.
#[derive(Debug)]
pub enum ReplicationError {
    /// No host could be reached (the last one's reason).
    Connect(String),
    /// The server's error message, with its SQLSTATE.
    Server {
        code: String,
        message: String,
    },
    Io(io::Error),
    Protocol(String),
    /// The receiving side of the archives went away (its error is the one to report).
    ReceiverGone,
    /// `channel_binding=require`, and the server's login could not bind.
    ChannelBindingRefused,
}

impl std::fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicationError::Server { message, .. } | ReplicationError::Connect(message) => {
                f.write_str(message)
            }
            ReplicationError::Io(e) => write!(f, "the connection failed: {e}"),
            ReplicationError::Protocol(m) => write!(f, "unexpected reply from the server: {m}"),
            ReplicationError::ReceiverGone => f.write_str("the backup stopped reading the archives"),
            ReplicationError::ChannelBindingRefused => {
                f.write_str("the server did not use channel binding, which channel_binding=require demands")
            }
        }
    }
}

impl From<io::Error> for ReplicationError {
    fn from(e: io::Error) -> Self {
        ReplicationError::Io(e)
    }
}

/// An authenticated physical replication connection.
pub struct ReplicationConnection<S = Transport> {
    transport: S,
    read: BytesMut,
    out: BytesMut,
    /// `Some` on TLS: the `tls-server-end-point` data, if the certificate has one.
    tls_binding: Option<Option<Vec<u8>>>,
}

/// Opens a replication connection to the first of `config`'s hosts that takes it.
pub(super) async fn connect(
    config: &Config,
    tls_mode: SslMode,
    tls: Option<RustlsConnect>,
) -> Result<ReplicationConnection, ReplicationError> {
    let server_error = std::sync::Mutex::new(None);
    let server_error = &server_error;
    let opened = socket::connect_first(config, tls_mode, tls, |transport| async move {
        let tls_binding = transport.tls_binding();
        let mut conn = ReplicationConnection::new(transport);
        conn.tls_binding = tls_binding;
        match conn.start_up(config).await {
            Ok(()) => Ok(conn),
            Err(e) => {
                let text = e.to_string();
                // Keep the server's own word (code and all) over a later host's socket error.
                if !matches!(e, ReplicationError::Io(_)) {
                    *server_error.lock().expect("error slot") = Some(e);
                }
                Err(text)
            }
        }
    })
    .await;
    opened.map_err(|text| {
        server_error.lock().expect("error slot").take().unwrap_or(ReplicationError::Connect(text))
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReplicationConnection<S> {
    fn new(transport: S) -> Self {
        ReplicationConnection {
            transport,
            read: BytesMut::with_capacity(1 << 17),
            out: BytesMut::new(),
            tls_binding: None,
        }
    }

    async fn start_up(&mut self, config: &Config) -> Result<(), ReplicationError> {
        let user = config.get_user().unwrap_or("postgres");
        let mut params = vec![("user", user), ("replication", "true")];
        if let Some(name) = config.get_application_name() {
            params.push(("application_name", name));
        }
        frontend::startup_message(params, &mut self.out)?;
        self.flush().await?;
        let password = config.get_password();
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next().await? {
                // trust and cert logins send no password to bind.
                Message::AuthenticationOk if scram.is_none() => refuse_unbound(config)?,
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    refuse_unbound(config)?;
                    let password = password.ok_or_else(no_password)?;
                    frontend::password_message(password, &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    refuse_unbound(config)?;
                    let password = password.ok_or_else(no_password)?;
                    let hash =
                        postgres_protocol::authentication::md5_hash(user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let password = password.ok_or_else(no_password)?;
                    let mut mechanisms = body.mechanisms();
                    let (mut scram_offered, mut plus_offered) = (false, false);
                    while let Some(m) = mechanisms.next()? {
                        scram_offered |= m == sasl::SCRAM_SHA_256;
                        plus_offered |= m == sasl::SCRAM_SHA_256_PLUS;
                    }
                    let (mechanism, binding) = choose_scram(
                        scram_offered,
                        plus_offered,
                        self.tls_binding.as_ref(),
                        config.get_channel_binding(),
                    )?;
                    let state = ScramSha256::new(password, binding);
                    frontend::sasl_initial_response(mechanism, state.message(), &mut self.out)?;
                    self.flush().await?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| out_of_order("SASL continue"))?;
                    state.update(body.data())?;
                    frontend::sasl_response(state.message(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| out_of_order("SASL final"))?;
                    state.finish(body.data())?;
                }
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ParameterStatus(_) | Message::BackendKeyData(_) => {}
                Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential => {
                    return Err(ReplicationError::Protocol(
                        "the server asks for GSSAPI/SSPI/Kerberos authentication, which cairn does not speak; use password, SCRAM or certificate authentication for replication".into(),
                    ));
                }
                _ => return Err(out_of_order("a message during start-up")),
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let out = self.out.split();
        self.transport.write_all(&out).await?;
        self.transport.flush().await
    }

    /// The server's next message.
    async fn next(&mut self) -> io::Result<Message> {
        loop {
            if let Some(message) = Message::parse(&mut self.read)? {
                return Ok(message);
            }
            if self.read.capacity() - self.read.len() < 1 << 16 {
                self.read.reserve(1 << 17);
            }
            if self.transport.read_buf(&mut self.read).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
        }
    }

    /// Runs `BASE_BACKUP` (`command`, in the syntax of the server's
    /// version), sending the archives to `events` as they arrive.
    /// `server_version_num` picks the stream format.
    pub async fn base_backup(
        mut self,
        command: &str,
        server_version_num: u32,
        events: mpsc::Sender<BaseBackupEvent>,
    ) -> Result<BaseBackupResult, ReplicationError> {
        frontend::query(command, &mut self.out)?;
        self.flush().await?;
        let send = |event| {
            let events = events.clone();
            async move { events.send(event).await.map_err(|_| ReplicationError::ReceiverGone) }
        };
        let one_copy = server_version_num >= 150_000;
        let mut result_sets: Vec<Vec<Vec<Option<String>>>> = Vec::new();
        let mut in_result = false;
        let mut copies = 0usize;
        let mut archive_open = false;
        let mut in_manifest = false;
        let mut tablespaces: Vec<Option<TablespaceArchive>> = Vec::new();
        loop {
            match self.next().await? {
                Message::RowDescription(_) => {
                    result_sets.push(Vec::new());
                    in_result = true;
                }
                Message::DataRow(row) if in_result => {
                    let buffer = row.buffer();
                    let values: Vec<Option<String>> = row
                        .ranges()
                        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()?;
                    result_sets.last_mut().expect("a result set").push(values);
                }
                Message::CommandComplete(_) => {
                    if in_result && result_sets.len() == 2 {
                        tablespaces = parse_tablespaces(&result_sets[1])?;
                    }
                    in_result = false;
                }
                Message::CopyOutResponse(_) => {
                    if result_sets.len() < 2 {
                        return Err(out_of_order("COPY before the tablespace list"));
                    }
                    if !one_copy {
                        let archive = tablespaces
                            .get(copies)
                            .cloned()
                            .ok_or_else(|| out_of_order("more archives than tablespaces"))?;
                        send(BaseBackupEvent::Archive(archive)).await?;
                        archive_open = true;
                    }
                    copies += 1;
                }
                Message::CopyData(body) => {
                    let mut data = body.into_bytes();
                    if !one_copy {
                        send(BaseBackupEvent::Data(data)).await?;
                        continue;
                    }
                    if data.is_empty() {
                        return Err(out_of_order("an empty CopyData message"));
                    }
                    match data.get_u8() {
                        b'n' => {
                            if archive_open {
                                send(BaseBackupEvent::ArchiveEnd).await?;
                            }
                            let (_name, location) = archive_header(&data)?;
                            let archive = if location.is_empty() {
                                None
                            } else {
                                let known = tablespaces.iter().flatten().find(|t| t.location == location);
                                Some(known.cloned().ok_or_else(|| {
                                    out_of_order(&format!("an archive for unlisted tablespace {location}"))
                                })?)
                            };
                            send(BaseBackupEvent::Archive(archive)).await?;
                            archive_open = true;
                        }
                        b'd' if in_manifest => {}
                        b'd' if archive_open => send(BaseBackupEvent::Data(data)).await?,
                        b'd' => return Err(out_of_order("archive data before any archive")),
                        b'p' => {}
                        b'm' => {
                            if archive_open {
                                send(BaseBackupEvent::ArchiveEnd).await?;
                                archive_open = false;
                            }
                            in_manifest = true;
                        }
                        other => {
                            return Err(ReplicationError::Protocol(format!(
                                "unknown base backup message type {:?}",
                                other as char
                            )));
                        }
                    }
                }
                Message::CopyDone => {
                    if archive_open {
                        send(BaseBackupEvent::ArchiveEnd).await?;
                        archive_open = false;
                    }
                }
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                Message::ReadyForQuery(_) => break,
                Message::ParameterStatus(_) => {}
                _ => return Err(out_of_order("a message during the base backup")),
            }
        }
        let position = |set: Option<&Vec<Vec<Option<String>>>>, what: &str| {
            let row = set.and_then(|rows| rows.first()).ok_or_else(|| out_of_order(what))?;
            let lsn = row.first().cloned().flatten().ok_or_else(|| out_of_order(what))?;
            let timeline = row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| out_of_order(what))?;
            Ok::<_, ReplicationError>((lsn, timeline))
        };
        let (start_lsn, start_timeline) = position(result_sets.first(), "no start position")?;
        let (end_lsn, end_timeline) = position(result_sets.get(2), "no end position")?;
        if copies == 0 {
            return Err(out_of_order("no archive"));
        }
        Ok(BaseBackupResult {
            start_lsn,
            start_timeline,
            end_lsn,
            end_timeline,
            tablespaces: tablespaces.into_iter().flatten().collect(),
        })
    }
}

/// The SCRAM variant and channel binding to log in with, as libpq and
/// tokio-postgres choose: SCRAM-SHA-256-PLUS whenever the server offers it
/// and this TLS connection has binding data (unless `channel_binding=disable`);
/// with `channel_binding=require`, nothing less.
fn choose_scram(
    scram_offered: bool,
    plus_offered: bool,
    tls_binding: Option<&Option<Vec<u8>>>,
    setting: ChannelBindingSetting,
) -> Result<(&'static str, sasl::ChannelBinding), ReplicationError> {
    let binding = tls_binding.cloned().flatten().filter(|_| setting != ChannelBindingSetting::Disable);
    let chosen = match (plus_offered, binding) {
        (true, Some(hash)) => {
            return Ok((sasl::SCRAM_SHA_256_PLUS, sasl::ChannelBinding::tls_server_end_point(hash)));
        }
        // The client could bind but the server did not offer to: say so, so
        // a server stripped of its offer by a man in the middle notices.
        (false, Some(_)) if scram_offered => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
        _ if scram_offered || plus_offered => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        _ => return Err(ReplicationError::Protocol("the server offers no SCRAM-SHA-256".into())),
    };
    if setting == ChannelBindingSetting::Require {
        return Err(ReplicationError::ChannelBindingRefused);
    }
    Ok(chosen)
}

/// The tablespace list: `(spcoid, spclocation, size)` rows, the data
/// directory's own as nulls.
fn parse_tablespaces(
    rows: &[Vec<Option<String>>],
) -> Result<Vec<Option<TablespaceArchive>>, ReplicationError> {
    rows.iter()
        .map(|row| match (row.first().cloned().flatten(), row.get(1).cloned().flatten()) {
            (Some(oid), Some(location)) => {
                let oid = oid.parse().map_err(|_| out_of_order("a tablespace oid that is not a number"))?;
                Ok(Some(TablespaceArchive { oid, location }))
            }
            _ => Ok(None),
        })
        .collect()
}

/// A new-archive message's two strings: the archive's name and the tablespace's location.
fn archive_header(data: &[u8]) -> Result<(String, String), ReplicationError> {
    let mut parts = data.split(|b| *b == 0);
    match (parts.next(), parts.next()) {
        (Some(name), Some(location)) => {
            Ok((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(location).into_owned()))
        }
        _ => Err(out_of_order("a malformed new-archive message")),
    }
}

fn fields(fields: ErrorFields<'_>) -> HashMap<u8, String> {
    let mut map = HashMap::new();
    let mut fields = fields;
    while let Ok(Some(field)) = fields.next() {
        map.insert(field.type_(), String::from_utf8_lossy(field.value_bytes()).into_owned());
    }
    map
}

fn server_error(body: ErrorFields<'_>) -> ReplicationError {
    let map = fields(body);
    let mut message = map.get(&b'M').cloned().unwrap_or_else(|| "unknown error".into());
    if let Some(detail) = map.get(&b'D') {
        message.push_str(&format!(" ({detail})"));
    }
    ReplicationError::Server { code: map.get(&b'C').cloned().unwrap_or_default(), message }
}

fn log_notice(body: ErrorFields<'_>) {
    let map = fields(body);
    let message = map.get(&b'M').cloned().unwrap_or_default();
    tracing::warn!(
        severity = map.get(&b'S').map(String::as_str).unwrap_or("NOTICE"),
        "PostgreSQL: {message}"
    );
}

/// A login without SCRAM cannot be bound to the TLS session.
fn refuse_unbound(config: &Config) -> Result<(), ReplicationError> {
    if config.get_channel_binding() == ChannelBindingSetting::Require {
        return Err(ReplicationError::ChannelBindingRefused);
    }
    Ok(())
}

fn no_password() -> ReplicationError {
    ReplicationError::Server {
        code: "28P01".into(),
        message: "the server asks for a password and none was given".into(),
    }
}

fn out_of_order(what: &str) -> ReplicationError {
    ReplicationError::Protocol(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_lists_and_archive_headers_decode() {
        let rows =
            vec![vec![Some("16390".to_string()), Some("/srv/ts1".to_string()), None], vec![None, None, None]];
        let list = parse_tablespaces(&rows).unwrap();
        assert_eq!(list, vec![Some(TablespaceArchive { oid: 16390, location: "/srv/ts1".into() }), None]);
        assert!(parse_tablespaces(&[vec![Some("x".into()), Some("/a".into())]]).is_err());
        assert_eq!(
            archive_header(b"16390.tar\0/srv/ts1\0").unwrap(),
            ("16390.tar".into(), "/srv/ts1".into())
        );
        assert_eq!(archive_header(b"base.tar\0\0").unwrap(), ("base.tar".into(), String::new()));
        assert!(archive_header(b"base.tar").is_err());
    }

    #[test]
    fn scram_binds_to_tls_whenever_it_can() {
        use ChannelBindingSetting::{Disable, Prefer, Require};
        let hash = Some(Some(vec![1u8; 32]));
        let choose = |scram, plus, tls: &Option<Option<Vec<u8>>>, setting| {
            choose_scram(scram, plus, tls.as_ref(), setting)
                .map(|(mechanism, _)| mechanism)
                .map_err(|e| e.to_string())
        };
        assert_eq!(choose(true, true, &hash, Prefer), Ok(sasl::SCRAM_SHA_256_PLUS));
        assert_eq!(choose(true, true, &hash, Require), Ok(sasl::SCRAM_SHA_256_PLUS));
        assert_eq!(choose(true, true, &hash, Disable), Ok(sasl::SCRAM_SHA_256));
        assert_eq!(choose(true, false, &hash, Prefer), Ok(sasl::SCRAM_SHA_256));
        assert_eq!(choose(true, false, &None, Prefer), Ok(sasl::SCRAM_SHA_256));
        assert_eq!(
            choose(true, true, &Some(None), Prefer),
            Ok(sasl::SCRAM_SHA_256),
            "a certificate without binding data"
        );
        assert!(choose(true, false, &None, Require).unwrap_err().contains("channel_binding=require"));
        assert!(choose(true, false, &hash, Require).is_err(), "an offer stripped of PLUS is not enough");
        assert!(choose(false, false, &hash, Prefer).is_err());
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A result set of text columns, as the server sends one: RowDescription, DataRows, CommandComplete.
    fn result_set(columns: &[&str], rows: &[Vec<Option<&str>>]) -> Vec<u8> {
        let mut desc = (columns.len() as i16).to_be_bytes().to_vec();
        for name in columns {
            desc.extend_from_slice(name.as_bytes());
            desc.push(0);
            desc.extend_from_slice(&[
                0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
            ]);
        }
        let mut wire = message(b'T', &desc);
        for row in rows {
            let mut body = (row.len() as i16).to_be_bytes().to_vec();
            for value in row {
                match value {
                    Some(v) => {
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend_from_slice(v.as_bytes());
                    }
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            wire.extend(message(b'D', &body));
        }
        wire.extend(message(b'C', b"SELECT\0"));
        wire
    }

    fn copy_data(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(payload);
        message(b'd', &body)
    }

    /// Runs a base backup against `wire` (what the server says) and returns
    /// the outcome and the archives as (tablespace oid, bytes).
    async fn replay(
        wire: Vec<u8>,
        version: u32,
    ) -> (Result<BaseBackupResult, ReplicationError>, Vec<(Option<u32>, Vec<u8>)>) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            server.write_all(&wire).await.unwrap();
            // The client's query, then the server hangs up.
            let mut query = [0u8; 17];
            server.read_exact(&mut query).await.unwrap();
            assert_eq!(&query[5..], b"BASE_BACKUP\0");
        });
        let conn = ReplicationConnection::new(client);
        let (tx, mut rx) = mpsc::channel(2);
        let collect = async {
            let mut archives: Vec<(Option<u32>, Vec<u8>)> = Vec::new();
            let mut open = false;
            while let Some(event) = rx.recv().await {
                match event {
                    BaseBackupEvent::Archive(t) => {
                        assert!(!open, "archives do not nest");
                        archives.push((t.map(|t| t.oid), Vec::new()));
                        open = true;
                    }
                    BaseBackupEvent::Data(d) => {
                        archives.last_mut().expect("an archive").1.extend_from_slice(&d)
                    }
                    BaseBackupEvent::ArchiveEnd => open = false,
                }
            }
            archives
        };
        let (result, archives) = tokio::join!(conn.base_backup("BASE_BACKUP", version, tx), collect);
        server.await.unwrap();
        (result, archives)
    }

    fn positions_and_tablespaces() -> Vec<u8> {
        let mut wire = result_set(&["recptr", "tli"], &[vec![Some("0/2000028"), Some("1")]]);
        wire.extend(result_set(
            &["spcoid", "spclocation", "size"],
            &[vec![Some("16390"), Some("/srv/ts"), None], vec![None, None, None]],
        ));
        wire
    }

    fn end_position() -> Vec<u8> {
        let mut wire = result_set(&["recptr", "tli"], &[vec![Some("0/2000100"), Some("1")]]);
        wire.extend(message(b'Z', b"I"));
        wire
    }

    #[tokio::test]
    async fn archives_arrive_in_one_copy_from_postgresql_15() {
        let mut wire = positions_and_tablespaces();
        wire.extend(message(b'H', &[0, 0, 0]));
        wire.extend(copy_data(b'n', b"16390.tar\0/srv/ts\0"));
        wire.extend(copy_data(b'd', b"tablespace "));
        wire.extend(copy_data(b'p', &7u64.to_be_bytes()));
        wire.extend(copy_data(b'd', b"bytes"));
        wire.extend(copy_data(b'n', b"base.tar\0\0"));
        wire.extend(copy_data(b'd', b"base bytes"));
        wire.extend(copy_data(b'm', b""));
        wire.extend(copy_data(b'd', b"{\"manifest\": 1}"));
        wire.extend(message(b'c', b""));
        wire.extend(end_position());
        let (result, archives) = replay(wire, 150_004).await;
        let result = result.unwrap();
        assert_eq!(
            archives,
            vec![(Some(16390), b"tablespace bytes".to_vec()), (None, b"base bytes".to_vec())],
            "progress and manifest messages are not archive data"
        );
        assert_eq!((result.start_lsn.as_str(), result.start_timeline), ("0/2000028", 1));
        assert_eq!((result.end_lsn.as_str(), result.end_timeline), ("0/2000100", 1));
        assert_eq!(result.tablespaces, vec![TablespaceArchive { oid: 16390, location: "/srv/ts".into() }]);
    }

    #[tokio::test]
    async fn archives_arrive_one_copy_each_before_postgresql_15() {
        let mut wire = positions_and_tablespaces();
        for data in [&b"tablespace bytes"[..], b"base bytes"] {
            wire.extend(message(b'H', &[0, 0, 0]));
            wire.extend(message(b'd', &data[..4]));
            wire.extend(message(b'd', &data[4..]));
            wire.extend(message(b'c', b""));
        }
        wire.extend(end_position());
        let (result, archives) = replay(wire, 140_010).await;
        assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
        assert_eq!(
            archives,
            vec![(Some(16390), b"tablespace bytes".to_vec()), (None, b"base bytes".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_server_error_mid_backup_is_the_error_reported() {
        let mut wire = positions_and_tablespaces();
        wire.extend(message(b'H', &[0, 0, 0]));
        wire.extend(copy_data(b'n', b"base.tar\0\0"));
        wire.extend(copy_data(b'd', b"partial"));
        wire.extend(message(b'E', b"SERROR\0C58P01\0Mcould not stat file \"base/1/1259\"\0\0"));
        let (result, archives) = replay(wire, 150_004).await;
        match result {
            Err(ReplicationError::Server { code, message }) => {
                assert_eq!(code, "58P01");
                assert!(message.contains("could not stat file"), "{message}");
            }
            other => panic!("expected the server's error, got {:?}", other.map_err(|e| e.to_string())),
        }
        assert_eq!(archives.len(), 1, "the archive began and was never ended");

        // A connection that closes without a word is an error too, never a short backup.
        let mut wire = positions_and_tablespaces();
        wire.extend(message(b'H', &[0, 0, 0]));
        wire.extend(copy_data(b'n', b"base.tar\0\0"));
        let (result, _) = replay(wire, 150_004).await;
        assert!(matches!(result, Err(ReplicationError::Io(_))), "{:?}", result.map_err(|e| e.to_string()));
    }
}
