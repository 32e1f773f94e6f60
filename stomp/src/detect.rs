//! Which protocol a connection speaks, from its first bytes.
//!
//! VDSM peeks until 11 bytes (`len("UNSUBSCRIBE")`) have arrived, so a client whose first
//! frame is shorter stalls until the detection timeout. Here a prefix is decided as soon as it
//! can only be one thing: `b"\x16"` (a TLS ClientHello where plain text was expected) is
//! `Neither` at once, `b"SEND\n"` is STOMP after five bytes.
//!
//! STOMP: one of the nine commands VDSM knows ([`Command::VDSM`]) followed by an end of line
//! (`\n` or `\r\n`); requiring the end of line tells `CONNECT\n` (STOMP) from `CONNECT ` (an
//! HTTP proxy request, which is `Neither`) and from `CONNECTED`. HTTP: a request method
//! followed by a space.

use crate::frame::Command;

/// The verdict on a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A STOMP frame starts here.
    Stomp,
    /// An HTTP request (and so possibly a WebSocket upgrade) starts here.
    Http,
    /// The bytes so far are a prefix of both or of something recognisable: read more.
    NeedMore,
    /// Neither: close the connection.
    Neither,
}

/// HTTP methods sdm's HTTP side may see, and `PRI`, which starts the HTTP/2 connection preface
/// (`PRI * HTTP/2.0`) of a client that chose HTTP/2 (by TLS ALPN or prior knowledge).
pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PRI",
];

/// No verdict ever needs more than this many bytes (`UNSUBSCRIBE\r\n`): with this many
/// buffered, [`detect`] never answers [`Protocol::NeedMore`].
pub const DETECT_MAX_BYTES: usize = 13;

/// Decides what `prefix` (the first bytes of a connection, as many as have arrived) is.
pub fn detect(prefix: &[u8]) -> Protocol {
    let mut undecided = false;
    let stomp = Command::VDSM
        .iter()
        .flat_map(|c| [(c.as_str(), "\n"), (c.as_str(), "\r\n")]);
    let http = HTTP_METHODS.iter().map(|m| (*m, " "));
    let candidates = stomp
        .map(|p| (p, Protocol::Stomp))
        .chain(http.map(|p| (p, Protocol::Http)));
    for ((word, end), protocol) in candidates {
        match matches(prefix, word.as_bytes(), end.as_bytes()) {
            Match::Full => return protocol,
            Match::Partial => undecided = true,
            Match::No => {}
        }
    }
    if undecided {
        Protocol::NeedMore
    } else {
        Protocol::Neither
    }
}

enum Match {
    Full,
    Partial,
    No,
}

fn matches(prefix: &[u8], word: &[u8], end: &[u8]) -> Match {
    let pattern_len = word.len() + end.len();
    let at = |i: usize| {
        if i < word.len() {
            word[i]
        } else {
            end[i - word.len()]
        }
    };
    let n = prefix.len().min(pattern_len);
    if (0..n).any(|i| prefix[i] != at(i)) {
        Match::No
    } else if prefix.len() >= pattern_len {
        Match::Full
    } else {
        Match::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stomp_commands() {
        for c in Command::VDSM {
            let line = format!("{c}\n");
            assert_eq!(detect(line.as_bytes()), Protocol::Stomp, "{c}");
            let crlf = format!("{c}\r\nheader:x\n");
            assert_eq!(detect(crlf.as_bytes()), Protocol::Stomp, "{c}");
            // Every proper prefix of the command line is undecided.
            for n in 0..line.len() {
                assert_eq!(detect(&line.as_bytes()[..n]), Protocol::NeedMore, "{c} {n}");
            }
        }
    }

    #[test]
    fn decides_early() {
        assert_eq!(detect(b"SEND\n"), Protocol::Stomp);
        assert_eq!(detect(b"\x16\x03\x01"), Protocol::Neither);
        assert_eq!(detect(b"\x16"), Protocol::Neither);
        assert_eq!(detect(b"X"), Protocol::Neither);
        assert_eq!(detect(b"SENX"), Protocol::Neither);
        assert_eq!(detect(b"GET "), Protocol::Http);
        assert_eq!(detect(b"POST / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(detect(b"PUT /x"), Protocol::Http);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Protocol::Http);
        assert_eq!(detect(b"P"), Protocol::NeedMore);
        assert_eq!(detect(b"PU"), Protocol::NeedMore);
        assert_eq!(detect(b""), Protocol::NeedMore);
    }

    #[test]
    fn connect_is_told_apart() {
        assert_eq!(detect(b"CONNECT\n"), Protocol::Stomp);
        assert_eq!(detect(b"CONNECT\r"), Protocol::NeedMore);
        assert_eq!(detect(b"CONNECT\rX"), Protocol::Neither);
        assert_eq!(detect(b"CONNECTE"), Protocol::NeedMore);
        assert_eq!(detect(b"CONNECTED\n"), Protocol::Stomp);
        assert_eq!(
            detect(b"CONNECT example.org:443 HTTP/1.1"),
            Protocol::Neither
        );
        assert_eq!(detect(b"CONNECTX"), Protocol::Neither);
    }

    #[test]
    fn commands_vdsm_does_not_know_are_neither() {
        assert_eq!(detect(b"STOMP\n"), Protocol::Neither);
        assert_eq!(detect(b"ACK\n"), Protocol::Neither);
        assert_eq!(detect(b"send\n"), Protocol::Neither);
        assert_eq!(detect(b"\nCONNECT\n"), Protocol::Neither);
    }

    #[test]
    fn never_needs_more_than_the_maximum() {
        // Any prefix of a real command or method, padded to DETECT_MAX_BYTES with bytes that
        // matter, gets a verdict.
        let alphabet = b"UNSBCRIEDT\r\n /";
        let words = Command::VDSM
            .iter()
            .map(|c| c.as_str())
            .chain(HTTP_METHODS.iter().copied());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for word in words {
            for keep in 0..=word.len() {
                for _ in 0..200 {
                    let mut s = word.as_bytes()[..keep].to_vec();
                    while s.len() < DETECT_MAX_BYTES {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        s.push(alphabet[(x % alphabet.len() as u64) as usize]);
                    }
                    let verdict = detect(&s);
                    assert_ne!(
                        verdict,
                        Protocol::NeedMore,
                        "{:?}",
                        String::from_utf8_lossy(&s)
                    );
                }
            }
        }
        assert_eq!(detect(b"UNSUBSCRIBE\r\n"), Protocol::Stomp);
        assert_eq!(detect(b"UNSUBSCRIBE\r"), Protocol::NeedMore);
    }
}
