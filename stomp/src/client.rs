//! A small async STOMP client, enough to drive VDSM's JSON-RPC queues from sdmctl and tests:
//! CONNECT (accept-version 1.2, heart-beat), SUBSCRIBE, SEND a request to
//! [`REQUEST_QUEUE`] with `reply-to`, and MESSAGE bodies back.
//!
//! Generic over any `AsyncRead + AsyncWrite` stream, so it runs over TLS as well as TCP.
//! Heart-beats are written, and the server's silence is noticed, only while the client is
//! waiting in [`Client::recv`] (or a method built on it); a client that sits idle elsewhere
//! should negotiate no outgoing heart-beat (the default), or the server may drop it.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

use crate::decode::{Decoder, Item, Limits};
use crate::frame::{Command, Frame, HEART_BEAT, REQUEST_QUEUE};
use crate::heartbeat::HeartBeat;
use crate::StompError;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Reading or writing the stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not valid STOMP (or crossed a limit).
    #[error("protocol error: {0}")]
    Protocol(#[from] StompError),
    /// The server answered with an ERROR frame; its body text.
    #[error("server sent ERROR: {0}")]
    Server(String),
    /// A frame the client did not expect at this point.
    #[error("unexpected {0} frame")]
    Unexpected(Command),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// Nothing arrived for twice the server's negotiated heart-beat interval.
    #[error("nothing heard from the server for {0:?}")]
    Silent(Duration),
    /// No CONNECTED within the connect timeout.
    #[error("no CONNECTED within {0:?}")]
    ConnectTimeout(Duration),
}

impl ClientError {
    /// A stable snake_case name of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Io(_) => "io",
            ClientError::Protocol(e) => e.kind(),
            ClientError::Server(_) => "server_error",
            ClientError::Unexpected(_) => "unexpected_frame",
            ClientError::Closed => "closed",
            ClientError::Silent(_) => "silent",
            ClientError::ConnectTimeout(_) => "connect_timeout",
        }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host` header of CONNECT (VDSM ignores it; the Java client sends one).
    pub host: Option<String>,
    /// `heart-beat:cx,cy` of CONNECT, in ms: cx = we promise to write at least this often,
    /// cy = we want to hear from the server at least this often.
    pub heart_beat: (u64, u64),
    /// Limits on frames from the server.
    pub limits: Limits,
    /// How long to wait for CONNECTED.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    /// No `host`, `heart-beat:0,10000` (the server keeps us alive; we promise nothing, so an
    /// idle client is not dropped), default limits, 10 s to connect.
    fn default() -> ClientOptions {
        ClientOptions {
            host: None,
            heart_beat: (0, 10_000),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A connected STOMP client.
pub struct Client<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    heart_beat: HeartBeat,
    last_sent: Instant,
    last_heard: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Sends CONNECT over `stream` and waits for CONNECTED. An ERROR answer (VDSM's
    /// `Version unsupported`) is [`ClientError::Server`].
    pub async fn connect(stream: S, options: ClientOptions) -> Result<Client<S>, ClientError> {
        let now = Instant::now();
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
            decoder: Decoder::new(options.limits),
            heart_beat: HeartBeat::default(),
            last_sent: now,
            last_heard: now,
        };
        let connect = Frame::connect(options.host.as_deref(), options.heart_beat);
        client.send_frame(&connect).await?;
        let answer = tokio::time::timeout(options.connect_timeout, client.recv())
            .await
            .map_err(|_| ClientError::ConnectTimeout(options.connect_timeout))??;
        match answer {
            None => Err(ClientError::Closed),
            Some(f) if f.command == Command::Connected => {
                client.heart_beat = HeartBeat::client(options.heart_beat, f.get("heart-beat"));
                Ok(client)
            }
            Some(f) if f.command == Command::Error => Err(server_error(&f)),
            Some(f) => Err(ClientError::Unexpected(f.command)),
        }
    }

    /// The negotiated heart-beat intervals, from this client's side.
    pub fn heart_beat(&self) -> HeartBeat {
        self.heart_beat
    }

    /// Subscribes to `destination` as subscription `id`. VDSM sends no confirmation.
    pub async fn subscribe(&mut self, destination: &str, id: &str) -> Result<(), ClientError> {
        self.send_frame(&Frame::subscribe(destination, id)).await
    }

    /// Ends subscription `id`.
    pub async fn unsubscribe(&mut self, id: &str) -> Result<(), ClientError> {
        self.send_frame(&Frame::unsubscribe(id)).await
    }

    /// Sends `body` to `destination`, with `reply-to` when given.
    pub async fn send(
        &mut self,
        destination: &str,
        reply_to: Option<&str>,
        body: &[u8],
    ) -> Result<(), ClientError> {
        let frame = Frame::send(destination, reply_to, bytes::Bytes::copy_from_slice(body));
        self.send_frame(&frame).await
    }

    /// Sends a JSON-RPC request (or batch) to [`REQUEST_QUEUE`]; its reply comes as a MESSAGE
    /// to subscribers of `reply_to`.
    pub async fn send_request(
        &mut self,
        reply_to: &str,
        request: &[u8],
    ) -> Result<(), ClientError> {
        self.send(REQUEST_QUEUE, Some(reply_to), request).await
    }

    /// Writes any frame.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.wbuf.clear();
        frame.encode(&mut self.wbuf);
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next MESSAGE. RECEIPTs are skipped; an ERROR is [`ClientError::Server`]; the end of
    /// the stream is [`ClientError::Closed`].
    pub async fn next_message(&mut self) -> Result<Frame, ClientError> {
        loop {
            match self.recv().await?.ok_or(ClientError::Closed)? {
                f if f.command == Command::Message => return Ok(f),
                f if f.command == Command::Receipt => continue,
                f if f.command == Command::Error => return Err(server_error(&f)),
                f => return Err(ClientError::Unexpected(f.command)),
            }
        }
    }

    /// Sends DISCONNECT with `receipt`, waits for the matching RECEIPT (MESSAGEs arriving
    /// before it are dropped), and shuts the stream down.
    pub async fn disconnect(mut self, receipt: &str) -> Result<(), ClientError> {
        self.send_frame(&Frame::disconnect(receipt)).await?;
        loop {
            match self.recv().await?.ok_or(ClientError::Closed)? {
                f if f.command == Command::Receipt && f.get("receipt-id") == Some(receipt) => break,
                f if f.command == Command::Error => return Err(server_error(&f)),
                _ => continue,
            }
        }
        self.stream.shutdown().await?;
        Ok(())
    }

    /// The next frame from the server; None when it closed the connection between frames.
    /// Heart-beats are consumed here: the server's are noted, ours are written when due.
    pub async fn recv(&mut self) -> Result<Option<Frame>, ClientError> {
        enum Wake {
            Read(std::io::Result<usize>),
            SendHeartBeat,
            Silent,
        }
        loop {
            while let Some(item) = self.decoder.decode(&mut self.rbuf)? {
                if let Item::Frame(f) = item {
                    return Ok(Some(f));
                }
            }
            // Intervals are capped (MAX_INTERVAL), so this arithmetic cannot overflow.
            let send_at = self.heart_beat.send_interval().map(|d| self.last_sent + d);
            let silence = self.heart_beat.expect_interval().map(|d| d * 2);
            let silent_at = silence.map(|d| self.last_heard + d);
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(8192);
            }
            let wake = tokio::select! {
                r = self.stream.read_buf(&mut self.rbuf) => Wake::Read(r),
                _ = sleep_until_some(send_at) => Wake::SendHeartBeat,
                _ = sleep_until_some(silent_at) => Wake::Silent,
            };
            match wake {
                Wake::Read(r) => {
                    if r? == 0 {
                        return if self.rbuf.is_empty() && self.decoder.is_idle() {
                            Ok(None)
                        } else {
                            Err(ClientError::Closed)
                        };
                    }
                    self.last_heard = Instant::now();
                }
                Wake::SendHeartBeat => {
                    self.stream.write_all(HEART_BEAT).await?;
                    self.stream.flush().await?;
                    self.last_sent = Instant::now();
                }
                Wake::Silent => return Err(ClientError::Silent(silence.unwrap_or_default())),
            }
        }
    }

    /// The underlying stream (for example to inspect a TLS session).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Gives the connection up for another owner (a client that reads and writes from two
    /// tasks): the stream, the bytes read from it that no frame has taken yet, and the decoder
    /// (which may hold a frame begun in those bytes). Heart-beats are the new owner's duty.
    pub fn into_parts(self) -> (S, BytesMut, Decoder) {
        (self.stream, self.rbuf, self.decoder)
    }
}

fn server_error(f: &Frame) -> ClientError {
    ClientError::Server(String::from_utf8_lossy(f.body()).into_owned())
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}
