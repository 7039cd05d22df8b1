//! Sockets cairn opens itself, for connections tokio-postgres cannot
//! make on its own: the copy tap's (which must see the plaintext under
//! TLS) and physical replication's (a start-up parameter tokio-postgres
//! does not send). Host list, `hostaddr`, timeouts, TCP keepalives,
//! `SSLRequest` and the TLS handshake follow the target's settings, as for
//! [`PgTarget::connect`](super::PgTarget::connect).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::Config;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use super::tls::{RustlsConnect, RustlsStream};

/// Opens a socket to each of `config`'s hosts in turn and runs `handshake`
/// on it, until one succeeds; the last failure otherwise. With `tls`
/// (never for `sslmode=disable`), TCP connections ask for TLS and, under
/// `Prefer`, go on without it when the server declines.
pub(super) async fn connect_first<T, F, Fut>(
    config: &Config,
    tls_mode: SslMode,
    tls: Option<RustlsConnect>,
    mut handshake: F,
) -> Result<T, String>
where
    F: FnMut(Transport) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let timeout = config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(15));
    let ports = config.get_ports().to_vec();
    let mut last_error = String::from("no host to connect to");
    let keepalive = keepalive(config);
    let (hosts, addresses) = (config.get_hosts(), config.get_hostaddrs());
    for i in 0..hosts.len().max(addresses.len()) {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let address = addresses.get(i).copied();
        // `hostaddr` alone names the server by its address, as in libpq.
        let host = match (hosts.get(i), address) {
            (Some(host), _) => host.clone(),
            (None, Some(ip)) => Host::Tcp(ip.to_string()),
            (None, None) => break,
        };
        let opened = tokio::time::timeout(
            timeout,
            open(&host, address, port, keepalive.as_ref(), tls_mode, tls.clone()),
        )
        .await;
        let transport = match opened {
            Ok(Ok(transport)) => transport,
            Ok(Err(e)) => {
                last_error = e;
                continue;
            }
            Err(_) => {
                last_error = format!("no answer within {} s", timeout.as_secs());
                continue;
            }
        };
        match handshake(transport).await {
            Ok(connected) => return Ok(connected),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// The URL's keepalive settings (on by default, as in libpq): a copy
/// waiting between jobs behind a NAT or firewall must not be dropped
/// silently, and a server host that died must not leave a read hanging.
fn keepalive(config: &Config) -> Option<socket2::TcpKeepalive> {
    if !config.get_keepalives() {
        return None;
    }
    let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        keepalive = keepalive.with_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        keepalive = keepalive.with_retries(retries);
    }
    Some(keepalive)
}

async fn open(
    host: &Host,
    address: Option<std::net::IpAddr>,
    port: u16,
    keepalive: Option<&socket2::TcpKeepalive>,
    tls_mode: SslMode,
    tls: Option<RustlsConnect>,
) -> Result<Transport, String> {
    let name = match host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let socket = UnixStream::connect(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(Transport::Unix(socket));
        }
        Host::Tcp(name) => name.clone(),
    };
    // `hostaddr` saves the lookup; the name still identifies the server for TLS.
    let connected = match address {
        Some(ip) => TcpStream::connect((ip, port)).await,
        None => TcpStream::connect((name.as_str(), port)).await,
    };
    let mut socket = connected.map_err(|e| format!("{name}:{port}: {e}"))?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    if let Some(keepalive) = keepalive {
        socket2::SockRef::from(&socket).set_tcp_keepalive(keepalive).map_err(|e| e.to_string())?;
    }
    let Some(mut tls) = tls else {
        return Ok(Transport::Tcp(socket));
    };
    // SSLRequest: length 8, then the request code 1234.5679.
    socket.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.map_err(|e| e.to_string())?;
    match socket.read_u8().await.map_err(|e| e.to_string())? {
        b'S' => {
            let connect =
                MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls, &name).map_err(|e| e.to_string())?;
            let stream = connect.connect(socket).await.map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(Transport::Tls(Box::new(stream)))
        }
        b'N' if tls_mode == SslMode::Prefer => Ok(Transport::Tcp(socket)),
        b'N' => Err("the server does not accept TLS connections".into()),
        other => Err(format!("unexpected answer {other:#x} to the TLS request")),
    }
}

pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<RustlsStream<TcpStream>>),
}

impl Transport {
    /// The channel binding data of a TLS connection (`Some(None)`: TLS, but
    /// no binding for its certificate); `None` without TLS.
    pub(super) fn tls_binding(&self) -> Option<Option<Vec<u8>>> {
        match self {
            Transport::Tls(stream) => Some(stream.server_end_point()),
            Transport::Tcp(_) | Transport::Unix(_) => None,
        }
    }
}

macro_rules! by_transport {
    ($self:expr, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Transport::Tcp($inner) => $call,
            Transport::Unix($inner) => $call,
            Transport::Tls($inner) => $call,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        by_transport!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        by_transport!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        by_transport!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        by_transport!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
