//! Instruments on the wire: raw HTTP and a minimal WebSocket client with hand-made frames, so
//! that broken ones can be sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Sends raw bytes on a new connection and reads until the server closes (or `timeout`);
/// returns (status, body, closed cleanly). The write side stays open: the server closes a
/// connection at once when it reads an EOF, answered or not (no HTTP/1 half-close).
pub fn raw_http(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (u16, String, bool) {
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(_) => return (0, String::new(), false),
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    let mut resp = Vec::new();
    let closed = match s.read_to_end(&mut resp) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let (status, body) = crate::status_and_body(&resp);
    (status, body, closed)
}

/// A WebSocket frame as received.
#[derive(Debug)]
pub struct Frame {
    /// Opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A minimal WebSocket client that can also send broken frames.
pub struct Ws {
    /// The socket.
    pub s: TcpStream,
}

impl Ws {
    /// Connects and upgrades; Err with the server's answer if the upgrade is refused.
    pub fn connect(addr: SocketAddr) -> Result<Ws, String> {
        let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                Ok(_) => {
                    return Err(format!(
                        "closed during upgrade: {}",
                        String::from_utf8_lossy(&head)
                    ))
                }
                Err(e) => return Err(format!("upgrade: {e}")),
            }
            if head.len() > 16 * 1024 {
                return Err("upgrade answer too long".into());
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        if !text.starts_with("HTTP/1.1 101") {
            return Err(text);
        }
        Ok(Ws { s })
    }

    /// Sends one frame; `mask` false makes a frame the server must refuse.
    pub fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        mask: bool,
    ) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(if fin { 0x80 } else { 0 } | opcode);
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f)
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.send_frame(true, 1, text, true)
    }

    /// Reads one frame (answers pings); Err on timeout or close of the socket.
    pub fn recv(&mut self, timeout: Duration) -> std::io::Result<Frame> {
        self.s.set_read_timeout(Some(timeout))?;
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h)?;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.s.read_exact(&mut l)?;
                    u16::from_be_bytes(l) as u64
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.s.read_exact(&mut l)?;
                    u64::from_be_bytes(l)
                }
                n => n as u64,
            };
            if len > 64 << 20 {
                return Err(std::io::Error::other(format!("frame of {len} bytes")));
            }
            let mut payload = vec![0u8; len as usize];
            self.s.read_exact(&mut payload)?;
            if opcode == 9 {
                self.send_frame(true, 10, &payload, true)?;
                continue;
            }
            return Ok(Frame { opcode, payload });
        }
    }

    /// Sends a text message and returns the text of the next text frame (`id`: of the next
    /// answer with that id; answers are sent as calls complete, not in order).
    pub fn call(
        &mut self,
        text: &[u8],
        id: Option<u64>,
        timeout: Duration,
    ) -> Result<String, String> {
        self.send_text(text).map_err(|e| format!("send: {e}"))?;
        loop {
            let f = self.recv(timeout).map_err(|e| format!("recv: {e}"))?;
            match f.opcode {
                1 => {
                    let t = String::from_utf8_lossy(&f.payload).into_owned();
                    let got = serde_json::from_str::<Value>(&t)
                        .ok()
                        .and_then(|v| v["id"].as_u64());
                    if id.is_none() || got == id {
                        return Ok(t);
                    }
                }
                8 => {
                    return Err(format!(
                        "closed by the server: {:?}",
                        close_reason(&f.payload)
                    ))
                }
                _ => continue,
            }
        }
    }
}

/// (code, reason) of a close frame's payload.
pub fn close_reason(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (0, String::new());
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}
