//! Connections whose `COPY … TO STDOUT` rows bypass tokio-postgres.
//!
//! The server sends every row of a text `COPY` as its own `CopyData`
//! message. tokio-postgres turns each one into a parsed message, a
//! reference-counted `Bytes` and a trip through a channel and two streams:
//! about 75 ns per ~100-byte row, a fifth of cairn's CPU in a dump of
//! pgbench's five million accounts, on machines where the server's own
//! `COPY` work competes for the same cores. A [`Tapped`] transport sits
//! under tokio-postgres instead and, while a copy is armed, lifts the
//! `CopyData` payloads out of the byte stream as it is read and hands them
//! over in 256 KiB batches; tokio-postgres still sees the rest of the
//! conversation (`CopyOutResponse`, `CopyDone`, errors, `ReadyForQuery`) and
//! keeps doing authentication, errors and transaction state.
//!
//! Because the tap must see plaintext, such connections are set up by
//! cairn (`super::socket`: socket, `SSLRequest`, TLS handshake) and given
//! to tokio-postgres with TLS already done (and its channel binding); the settings and their checks are the same as for
//! [`PgTarget::connect`](super::PgTarget::connect), which the dump's first
//! connection uses, so a bad URL or certificate is reported from there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::channel::mpsc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{SslMode, SslNegotiation};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config, Connection, NoTls};

use super::socket;
use super::tls::RustlsConnect;
use crate::PgError;

/// Copied rows are handed over in batches of about this many bytes.
const BATCH: usize = 256 << 10;
/// Batches in flight between the connection's task and the copy's reader;
/// when they are all waiting, the connection stops reading the socket.
const BATCHES_IN_FLIGHT: usize = 4;
/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 128 << 10;

/// What the tap hands to the copy's reader.
enum TapEvent {
    Rows(Bytes),
    /// The copy ended: `true` after `CopyDone`, `false` when the server
    /// reported an error instead (tokio-postgres reports which).
    End(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    Idle,
    /// A `COPY … TO STDOUT` was sent; its `CopyOutResponse` has not arrived.
    Armed,
    Copying,
}

/// The reading end of a tapped connection: one copy at a time.
pub struct CopyTap {
    state: Arc<Mutex<CopyState>>,
    events: mpsc::Receiver<TapEvent>,
    /// Whether the current copy ended with an error message.
    server_failed: AtomicBool,
}

impl CopyTap {
    /// Runs `copy_sql` (a `COPY … TO STDOUT`) and gives its rows, in
    /// batches, to `consume`. The statement and the consumer run together
    /// (the connection stops reading while batches wait); when the server
    /// fails the copy, its error is the one returned.
    pub async fn copy_out<'a, T, F, Fut>(
        &'a mut self,
        client: &Client,
        copy_sql: &str,
        what: &str,
        consume: F,
    ) -> Result<T, PgError>
    where
        F: FnOnce(futures::stream::BoxStream<'a, Result<Bytes, io::Error>>) -> Fut,
        Fut: std::future::Future<Output = Result<T, PgError>>,
    {
        *self.state.lock().expect("tap state") = CopyState::Armed;
        let CopyTap { events, server_failed, .. } = self;
        server_failed.store(false, Ordering::Relaxed);
        let server_failed = &*server_failed;
        let statement = async {
            let rows = client.copy_out(copy_sql).await.map_err(PgError::query(what))?;
            let mut rows = std::pin::pin!(rows);
            if let Some(row) = rows.next().await {
                row.map_err(PgError::query(what))?;
                // Every row belongs to the tap while a copy is armed; one
                // here would be missing from the dump.
                return Err(PgError::io(what)(io::Error::other("a row arrived outside the copy tap")));
            }
            Ok(())
        };
        // A copy the server ended with an error just ends the rows: the
        // statement then fails with the server's own reason.
        let rows = futures::stream::unfold(Some(events), move |events| async move {
            let events = events?;
            match events.next().await {
                Some(TapEvent::Rows(rows)) => Some((Ok(rows), Some(events))),
                Some(TapEvent::End(true)) => None,
                Some(TapEvent::End(false)) => {
                    server_failed.store(true, Ordering::Relaxed);
                    None
                }
                None => Some((Err(io::Error::other("the connection closed during the copy")), None)),
            }
        });
        let ((), consumed) = futures::future::try_join(statement, consume(Box::pin(rows))).await?;
        if server_failed.load(Ordering::Relaxed) {
            // The statement cannot have succeeded after an error message; never
            // keep a copy cut short.
            return Err(PgError::io(what)(io::Error::other("the server ended the copy with an error")));
        }
        Ok(consumed)
    }
}

/// Opens a connection to the first of `config`'s hosts that answers, with a
/// tap on its plaintext (see [`socket::connect_first`] for TLS).
pub(super) async fn connect(
    config: &Config,
    tls_mode: SslMode,
    tls: Option<RustlsConnect>,
) -> Result<(Client, CopyTap), String> {
    socket::connect_first(config, tls_mode, tls, |transport| async move {
        let binding = transport.tls_binding();
        let (events_tx, events) = mpsc::channel(BATCHES_IN_FLIGHT);
        let state = Arc::new(Mutex::new(CopyState::Idle));
        let mut tapped = Tapped::new(transport, state.clone(), events_tx);
        let mut config = config.clone();
        let client = match binding {
            None => {
                config.ssl_mode(SslMode::Disable);
                spawn(config.connect_raw(tapped, NoTls).await)?
            }
            // TLS is done underneath: tokio-postgres is told to "negotiate"
            // it directly (no SSLRequest), through a connector that only
            // hands over the channel binding, so SCRAM-SHA-256-PLUS and
            // `channel_binding=require` work as on any other connection.
            Some(binding) => {
                tapped.binding = binding;
                config.ssl_mode(SslMode::Require).ssl_negotiation(SslNegotiation::Direct);
                spawn(config.connect_raw(tapped, AlreadyEncrypted).await)?
            }
        };
        Ok((client, CopyTap { state, events, server_failed: AtomicBool::new(false) }))
    })
    .await
}

fn spawn<S, T>(connected: Result<(Client, Connection<S, T>), tokio_postgres::Error>) -> Result<Client, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = connected.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed with an error");
        }
    });
    Ok(client)
}

/// tokio-postgres' TLS hook for a [`Tapped`] stream that is encrypted
/// already: it hands the stream back, which reports the channel binding.
struct AlreadyEncrypted;

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<Tapped<T>> for AlreadyEncrypted {
    type Stream = Tapped<T>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Tapped<T>, std::convert::Infallible>>;

    fn connect(self, stream: Tapped<T>) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsStream for Tapped<T> {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.binding {
            Some(hash) => ChannelBinding::tls_server_end_point(hash.clone()),
            None => ChannelBinding::none(),
        }
    }
}

/// The message being read: where its bytes go and how many are still due.
#[derive(Debug, Clone, Copy)]
struct Current {
    to_tap: bool,
    remaining: usize,
}

/// A transport that takes `CopyData` payloads out of the server's messages
/// while a copy is armed (see the module documentation).
struct Tapped<T> {
    inner: T,
    state: Arc<Mutex<CopyState>>,
    events: mpsc::Sender<TapEvent>,
    /// Bytes read from the server; `raw[read_pos..filled]` are not sorted yet.
    raw: Box<[u8]>,
    read_pos: usize,
    filled: usize,
    /// Message bytes for tokio-postgres, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    current: Option<Current>,
    rows: BytesMut,
    /// Events waiting for room in the channel.
    outbox: std::collections::VecDeque<TapEvent>,
    /// The TLS session's `tls-server-end-point` data, for SCRAM-SHA-256-PLUS.
    binding: Option<Vec<u8>>,
}

impl<T> Tapped<T> {
    fn new(inner: T, state: Arc<Mutex<CopyState>>, events: mpsc::Sender<TapEvent>) -> Tapped<T> {
        Tapped {
            inner,
            state,
            events,
            raw: vec![0; READ_BUFFER].into_boxed_slice(),
            read_pos: 0,
            filled: 0,
            out: Vec::new(),
            out_pos: 0,
            current: None,
            rows: BytesMut::new(),
            outbox: Default::default(),
            binding: None,
        }
    }

    /// Sorts the raw bytes into rows for the tap and messages for tokio-postgres.
    fn sort(&mut self) {
        let shared = self.state.clone();
        let mut state = shared.lock().expect("tap state");
        loop {
            let available = &self.raw[self.read_pos..self.filled];
            if let Some(current) = &mut self.current {
                let n = current.remaining.min(available.len());
                if n == 0 && current.remaining > 0 {
                    break;
                }
                if current.to_tap {
                    if self.rows.capacity() < BATCH {
                        // One allocation per batch, not a chain of doublings.
                        self.rows.reserve(BATCH + READ_BUFFER);
                    }
                    self.rows.extend_from_slice(&available[..n]);
                } else {
                    self.out.extend_from_slice(&available[..n]);
                }
                current.remaining -= n;
                self.read_pos += n;
                if current.remaining == 0 {
                    self.current = None;
                }
                if self.rows.len() >= BATCH {
                    self.flush_rows();
                }
                continue;
            }
            let Some(&header) = available.first_chunk::<5>() else { break };
            let tag = header[0];
            let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let body = length.saturating_sub(4);
            let to_tap = tag == b'd' && *state == CopyState::Copying;
            match (tag, *state) {
                (b'H', CopyState::Armed) => *state = CopyState::Copying,
                (b'c', CopyState::Copying) => {
                    *state = CopyState::Idle;
                    self.flush_rows();
                    self.outbox.push_back(TapEvent::End(true));
                }
                // Not `ReadyForQuery`: the previous statement's may still be
                // on its way when the next copy is armed.
                (b'E', CopyState::Armed | CopyState::Copying) => {
                    *state = CopyState::Idle;
                    self.rows.clear();
                    self.outbox.push_back(TapEvent::End(false));
                }
                _ => {}
            }
            if !to_tap {
                self.out.extend_from_slice(&header);
            }
            self.read_pos += 5;
            self.current = Some(Current { to_tap, remaining: body });
        }
    }

    fn flush_rows(&mut self) {
        if !self.rows.is_empty() {
            self.outbox.push_back(TapEvent::Rows(self.rows.split().freeze()));
        }
    }

    /// Moves waiting events into the channel; `Pending` while it is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    // The reader may be gone (the copy was abandoned); the rows have nowhere to go.
                    let _ = self.events.start_send(event);
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => {
                    self.outbox.push_front(event);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tapped<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Messages for tokio-postgres first: they may be the error that ends a copy.
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // Backpressure: no more reading while the copy's reader is behind.
            if this.poll_send(cx).is_pending() {
                return Poll::Pending;
            }
            // What is left unsorted is at most a partial message header.
            this.raw.copy_within(this.read_pos..this.filled, 0);
            this.filled -= this.read_pos;
            this.read_pos = 0;
            let mut read = ReadBuf::new(&mut this.raw[this.filled..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let got = read.filled().len();
            this.filled += got;
            match polled {
                Poll::Ready(Ok(())) if got == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.sort(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Rows sorted from earlier reads should not wait for the next packet.
                    this.flush_rows();
                    if this.poll_send(cx).is_pending() || this.out_pos < this.out.len() {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tapped<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What tokio-postgres would read, and the rows and ends the tap
    /// delivered, for `wire` arriving in pieces of `piece` bytes.
    async fn run(wire: &[u8], piece: usize, arm: bool) -> (Vec<u8>, Vec<u8>, Vec<bool>) {
        let (mut server, client) = tokio::io::duplex(1 << 20);
        let (tx, mut rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        let state = Arc::new(Mutex::new(if arm { CopyState::Armed } else { CopyState::Idle }));
        let mut tapped = Tapped::new(client, state, tx);
        let wire = wire.to_vec();
        let writer = tokio::spawn(async move {
            for part in wire.chunks(piece) {
                server.write_all(part).await.unwrap();
                server.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let events = tokio::spawn(async move {
            let (mut rows, mut ends) = (Vec::new(), Vec::new());
            while let Some(event) = rx.next().await {
                match event {
                    TapEvent::Rows(b) => rows.extend_from_slice(&b),
                    TapEvent::End(ok) => ends.push(ok),
                }
            }
            (rows, ends)
        });
        let mut passed = Vec::new();
        let reader = async {
            let mut buf = [0u8; 7];
            loop {
                let n = tapped.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                passed.extend_from_slice(&buf[..n]);
            }
        };
        let (_, w) = tokio::join!(reader, writer);
        w.unwrap();
        drop(tapped);
        let (rows, ends) = events.await.unwrap();
        (passed, rows, ends)
    }

    #[tokio::test]
    async fn copy_rows_are_lifted_out_however_the_bytes_arrive() {
        let rows: Vec<Vec<u8>> = (0..50).map(|i| format!("{i}\trow number {i}\n").into_bytes()).collect();
        let mut wire = message(b'1', b"");
        wire.extend(message(b'2', b""));
        wire.extend(message(b'H', &[0, 0, 2, 0, 0, 0, 0]));
        let mut expected_pass = wire.clone();
        for row in &rows {
            wire.extend(message(b'd', row));
        }
        let tail = [message(b'c', b""), message(b'C', b"COPY 50\0"), message(b'Z', b"T")].concat();
        wire.extend(&tail);
        expected_pass.extend(&tail);
        for piece in [1, 2, 3, 4, 5, 6, 7, 13, 64, 4096] {
            let (passed, got_rows, ends) = run(&wire, piece, true).await;
            assert_eq!(passed, expected_pass, "messages for tokio-postgres, pieces of {piece}");
            assert_eq!(got_rows, rows.concat(), "rows, pieces of {piece}");
            assert_eq!(ends, [true], "pieces of {piece}");
        }
        // Not armed: everything passes through untouched.
        let (passed, got_rows, ends) = run(&wire, 5, false).await;
        assert_eq!(passed, wire);
        assert!(got_rows.is_empty() && ends.is_empty());
    }

    #[tokio::test]
    async fn a_server_error_ends_the_copy_as_failed() {
        let mut wire = message(b'H', &[0, 0, 0]);
        wire.extend(message(b'd', b"1\n"));
        let error = message(b'E', b"SERROR\0Mcanceled\0\0");
        wire.extend(&error);
        wire.extend(message(b'Z', b"E"));
        let (passed, rows, ends) = run(&wire, 3, true).await;
        // Rows may have gone out before the error arrived; the failed end
        // after them is what makes the reader discard the copy.
        assert_eq!(ends, [false]);
        assert!(b"1\n".starts_with(&rows), "{rows:?}");
        assert!(passed.windows(error.len()).any(|w| w == error.as_slice()), "tokio-postgres sees the error");
    }
}
