//! Decoder rules: line endings, heart-beats, escaping, repeated headers, the two body modes,
//! every error kind, every limit, and split reads at every byte boundary.

use bytes::{Bytes, BytesMut};
use sdm_stomp::{Command, Decoder, Frame, Item, Limits, StompError};

/// Decodes everything in `input` fed at once.
fn decode_all(input: &[u8], limits: Limits) -> Result<Vec<Item>, StompError> {
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(item) = d.decode(&mut buf)? {
        out.push(item);
    }
    assert!(buf.is_empty(), "left over: {:?}", buf);
    Ok(out)
}

/// Decodes `input` fed in the chunks that `cuts` (ascending offsets) make.
fn decode_chunks(input: &[u8], cuts: &[usize], limits: Limits) -> Result<Vec<Item>, StompError> {
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        while let Some(item) = d.decode(&mut buf)? {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "left over: {:?}", buf);
    Ok(out)
}

fn one_frame(input: &[u8]) -> Frame {
    match decode_all(input, Limits::default()).unwrap().as_slice() {
        [Item::Frame(f)] => f.clone(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn error_of(input: &[u8], limits: Limits) -> StompError {
    decode_all(input, limits).expect_err("decoding should fail")
}

#[test]
fn frame_with_content_length() {
    let f = one_frame(
        b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r1\ncontent-length:5\n\nhello\0",
    );
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.get("destination"), Some("jms.topic.vdsm_requests"));
    assert_eq!(f.get("reply-to"), Some("r1"));
    assert_eq!(f.body, Some(Bytes::from_static(b"hello")));
}

#[test]
fn content_length_body_may_hold_nul() {
    let f = one_frame(b"SEND\ncontent-length:5\n\na\0b\0c\0");
    assert_eq!(f.body(), b"a\0b\0c");
}

#[test]
fn body_without_content_length_runs_to_the_first_nul() {
    let items = decode_all(
        b"SEND\ndestination:q\n\n{\"a\":1}\0SEND\n\n\0",
        Limits::default(),
    )
    .unwrap();
    let [Item::Frame(a), Item::Frame(b)] = items.as_slice() else {
        panic!("{items:?}")
    };
    assert_eq!(a.body(), b"{\"a\":1}");
    // Empty without content-length: no body at all; with it: an empty body.
    assert_eq!(b.body, None);
    assert_eq!(
        one_frame(b"SEND\ncontent-length:0\n\n\0").body,
        Some(Bytes::new())
    );
}

#[test]
fn content_length_must_be_followed_by_nul() {
    assert_eq!(
        error_of(b"SEND\ncontent-length:2\n\nabc\0", Limits::default()),
        StompError::MissingNul
    );
}

#[test]
fn crlf_line_endings() {
    let f = one_frame(b"SEND\r\ndestination:q\r\ncontent-length:2\r\n\r\nhi\0");
    assert_eq!(f.get("destination"), Some("q"));
    assert_eq!(f.body(), b"hi");
    // Only a CR right before LF is an end of line; elsewhere it stays in the value.
    let f = one_frame(b"SEND\nx:a\rb\n\n\0");
    assert_eq!(f.get("x"), Some("a\rb"));
}

#[test]
fn blank_lines_between_frames_are_heart_beats() {
    let items = decode_all(
        b"\n\r\n\nCONNECT\naccept-version:1.2\n\n\0\n\r\n",
        Limits::default(),
    )
    .unwrap();
    let kinds: Vec<&str> = items
        .iter()
        .map(|i| match i {
            Item::HeartBeat => "hb",
            Item::Frame(_) => "frame",
        })
        .collect();
    assert_eq!(kinds, ["hb", "hb", "hb", "frame", "hb", "hb"]);
}

#[test]
fn lone_cr_waits_for_its_lf() {
    let mut d = Decoder::default();
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"\nSEND\n\n\0");
    assert_eq!(d.decode(&mut buf).unwrap(), Some(Item::HeartBeat));
    assert!(matches!(d.decode(&mut buf).unwrap(), Some(Item::Frame(_))));
    assert!(d.is_idle() && buf.is_empty());
}

#[test]
fn headers_are_unescaped() {
    let f = one_frame(b"SEND\nna\\cme:a\\\\b\\nc\\cd\\re\n\n\0");
    assert_eq!(
        f.headers,
        vec![("na:me".to_string(), "a\\b\nc:d\re".to_string())]
    );
}

#[test]
fn escape_errors() {
    let l = Limits::default();
    assert_eq!(
        error_of(b"SEND\nx:a\\tb\n\n\0", l),
        StompError::InvalidEscape
    );
    assert_eq!(
        error_of(b"SEND\nx:ab\\\n\n\0", l),
        StompError::InvalidEscape
    );
    assert_eq!(
        error_of(b"SEND\nx\\q:ab\n\n\0", l),
        StompError::InvalidEscape
    );
    assert_eq!(error_of(b"SEND\nx:a:b\n\n\0", l), StompError::RawColon);
    assert_eq!(
        error_of(b"SEND\nxab\n\n\0", l),
        StompError::HeaderWithoutColon
    );
    assert_eq!(error_of(b"SEND\n:ab\n\n\0", l), StompError::EmptyHeaderName);
    assert_eq!(
        error_of(b"SEND\nx:\xff\xfe\n\n\0", l),
        StompError::InvalidUtf8
    );
    assert_eq!(
        error_of(b"SEND\nx:\\c\xc3\n\n\0", l),
        StompError::InvalidUtf8
    );
}

#[test]
fn first_repeated_header_wins() {
    let f = one_frame(
        b"SEND\ndestination:first\ndestination:second\ncontent-length:1\ncontent-length:3\n\nx\0",
    );
    assert_eq!(f.get("destination"), Some("first"));
    assert_eq!(f.body(), b"x");
    // Both stay in the header list, in order.
    assert_eq!(f.headers.len(), 4);
}

#[test]
fn unknown_commands() {
    let l = Limits::default();
    for bad in [
        &b"FOO\n\n\0"[..],
        b"send\n\n\0",
        b" SEND\n\n\0",
        b"SEND \n\n\0",
        b"\rSEND\n\n\0",
    ] {
        assert!(
            matches!(error_of(bad, l), StompError::UnknownCommand(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Every STOMP 1.2 command decodes (the server decides what to do with it).
    for c in Command::ALL {
        let f = one_frame(format!("{c}\n\n\0").as_bytes());
        assert_eq!(f.command, *c);
    }
}

#[test]
fn bad_content_length() {
    for v in ["abc", "-1", "", "+5", " 5", "5 ", "0x10", "1e3"] {
        let input = format!("SEND\ncontent-length:{v}\n\nxxxxx\0");
        assert!(
            matches!(
                error_of(input.as_bytes(), Limits::default()),
                StompError::BadContentLength(_)
            ),
            "{v:?}"
        );
    }
}

fn small() -> Limits {
    Limits {
        max_line_bytes: 32,
        max_headers: 4,
        max_body_bytes: 64,
        max_frame_bytes: 200,
    }
}

#[test]
fn line_limit() {
    let l = small();
    let at_limit = format!("SEND\nx:{}\n\n\0", "v".repeat(30)); // "x:" + 30 = 32 bytes
    assert!(decode_all(at_limit.as_bytes(), l).is_ok());
    let at_limit_crlf = format!("SEND\r\nx:{}\r\n\r\n\0", "v".repeat(30));
    assert!(decode_all(at_limit_crlf.as_bytes(), l).is_ok());
    let over = format!("SEND\nx:{}\n\n\0", "v".repeat(31));
    assert_eq!(
        error_of(over.as_bytes(), l),
        StompError::LineTooLong { limit: 32 }
    );
    // Without any end of line the error comes as soon as the line cannot fit any more.
    let mut d = Decoder::new(l);
    let mut buf = BytesMut::from(&b"SEND\nx:"[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&[b'v'; 31]); // 33 bytes of line, one short of max + 2
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"v");
    assert_eq!(
        d.decode(&mut buf).unwrap_err(),
        StompError::LineTooLong { limit: 32 }
    );
    // A command line is a line too.
    let mut d = Decoder::new(l);
    let mut buf = BytesMut::from(&[b'A'; 40][..]);
    assert_eq!(
        d.decode(&mut buf).unwrap_err(),
        StompError::LineTooLong { limit: 32 }
    );
}

#[test]
fn header_count_limit() {
    let l = small();
    assert!(decode_all(b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0", l).is_ok());
    assert_eq!(
        error_of(b"SEND\na:1\nb:2\nc:3\nd:4\ne:5\n\n\0", l),
        StompError::TooManyHeaders { limit: 4 }
    );
    // Repeats count.
    assert_eq!(
        error_of(b"SEND\na:1\na:1\na:1\na:1\na:1\n\n\0", l),
        StompError::TooManyHeaders { limit: 4 }
    );
}

#[test]
fn body_limit() {
    let l = small();
    let ok = format!("SEND\ncontent-length:64\n\n{}\0", "b".repeat(64));
    assert!(decode_all(ok.as_bytes(), l).is_ok());
    let ok_nul = format!("SEND\n\n{}\0", "b".repeat(64));
    assert!(decode_all(ok_nul.as_bytes(), l).is_ok());
    // A lying content-length is refused before any body byte is buffered.
    let mut d = Decoder::new(l);
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:65\n\n"[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap_err(),
        StompError::BodyTooLarge { limit: 64 }
    );
    let mut d = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:99999999999999999999999\n\n"[..]);
    assert!(matches!(
        d.decode(&mut buf).unwrap_err(),
        StompError::BadContentLength(_)
    ));
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:18446744073709551615\n\n"[..]);
    let mut d = Decoder::new(Limits::default());
    assert!(matches!(
        d.decode(&mut buf).unwrap_err(),
        StompError::BodyTooLarge { .. }
    ));
    // A body without NUL is refused once it outgrows the limit, without waiting for the NUL.
    let mut d = Decoder::new(l);
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    buf.extend_from_slice(&[b'b'; 64]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"b");
    assert_eq!(
        d.decode(&mut buf).unwrap_err(),
        StompError::BodyTooLarge { limit: 64 }
    );
    // A NUL found beyond the limit in one read is refused as well.
    let over = format!("SEND\n\n{}\0", "b".repeat(65));
    assert_eq!(
        error_of(over.as_bytes(), l),
        StompError::BodyTooLarge { limit: 64 }
    );
}

#[test]
fn frame_limit() {
    let l = Limits {
        max_frame_bytes: 40,
        ..small()
    };
    // 5 + 20 + 1 + 13 + 1 = 40 bytes exactly.
    let ok = format!("SEND\nx:{}\n\n{}\0", "h".repeat(17), "b".repeat(13));
    assert_eq!(ok.len(), 40);
    assert!(decode_all(ok.as_bytes(), l).is_ok());
    let over = format!("SEND\nx:{}\n\n{}\0", "h".repeat(17), "b".repeat(14));
    assert_eq!(
        error_of(over.as_bytes(), l),
        StompError::FrameTooLarge { limit: 40 }
    );
    let over_cl = format!(
        "SEND\nx:{}\ncontent-length:14\n\n{}\0",
        "h".repeat(17),
        "b".repeat(14)
    );
    assert_eq!(
        error_of(over_cl.as_bytes(), l),
        StompError::FrameTooLarge { limit: 40 }
    );
    // Headers alone can cross it.
    let heads = format!("SEND\na:{}\nb:{}\n\n\0", "h".repeat(20), "h".repeat(20));
    assert_eq!(
        error_of(heads.as_bytes(), l),
        StompError::FrameTooLarge { limit: 40 }
    );
}

#[test]
fn error_kinds_are_stable() {
    assert_eq!(StompError::MissingNul.kind(), "missing_nul");
    assert_eq!(
        StompError::BodyTooLarge { limit: 1 }.kind(),
        "body_too_large"
    );
    assert!(StompError::TooManyHeaders { limit: 1 }.is_limit());
    assert!(!StompError::InvalidEscape.is_limit());
}

/// A stream with every feature: heart-beats, CRLF, escapes, both body modes, binary body.
fn sample_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"\n\r\n");
    s.extend_from_slice(b"CONNECT\r\naccept-version:1.2\r\nheart-beat:0,24000\r\n\r\n\0\n");
    s.extend_from_slice(b"SUBSCRIBE\ndestination:r\\c1\nid:s\\\\1\nack:auto\n\n\0");
    s.extend_from_slice(b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r\\c1\n");
    s.extend_from_slice(b"content-length:5\n\n{\0}\0\0\0");
    s.extend_from_slice(b"\nSEND\ndestination:x\n\n[1,2,3]\0");
    s.extend_from_slice(b"DISCONNECT\nreceipt:bye\n\n\0\r\n");
    s
}

#[test]
fn sample_stream_decodes() {
    let items = decode_all(&sample_stream(), Limits::default()).unwrap();
    let frames: Vec<&Frame> = items
        .iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::HeartBeat => None,
        })
        .collect();
    assert_eq!(frames.len(), 5);
    assert_eq!(items.len() - frames.len(), 5);
    assert_eq!(frames[1].get("destination"), Some("r:1"));
    assert_eq!(frames[1].get("id"), Some("s\\1"));
    assert_eq!(frames[2].get("reply-to"), Some("r:1"));
    assert_eq!(frames[2].body(), b"{\0}\0\0");
    assert_eq!(frames[3].body(), b"[1,2,3]");
    assert_eq!(frames[4].get("receipt"), Some("bye"));
}

#[test]
fn split_reads_at_every_byte_boundary() {
    let input = sample_stream();
    let whole = decode_all(&input, Limits::default()).unwrap();
    for cut in 0..=input.len() {
        assert_eq!(
            decode_chunks(&input, &[cut], Limits::default()).unwrap(),
            whole,
            "cut at {cut}"
        );
    }
    for a in (0..input.len()).step_by(3) {
        for b in (a..=input.len()).step_by(7) {
            assert_eq!(
                decode_chunks(&input, &[a, b], Limits::default()).unwrap(),
                whole,
                "cuts {a},{b}"
            );
        }
    }
    let every: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        decode_chunks(&input, &every, Limits::default()).unwrap(),
        whole
    );
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_chunking_matches_whole_decoding() {
    let mut rng = Rng(0x5EED_0F57_0AF0_0D11);
    let mut input = Vec::new();
    for _ in 0..50 {
        input.extend_from_slice(&sample_stream());
    }
    let whole = decode_all(&input, Limits::default()).unwrap();
    for _ in 0..200 {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += 1 + rng.below(40);
            if at >= input.len() {
                break;
            }
            cuts.push(at);
        }
        assert_eq!(
            decode_chunks(&input, &cuts, Limits::default()).unwrap(),
            whole
        );
    }
}

/// Header text drawn from an alphabet heavy in characters that need escaping.
fn random_text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        ":",
        "\\",
        "\n",
        "\r",
        "c",
        "n",
        "r",
        "a",
        " ",
        "é",
        "\\c",
        "\u{1F600}",
        "0",
    ];
    let n = rng.below(12);
    (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect()
}

#[test]
fn escaping_round_trips() {
    let mut rng = Rng(0xC0FF_EE12_3456_789A);
    for _ in 0..2000 {
        let mut name = random_text(&mut rng);
        if name.is_empty() {
            name.push('k');
        }
        let value = random_text(&mut rng);
        let body = random_text(&mut rng).into_bytes();
        let frame = Frame::new(Command::Message)
            .with_header(name.clone(), value.clone())
            .with_body(body.clone());
        let back = one_frame(&frame.to_bytes());
        assert_eq!(back.get(&name), Some(value.as_str()), "{name:?}");
        assert_eq!(back.body(), body.as_slice());
    }
}

#[test]
fn constructors_round_trip() {
    use sdm_stomp::HeartBeat;
    let frames = [
        Frame::connect(Some("h"), (0, 24000)),
        Frame::connected(HeartBeat::server(Some("0,24000"))),
        Frame::subscribe("jms.queue.events", "s1"),
        Frame::unsubscribe("s1"),
        Frame::send(
            "jms.topic.vdsm_requests",
            Some("r"),
            Bytes::from_static(b"{}"),
        ),
        Frame::message("r", "s1", Bytes::from_static(b"{\"id\":1}")),
        Frame::error("Version unsupported"),
        Frame::receipt("bye"),
        Frame::disconnect("bye"),
    ];
    for f in frames {
        let back = one_frame(&f.to_bytes());
        assert_eq!(back.command, f.command);
        assert_eq!(back.body(), f.body());
        for (k, v) in &f.headers {
            assert_eq!(back.get(k), Some(v.as_str()));
        }
        // Decoding then encoding again gives the same bytes.
        assert_eq!(back.to_bytes(), f.to_bytes());
    }
}

#[test]
fn slow_drip_of_a_long_body_is_linear() {
    // 4 MiB without content-length, fed 512 bytes at a time: each call scans only new bytes,
    // so this finishes in well under a second even in a debug build.
    let body = vec![b'x'; 4 << 20];
    let mut input = b"SEND\n\n".to_vec();
    input.extend_from_slice(&body);
    input.push(0);
    let cuts: Vec<usize> = (512..input.len()).step_by(512).collect();
    let start = std::time::Instant::now();
    let items = decode_chunks(&input, &cuts, Limits::default()).unwrap();
    assert!(matches!(&items[..], [Item::Frame(f)] if f.body().len() == body.len()));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
