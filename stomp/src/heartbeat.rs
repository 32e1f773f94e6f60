//! Heart-beat negotiation as VDSM's server does it (`stompserver.py` `_cmd_connect`), and the
//! client's side of the same arithmetic (STOMP 1.2 §Heart-beating).
//!
//! Server: the client's `heart-beat:cx,cy` becomes `heart-beat:cy,cx` in CONNECTED, each
//! nonzero value first raised to at least [`MIN_INTERVAL_MS`]. The server then writes `\n`
//! after `cy` ms without output and drops the client after `cx` ms of silence (no grace).

use std::time::Duration;

/// VDSM raises every nonzero interval below this (ms) to it.
pub const MIN_INTERVAL_MS: u64 = 1000;

/// Longest interval [`HeartBeat::send_interval`] and [`HeartBeat::expect_interval`] report
/// (30 days). VDSM echoes any number a client sends; capping the durations (not the header)
/// keeps deadline arithmetic on hostile values from overflowing.
pub const MAX_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The negotiated intervals of one side of a connection, in milliseconds; 0 = none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartBeat {
    /// This side writes a heart-beat after this long without writing anything.
    pub send_ms: u64,
    /// This side expects to hear something at least this often from the peer.
    pub expect_ms: u64,
}

impl HeartBeat {
    /// The server's intervals for a CONNECT carrying `client_header` (its `heart-beat` value,
    /// None when absent), exactly as VDSM computes them: `cx,cy` → send every `cy`, expect every
    /// `cx`, nonzero values raised to ≥1000. `0,8000` → send 8000, expect 0; absent → 0,0.
    pub fn server(client_header: Option<&str>) -> HeartBeat {
        let (cx, cy) = parse_pair(client_header.unwrap_or("0,0"));
        HeartBeat {
            send_ms: raise(cy),
            expect_ms: raise(cx),
        }
    }

    /// A client's intervals after it sent `heart-beat:cx,cy` and the server answered
    /// `server_header` (`sx,sy`, None when absent): send every max(cx, sy) when both are
    /// nonzero, expect every max(cy, sx) when both are nonzero.
    pub fn client(sent: (u64, u64), server_header: Option<&str>) -> HeartBeat {
        let (cx, cy) = sent;
        let (sx, sy) = server_header.map(parse_pair).unwrap_or((0, 0));
        let both = |a: u64, b: u64| if a == 0 || b == 0 { 0 } else { a.max(b) };
        HeartBeat {
            send_ms: both(cx, sy),
            expect_ms: both(cy, sx),
        }
    }

    /// The `heart-beat` value a server writes in CONNECTED: `send,expect`.
    pub fn header_value(&self) -> String {
        format!("{},{}", self.send_ms, self.expect_ms)
    }

    /// How long this side may stay silent before it must write a heart-beat (at most
    /// [`MAX_INTERVAL`]).
    pub fn send_interval(&self) -> Option<Duration> {
        interval(self.send_ms)
    }

    /// How long the peer may stay silent before this side gives up on it (at most
    /// [`MAX_INTERVAL`]).
    pub fn expect_interval(&self) -> Option<Duration> {
        interval(self.expect_ms)
    }
}

fn interval(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms).min(MAX_INTERVAL))
}

fn raise(v: u64) -> u64 {
    if v == 0 {
        0
    } else {
        v.max(MIN_INTERVAL_MS)
    }
}

/// Parses a `heart-beat` value as leniently as VDSM: split at the first `,` (no comma: both
/// 0); each side read like Python's `int()` (surrounding whitespace, a sign and `_` between
/// digits allowed), anything unreadable is 0. A negative number counts as nonzero, which VDSM
/// then raises to 1000, so it is returned as 1; values beyond u64 saturate.
pub fn parse_pair(value: &str) -> (u64, u64) {
    match value.split_once(',') {
        Some((x, y)) => (parse_int(x), parse_int(y)),
        None => (0, 0),
    }
}

fn parse_int(s: &str) -> u64 {
    let s = s.trim();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let b = digits.as_bytes();
    let well_formed = !b.is_empty()
        && b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_digit() || *c == b'_')
        && !digits.contains("__");
    if !well_formed {
        return 0;
    }
    let value = b
        .iter()
        .filter(|c| c.is_ascii_digit())
        .fold(0u64, |acc, c| {
            acc.saturating_mul(10).saturating_add(u64::from(c - b'0'))
        });
    match (negative, value) {
        (_, 0) => 0,
        (true, _) => 1,
        (false, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(h: Option<&str>) -> String {
        HeartBeat::server(h).header_value()
    }

    #[test]
    fn server_swaps_and_raises_like_vdsm() {
        assert_eq!(server(Some("0,8000")), "8000,0");
        assert_eq!(server(Some("8000,0")), "0,8000");
        assert_eq!(server(None), "0,0");
        assert_eq!(server(Some("0,0")), "0,0");
        assert_eq!(server(Some("10,20")), "1000,1000");
        assert_eq!(server(Some("5000,24000")), "24000,5000");
        assert_eq!(server(Some("0,24000")), "24000,0");
        assert_eq!(server(Some("999,1000")), "1000,1000");
        assert_eq!(server(Some("1001,1")), "1000,1001");
    }

    #[test]
    fn server_reads_bad_values_as_python_int_would() {
        assert_eq!(server(Some("")), "0,0");
        assert_eq!(server(Some("5000")), "0,0"); // no comma
        assert_eq!(server(Some("x,5000")), "5000,0");
        assert_eq!(server(Some(" 2000 , 3000 ")), "3000,2000");
        assert_eq!(server(Some("+2000,1_500")), "1500,2000");
        assert_eq!(server(Some("-5,0")), "0,1000");
        assert_eq!(server(Some("1,2,3")), "0,1000"); // "2,3" is not a number
        assert_eq!(server(Some("1.5,2000")), "2000,0");
        assert_eq!(server(Some("1__0,_1")), "0,0");
        assert_eq!(
            server(Some("0,99999999999999999999999")),
            format!("{},0", u64::MAX)
        );
    }

    #[test]
    fn intervals() {
        let hb = HeartBeat::server(Some("0,8000"));
        assert_eq!(hb.send_interval(), Some(Duration::from_secs(8)));
        assert_eq!(hb.expect_interval(), None);
        // Absurd values are echoed as sent but never overflow a deadline.
        let hb = HeartBeat::server(Some("99999999999999999999,99999999999999999999"));
        assert_eq!(hb.header_value(), format!("{},{}", u64::MAX, u64::MAX));
        assert_eq!(hb.send_interval(), Some(MAX_INTERVAL));
        assert_eq!(hb.expect_interval(), Some(MAX_INTERVAL));
        let far = std::time::Instant::now() + hb.expect_interval().unwrap() * 2;
        assert!(far > std::time::Instant::now());
    }

    #[test]
    fn client_side_takes_the_larger_of_both_wishes() {
        // The client offers 5000 and wants 10000; VDSM answers 10000,5000.
        let hb = HeartBeat::client((5000, 10000), Some("10000,5000"));
        assert_eq!((hb.send_ms, hb.expect_ms), (5000, 10000));
        // The server raised 10 to 1000.
        let hb = HeartBeat::client((10, 10), Some("1000,1000"));
        assert_eq!((hb.send_ms, hb.expect_ms), (1000, 1000));
        let hb = HeartBeat::client((0, 24000), Some("24000,0"));
        assert_eq!((hb.send_ms, hb.expect_ms), (0, 24000));
        let hb = HeartBeat::client((5000, 5000), None);
        assert_eq!((hb.send_ms, hb.expect_ms), (0, 0));
    }
}
