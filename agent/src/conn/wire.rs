//! What [`super::Guarded`] needs to know of the protocols on the wire: where an HTTP head
//! ends, and where WebSocket data messages end (RFC 6455 5.2).

/// Answers start this way; subscription notifications (not answers) with the method instead.
pub(super) const NOTIFICATION_PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method":"#;

/// Finds the end of an HTTP head (the first blank line) in a stream fed piece by piece.
#[derive(Debug, Default)]
pub(super) struct HeadEnd {
    /// Bytes fed so far.
    pub(super) seen: u64,
    /// How much of "\r\n\r\n" the last bytes matched.
    pub(super) matched: usize,
    /// Stream offset just past the blank line, once seen.
    pub(super) end: Option<u64>,
}

impl HeadEnd {
    /// Feeds `b`; returns the index in `b` just past the head's end if it ends in `b`.
    pub(super) fn feed(&mut self, b: &[u8]) -> Option<usize> {
        let start = self.seen;
        self.seen += b.len() as u64;
        if self.end.is_some() {
            return None;
        }
        for (i, &c) in b.iter().enumerate() {
            let want = b"\r\n\r\n"[self.matched];
            self.matched = if c == want {
                self.matched + 1
            } else if c == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                self.end = Some(start + i as u64 + 1);
                return Some(i + 1);
            }
        }
        None
    }
}

/// Follows WebSocket framing (RFC 6455 5.2) in one direction, to count whole data messages.
#[derive(Debug, Default)]
pub(super) struct Frames {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame not yet passed.
    left: u64,
    in_payload: bool,
    /// The current frame is the last of a data message.
    ends_message: bool,
    /// The current frame is the first of a data message: its first bytes are kept.
    first: bool,
    prefix: [u8; 32],
    prefix_len: usize,
}

impl Frames {
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Feeds `b`; calls `message` with the first bytes of every data message that ends in it.
    pub(super) fn feed(&mut self, mut b: &[u8], mut message: impl FnMut(&[u8])) {
        loop {
            if self.in_payload {
                let n = self.left.min(b.len() as u64) as usize;
                if self.first && self.prefix_len < self.prefix.len() {
                    let k = n.min(self.prefix.len() - self.prefix_len);
                    self.prefix[self.prefix_len..self.prefix_len + k].copy_from_slice(&b[..k]);
                    self.prefix_len += k;
                }
                self.left -= n as u64;
                b = &b[n..];
                if self.left > 0 {
                    return;
                }
                self.in_payload = false;
                if self.ends_message {
                    message(&self.prefix[..self.prefix_len]);
                }
                continue;
            }
            while self.have < self.header_len() {
                let Some((&c, rest)) = b.split_first() else {
                    return;
                };
                self.header[self.have] = c;
                self.have += 1;
                b = rest;
            }
            let h = &self.header;
            let fin = h[0] & 0x80 != 0;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                127 => u64::from_be_bytes(h[2..10].try_into().expect("eight bytes")),
                n => u64::from(n),
            };
            let data = opcode < 8;
            // Control frames may come between the fragments of a message: they leave its
            // state alone.
            if data {
                self.first = opcode != 0;
                if self.first {
                    self.prefix_len = 0;
                }
                self.ends_message = fin;
            } else {
                self.first = false;
                self.ends_message = false;
            }
            self.have = 0;
            self.left = len;
            self.in_payload = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WebSocket frame as a client (masked) or the server (unmasked) would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [1u8, 2, 3, 4];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    fn messages(stream: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut fr = Frames::default();
        let mut got = Vec::new();
        for p in stream.chunks(piece) {
            fr.feed(p, |first| got.push(first.to_vec()));
        }
        got
    }

    #[test]
    fn frames_count_whole_data_messages_fed_in_any_pieces() {
        let answer = br#"{"jsonrpc":"2.0","id":1,"result":true}"#;
        let note = br#"{"jsonrpc":"2.0","method":"Job.event","params":{}}"#;
        let big = vec![b'x'; 70_000];
        let mut s = Vec::new();
        s.extend(frame(true, 1, answer, false));
        s.extend(frame(true, 9, b"ping", false)); // control: not a message
        s.extend(frame(false, 1, note, false)); // first fragment ...
        s.extend(frame(true, 10, b"", false)); // ... a pong between fragments ...
        s.extend(frame(true, 0, b"tail", false)); // ... and the last one
        s.extend(frame(true, 2, &big, false)); // 64-bit length
        s.extend(frame(true, 1, &big[..300], true)); // 16-bit length, masked
        s.extend(frame(true, 1, b"", false)); // empty message
        s.extend(frame(true, 8, b"", false)); // close: not a message
        for piece in [1, 2, 3, 7, 64, 1000, s.len()] {
            let got = messages(&s, piece);
            assert_eq!(got.len(), 5, "piece {piece}");
            assert!(!got[0].starts_with(NOTIFICATION_PREFIX));
            assert!(got[1].starts_with(NOTIFICATION_PREFIX), "piece {piece}");
            assert_eq!(got[2], vec![b'x'; 32]);
            assert_eq!(got[4], b"");
        }
        // A message is counted only once its last byte has passed.
        let one = frame(true, 1, answer, true);
        assert!(messages(&one[..one.len() - 1], 5).is_empty());
    }

    #[test]
    fn head_end_is_found_across_pieces() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n";
        for piece in 1..req.len() {
            let mut h = HeadEnd::default();
            let mut at = None;
            for (i, p) in req.chunks(piece).enumerate() {
                if let Some(e) = h.feed(p) {
                    at = Some(i * piece + e);
                }
            }
            assert_eq!(at, Some(req.len()), "piece {piece}");
            assert_eq!(h.end, Some(h.seen));
        }
        let mut h = HeadEnd::default();
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\n\r\n\x81"), Some(18));
        assert_ne!(h.end, Some(h.seen), "a byte after the head is seen");
    }
}
