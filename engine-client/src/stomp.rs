//! The agent's API over STOMP 1.2, VDSM's transport (`stomp://host:port`, `stomps://host:port`
//! for mutual TLS): the same typed [`SdmApiClient`](sdm_proto::SdmApiClient) as over HTTP, on
//! jsonrpsee's asynchronous client with a STOMP transport underneath. `sdm_stomp::Client`
//! connects (CONNECT, CONNECTED) and subscribes to a reply destination of this connection's
//! own; each call is then a SEND to `jms.topic.vdsm_requests` with that `reply-to`, and each
//! reply a MESSAGE on the subscription. Job subscriptions (`Job.subscribe`) need a WebSocket:
//! over STOMP the agent refuses them (follow jobs by polling, or subscribe to
//! `jms.queue.events` with `sdm_stomp::Client`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use jsonrpsee::core::client::async_client::{Client, ClientBuilder};
use jsonrpsee::core::client::{ReceivedMessage, TransportReceiverT, TransportSenderT};
use sdm_stomp::{ClientOptions, Command, Decoder, Frame, Item, REQUEST_QUEUE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::Error;

/// A connection to an agent over STOMP; implements `SdmApiClient` (and jsonrpsee's
/// `ClientT`).
pub type StompClient = Client;

/// Errors of the STOMP transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reading or writing failed.
    #[error("STOMP connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The agent sent something that is not STOMP.
    #[error("STOMP protocol error: {0}")]
    Protocol(#[from] sdm_stomp::StompError),
    /// The agent answered with an ERROR frame.
    #[error("agent sent ERROR: {0}")]
    Server(String),
    /// The agent closed the connection.
    #[error("the agent closed the STOMP connection")]
    Closed,
}

/// Where a `stomp://` or `stomps://` URL points: `(host, port, tls)`.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), Error> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("stomps://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("stomp://") {
        (r, false)
    } else {
        return Err(Error::Usage(format!(
            "bad STOMP URL {url:?}: use stomp://HOST:PORT or stomps://HOST:PORT"
        )));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| Error::Usage(format!("bad STOMP URL {url:?}: no port")))?;
    let port = port
        .parse()
        .map_err(|_| Error::Usage(format!("bad STOMP URL {url:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port, tls))
}

struct Sender<W> {
    wr: W,
    reply_to: String,
}

impl<W: AsyncWrite + Unpin + Send + 'static> TransportSenderT for Sender<W> {
    type Error = TransportError;

    async fn send(&mut self, msg: String) -> Result<(), TransportError> {
        let mut b = BytesMut::new();
        Frame::send(REQUEST_QUEUE, Some(&self.reply_to), msg).encode(&mut b);
        self.wr.write_all(&b).await?;
        self.wr.flush().await?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        let mut b = BytesMut::new();
        Frame::new(Command::Disconnect).encode(&mut b);
        let _ = self.wr.write_all(&b).await;
        self.wr.shutdown().await?;
        Ok(())
    }
}

struct Receiver<R> {
    rd: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin + Send + 'static> TransportReceiverT for Receiver<R> {
    type Error = TransportError;

    async fn receive(&mut self) -> Result<ReceivedMessage, TransportError> {
        loop {
            while let Some(item) = self.decoder.decode(&mut self.buf)? {
                let Item::Frame(f) = item else { continue };
                match f.command {
                    Command::Message => {
                        return Ok(ReceivedMessage::Text(
                            String::from_utf8_lossy(f.body()).into_owned(),
                        ))
                    }
                    Command::Error => {
                        return Err(TransportError::Server(
                            String::from_utf8_lossy(f.body()).into_owned(),
                        ))
                    }
                    _ => {}
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 << 10);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(TransportError::Closed);
            }
        }
    }
}

/// Connects over an established stream: CONNECT (no heart-beats, so an idle connection costs
/// nothing), SUBSCRIBE to a reply destination of its own, then the jsonrpsee client.
pub async fn over<S>(stream: S, request_timeout: Duration) -> Result<StompClient, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stomp_err = |e: sdm_stomp::ClientError| Error::Transport {
        url: "stomp".into(),
        message: e.to_string(),
    };
    let options = ClientOptions {
        heart_beat: (0, 0),
        connect_timeout: request_timeout,
        ..Default::default()
    };
    let mut client = sdm_stomp::Client::connect(stream, options)
        .await
        .map_err(stomp_err)?;
    let reply_to = format!("sdm-client.{}", uuid::Uuid::new_v4());
    client
        .subscribe(&reply_to, "replies")
        .await
        .map_err(stomp_err)?;
    let (stream, buf, decoder) = client.into_parts();
    let (rd, wr): (ReadHalf<S>, WriteHalf<S>) = tokio::io::split(stream);
    Ok(ClientBuilder::default()
        .request_timeout(request_timeout)
        .build_with_tokio(Sender { wr, reply_to }, Receiver { rd, buf, decoder }))
}

/// Connects to the agent at `url` (`stomp://` or, with `tls`, `stomps://`).
pub async fn connect(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    request_timeout: Duration,
) -> Result<StompClient, Error> {
    let (host, port, secure) = parse_url(url)?;
    let transport = |e: std::io::Error| Error::Transport {
        url: url.into(),
        message: e.to_string(),
    };
    let tcp = tokio::time::timeout(
        request_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| transport(std::io::ErrorKind::TimedOut.into()))?
    .map_err(transport)?;
    if !secure {
        return over(tcp, request_timeout).await;
    }
    let tls = tls.ok_or_else(|| {
        Error::Usage(format!(
            "{url}: stomps:// needs mutual TLS settings (CA, certificate and key)"
        ))
    })?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Error::Usage(format!("{url}: bad server name: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(transport)?;
    over(stream, request_timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("stomp://127.0.0.1:54321").unwrap(),
            ("127.0.0.1".into(), 54321, false)
        );
        assert_eq!(
            parse_url("stomps://[::1]:54321/").unwrap(),
            ("::1".into(), 54321, true)
        );
        assert!(parse_url("http://h:1").is_err());
        assert!(parse_url("stomp://h").is_err());
    }
}
