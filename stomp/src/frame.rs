//! The frame type, its VDSM-exact encoding, and the constructors for the frames VDSM's server
//! and clients send.
//!
//! Encoding follows VDSM's `yajsonrpc/stomp.py` byte for byte: command line, `name:value`
//! lines with STOMP 1.2 escaping applied to every header (CONNECT and CONNECTED included, as
//! VDSM does), a blank line, the body, NUL. A frame that has a body always carries
//! `content-length` (an existing one keeps its place, otherwise it goes last); a frame without
//! a body (CONNECTED, RECEIPT, SUBSCRIBE, ...) carries none.

use bytes::{BufMut, Bytes, BytesMut};

use crate::heartbeat::HeartBeat;

/// The `destination` VDSM answers JSON-RPC requests on.
pub const REQUEST_QUEUE: &str = "jms.topic.vdsm_requests";
/// The second request queue of VDSM's default configuration (storage requests of old engines).
pub const IRS_REQUEST_QUEUE: &str = "jms.topic.vdsm_irs_requests";
/// Where replies without a `reply-to` (or with a null id) go.
pub const RESPONSE_QUEUE: &str = "jms.topic.vdsm_responses";
/// Where VDSM publishes events (job status notifications).
pub const EVENTS_QUEUE: &str = "jms.queue.events";

/// The only protocol version VDSM accepts in `accept-version` and answers in `version`.
pub const VERSION: &str = "1.2";

macro_rules! commands {
    ($($variant:ident = $text:literal),* $(,)?) => {
        /// A STOMP 1.2 command.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Command {
            $(
                #[doc = concat!("`", $text, "`")]
                $variant,
            )*
        }

        impl Command {
            /// Every STOMP 1.2 command.
            pub const ALL: &'static [Command] = &[$(Command::$variant),*];

            /// The wire spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $(Command::$variant => $text,)* }
            }

            /// The command spelled exactly by `line` (case-sensitive, no surrounding space).
            pub fn from_bytes(line: &[u8]) -> Option<Command> {
                match line {
                    $(l if l == $text.as_bytes() => Some(Command::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

commands! {
    Connect = "CONNECT",
    Stomp = "STOMP",
    Connected = "CONNECTED",
    Send = "SEND",
    Subscribe = "SUBSCRIBE",
    Unsubscribe = "UNSUBSCRIBE",
    Ack = "ACK",
    Nack = "NACK",
    Begin = "BEGIN",
    Commit = "COMMIT",
    Abort = "ABORT",
    Disconnect = "DISCONNECT",
    Message = "MESSAGE",
    Receipt = "RECEIPT",
    Error = "ERROR",
}

impl Command {
    /// The nine commands VDSM knows. Its protocol detector recognises a connection by these
    /// (not by STOMP, ACK, NACK or the transaction commands), and its server closes the
    /// connection on any command outside them.
    pub const VDSM: &'static [Command] = &[
        Command::Connect,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame: command, headers in wire order (repeats kept; lookups see the first), and
/// an optional body. `body: None` and `Some(empty)` differ only in encoding: a frame with a
/// body, even an empty one, carries `content-length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers, unescaped, in the order they are (or were) on the wire.
    pub headers: Vec<(String, String)>,
    /// The body, if the frame has one.
    pub body: Option<Bytes>,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = Some(body.into());
        self
    }

    /// The value of the first header called `name` (STOMP 1.2: the first of repeats wins).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body, empty when there is none.
    pub fn body(&self) -> &[u8] {
        self.body.as_deref().unwrap_or_default()
    }

    /// `CONNECTED` as VDSM answers a CONNECT it accepts: `version:1.2`, then `heart-beat`
    /// (see [`HeartBeat::server`]). No body.
    pub fn connected(heart_beat: HeartBeat) -> Frame {
        Frame::new(Command::Connected)
            .with_header("version", VERSION)
            .with_header("heart-beat", heart_beat.header_value())
    }

    /// `MESSAGE` as VDSM sends a JSON-RPC reply or event: `destination`, `content-type:
    /// application/json`, `subscription`, then `content-length` (added when encoding).
    pub fn message(destination: &str, subscription: &str, body: impl Into<Bytes>) -> Frame {
        Frame::new(Command::Message)
            .with_header("destination", destination)
            .with_header("content-type", "application/json")
            .with_header("subscription", subscription)
            .with_body(body)
    }

    /// `ERROR` as VDSM sends it: no headers but `content-length`, the text in the body.
    pub fn error(text: &str) -> Frame {
        Frame::new(Command::Error).with_body(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// `RECEIPT` answering a DISCONNECT: `receipt-id` only, no body.
    pub fn receipt(receipt_id: &str) -> Frame {
        Frame::new(Command::Receipt).with_header("receipt-id", receipt_id)
    }

    /// `CONNECT` as engines send it: `accept-version:1.2`, `host` when given, `heart-beat:cx,cy`
    /// (`cx`: the client promises a heart-beat every cx ms; `cy`: it wants one every cy ms).
    pub fn connect(host: Option<&str>, heart_beat: (u64, u64)) -> Frame {
        let mut f = Frame::new(Command::Connect).with_header("accept-version", VERSION);
        if let Some(h) = host {
            f = f.with_header("host", h);
        }
        f.with_header("heart-beat", format!("{},{}", heart_beat.0, heart_beat.1))
    }

    /// `SUBSCRIBE` with `destination`, `id` and `ack:auto` (the only mode VDSM has).
    pub fn subscribe(destination: &str, id: &str) -> Frame {
        Frame::new(Command::Subscribe)
            .with_header("destination", destination)
            .with_header("id", id)
            .with_header("ack", "auto")
    }

    /// `UNSUBSCRIBE` of subscription `id`.
    pub fn unsubscribe(id: &str) -> Frame {
        Frame::new(Command::Unsubscribe).with_header("id", id)
    }

    /// `SEND` to `destination`, with `reply-to` when given; `content-length` is added when
    /// encoding.
    pub fn send(destination: &str, reply_to: Option<&str>, body: impl Into<Bytes>) -> Frame {
        let mut f = Frame::new(Command::Send).with_header("destination", destination);
        if let Some(r) = reply_to {
            f = f.with_header("reply-to", r);
        }
        f.with_body(body)
    }

    /// `DISCONNECT` asking for a RECEIPT with `receipt`.
    pub fn disconnect(receipt: &str) -> Frame {
        Frame::new(Command::Disconnect).with_header("receipt", receipt)
    }

    /// Appends the frame's wire bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let length = self.body.as_ref().map(|b| b.len().to_string());
        dst.reserve(self.encoded_len_hint());
        dst.put_slice(self.command.as_str().as_bytes());
        dst.put_u8(b'\n');
        let mut length_written = false;
        for (name, value) in &self.headers {
            if name == "content-length" {
                // The body decides the length; a stale or repeated value never reaches the wire.
                match &length {
                    Some(len) if !length_written => {
                        put_header(dst, name, len);
                        length_written = true;
                    }
                    _ => {}
                }
                continue;
            }
            put_header(dst, name, value);
        }
        if let (Some(len), false) = (&length, length_written) {
            put_header(dst, "content-length", len);
        }
        dst.put_u8(b'\n');
        if let Some(body) = &self.body {
            dst.put_slice(body);
        }
        dst.put_u8(0);
    }

    /// The frame's wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.to_vec()
    }

    fn encoded_len_hint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        self.command.as_str().len() + headers + self.body().len() + 32
    }
}

/// The bytes of one heart-beat: a bare end of line.
pub const HEART_BEAT: &[u8] = b"\n";

fn put_header(dst: &mut BytesMut, name: &str, value: &str) {
    escape_into(dst, name);
    dst.put_u8(b':');
    escape_into(dst, value);
    dst.put_u8(b'\n');
}

/// STOMP 1.2 header escaping: `\` → `\\`, CR → `\r`, LF → `\n`, `:` → `\c`.
pub fn escape_into(dst: &mut BytesMut, s: &str) {
    let mut rest = s.as_bytes();
    while let Some(i) = rest
        .iter()
        .position(|b| matches!(b, b'\\' | b'\r' | b'\n' | b':'))
    {
        dst.put_slice(&rest[..i]);
        dst.put_slice(match rest[i] {
            b'\\' => b"\\\\",
            b'\r' => b"\\r",
            b'\n' => b"\\n",
            _ => b"\\c",
        });
        rest = &rest[i + 1..];
    }
    dst.put_slice(rest);
}

/// Reverses [`escape_into`] for one header name or value as it came off the wire (without the
/// separating `:`). A raw `:`, an unknown escape or a trailing lone backslash is an error, as in
/// VDSM's parser (which closes the connection on them).
pub fn unescape(raw: &[u8]) -> Result<String, crate::StompError> {
    use crate::StompError;
    if memchr::memchr(b':', raw).is_some() {
        return Err(StompError::RawColon);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..i]);
        out.push(match rest.get(i + 1) {
            Some(b'\\') => b'\\',
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b'c') => b':',
            _ => return Err(StompError::InvalidEscape),
        });
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    String::from_utf8(out).map_err(|_| StompError::InvalidUtf8)
}
