//! Incremental frame decoder over a byte buffer, with hard limits.
//!
//! The rules are VDSM's parser's (`yajsonrpc/stomp.py` `Parser`): lines end at `\n`, a `\r`
//! before it is dropped; blank lines where a command is due are heart-beats; headers are
//! unescaped (STOMP 1.2) and the first of repeated headers wins; a body is exactly
//! `content-length` bytes followed by NUL, or without `content-length` runs to the first NUL.
//! Stricter than VDSM where VDSM would misbehave: an unparsable or negative `content-length`,
//! an empty header name and a trailing lone backslash are errors, and every limit below is
//! checked before the bytes it guards are buffered or copied.
//!
//! Work per call is proportional to the new bytes: partial lines and NUL-terminated bodies
//! are not rescanned. The buffer must therefore only grow at its end between calls (the usual
//! contract of a read buffer).

use bytes::{Buf, BytesMut};

use crate::error::quote;
use crate::frame::{unescape, Command, Frame};
use crate::StompError;

/// Bounds on what one frame may hold, so that hostile input stays bounded in memory and CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest command or header line, without its end of line.
    pub max_line_bytes: usize,
    /// Most headers in one frame (repeats included).
    pub max_headers: usize,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Largest frame: command line, header lines, blank line, body and NUL.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    /// Roomy for VDSM traffic (a handful of short headers; JSON-RPC bodies up to the size of a
    /// large `Host.getJobs` reply) and still small enough to refuse floods early. A server
    /// should lower `max_body_bytes` to its request size limit.
    fn default() -> Limits {
        Limits {
            max_line_bytes: 4096,
            max_headers: 64,
            max_body_bytes: 16 << 20,
            max_frame_bytes: (16 << 20) + (64 << 10),
        }
    }
}

/// What [`Decoder::decode`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One end of line between frames: the peer is alive.
    HeartBeat,
}

enum State {
    /// Between frames: a command line or a heart-beat is due.
    Command,
    /// After the command line; `head` counts the bytes consumed for this frame so far.
    Headers { frame: Frame, head: usize },
    /// After the blank line. `length` from `content-length`; `scanned` bytes of the buffer are
    /// known to hold no NUL (NUL-terminated bodies only).
    Body {
        frame: Frame,
        head: usize,
        length: Option<usize>,
        scanned: usize,
    },
}

/// The decoder of one connection's incoming bytes.
pub struct Decoder {
    limits: Limits,
    state: State,
    /// Bytes at the start of the buffer already searched for `\n` (the current partial line).
    line_scanned: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::Command,
            line_scanned: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// True when no frame is partly decoded and no partial command line has been seen: a peer
    /// that closes now stopped between frames (check the buffer is empty too).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Command) && self.line_scanned == 0
    }

    /// Takes the next frame or heart-beat off the front of `buf`. `Ok(None)`: more bytes are
    /// needed (everything decodable so far has been consumed or is remembered). After an error
    /// the stream cannot be resynchronised; close the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, StompError> {
        loop {
            match std::mem::replace(&mut self.state, State::Command) {
                State::Command => {
                    let eol = if buf.first() == Some(&b'\n') {
                        1
                    } else if buf.starts_with(b"\r\n") {
                        2
                    } else {
                        0
                    };
                    if eol > 0 {
                        buf.advance(eol);
                        self.line_scanned = 0;
                        return Ok(Some(Item::HeartBeat));
                    }
                    let Some((line, eol)) = self.take_line(buf)? else {
                        return Ok(None);
                    };
                    let command = Command::from_bytes(&line)
                        .ok_or_else(|| StompError::UnknownCommand(quote(&line)))?;
                    self.state = State::Headers {
                        frame: Frame::new(command),
                        head: line.len() + eol,
                    };
                }
                State::Headers { mut frame, head } => {
                    let Some((line, eol)) = self.take_line(buf)? else {
                        self.state = State::Headers { frame, head };
                        return Ok(None);
                    };
                    let head = head + line.len() + eol;
                    self.check_frame(head)?;
                    if line.is_empty() {
                        let length = self.body_length(&frame, head)?;
                        self.state = State::Body {
                            frame,
                            head,
                            length,
                            scanned: 0,
                        };
                        continue;
                    }
                    if frame.headers.len() >= self.limits.max_headers {
                        return Err(StompError::TooManyHeaders {
                            limit: self.limits.max_headers,
                        });
                    }
                    frame.headers.push(parse_header(&line)?);
                    self.state = State::Headers { frame, head };
                }
                State::Body {
                    mut frame,
                    head,
                    length,
                    scanned,
                } => {
                    let end = match length {
                        Some(n) => {
                            if buf.len() <= n {
                                self.state = State::Body {
                                    frame,
                                    head,
                                    length,
                                    scanned,
                                };
                                return Ok(None);
                            }
                            if buf[n] != 0 {
                                return Err(StompError::MissingNul);
                            }
                            n
                        }
                        None => match memchr::memchr(0, &buf[scanned..]) {
                            Some(i) => {
                                let n = scanned + i;
                                self.check_body(n, head)?;
                                n
                            }
                            None => {
                                let scanned = buf.len();
                                self.check_body(scanned, head)?;
                                self.state = State::Body {
                                    frame,
                                    head,
                                    length,
                                    scanned,
                                };
                                return Ok(None);
                            }
                        },
                    };
                    let body = buf.split_to(end).freeze();
                    buf.advance(1);
                    if length.is_some() || !body.is_empty() {
                        frame.body = Some(body);
                    }
                    return Ok(Some(Item::Frame(frame)));
                }
            }
        }
    }

    /// The next line without its end of line, and the end of line's length; None when no
    /// complete line is buffered yet.
    fn take_line(&mut self, buf: &mut BytesMut) -> Result<Option<(BytesMut, usize)>, StompError> {
        let max = self.limits.max_line_bytes;
        // A line of `max` bytes may be followed by "\r\n": look no further than that.
        let window = buf.len().min(max + 2);
        let from = self.line_scanned.min(window);
        let Some(i) = memchr::memchr(b'\n', &buf[from..window]).map(|i| from + i) else {
            if buf.len() >= max + 2 {
                return Err(StompError::LineTooLong { limit: max });
            }
            self.line_scanned = window;
            return Ok(None);
        };
        self.line_scanned = 0;
        let mut line = buf.split_to(i);
        buf.advance(1);
        let mut eol = 1;
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
            eol = 2;
        }
        if line.len() > max {
            return Err(StompError::LineTooLong { limit: max });
        }
        Ok(Some((line, eol)))
    }

    fn check_frame(&self, bytes: usize) -> Result<(), StompError> {
        if bytes > self.limits.max_frame_bytes {
            return Err(StompError::FrameTooLarge {
                limit: self.limits.max_frame_bytes,
            });
        }
        Ok(())
    }

    fn check_body(&self, body: usize, head: usize) -> Result<(), StompError> {
        if body > self.limits.max_body_bytes {
            return Err(StompError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        self.check_frame(head.saturating_add(body).saturating_add(1))
    }

    /// The announced body length, checked against the limits before any of it is buffered.
    fn body_length(&self, frame: &Frame, head: usize) -> Result<Option<usize>, StompError> {
        let Some(v) = frame.get("content-length") else {
            return Ok(None);
        };
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StompError::BadContentLength(quote(v.as_bytes())));
        }
        let n: usize = v.parse().map_err(|_| StompError::BodyTooLarge {
            limit: self.limits.max_body_bytes,
        })?;
        self.check_body(n, head)?;
        Ok(Some(n))
    }
}

fn parse_header(line: &[u8]) -> Result<(String, String), StompError> {
    let colon = memchr::memchr(b':', line).ok_or(StompError::HeaderWithoutColon)?;
    if colon == 0 {
        return Err(StompError::EmptyHeaderName);
    }
    Ok((unescape(&line[..colon])?, unescape(&line[colon + 1..])?))
}
