//! Encoder output, byte for byte, against frames written out by hand from VDSM's
//! `yajsonrpc/stomp.py` (`Frame.encode`) and `stompserver.py` (which frames it sends with which
//! headers in which order).

use bytes::Bytes;
use sdm_stomp::{Command, Frame, HeartBeat, HEART_BEAT};

fn text(f: &Frame) -> String {
    String::from_utf8(f.to_bytes()).unwrap()
}

#[test]
fn connected() {
    assert_eq!(
        text(&Frame::connected(HeartBeat::server(Some("0,8000")))),
        "CONNECTED\nversion:1.2\nheart-beat:8000,0\n\n\0"
    );
    assert_eq!(
        text(&Frame::connected(HeartBeat::server(None))),
        "CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0"
    );
    assert_eq!(
        text(&Frame::connected(HeartBeat::server(Some("5000,200")))),
        "CONNECTED\nversion:1.2\nheart-beat:1000,5000\n\n\0"
    );
}

#[test]
fn message() {
    let body = r#"{"jsonrpc":"2.0","id":"1","result":true}"#;
    assert_eq!(
        text(&Frame::message("jms.topic.vdsm_responses", "sub-1", body)),
        "MESSAGE\ndestination:jms.topic.vdsm_responses\ncontent-type:application/json\n\
         subscription:sub-1\ncontent-length:40\n\n{\"jsonrpc\":\"2.0\",\"id\":\"1\",\"result\":true}\0"
    );
    // content-length counts bytes, not characters.
    assert_eq!(
        Frame::message("d", "s", "é").to_bytes(),
        b"MESSAGE\ndestination:d\ncontent-type:application/json\nsubscription:s\ncontent-length:2\n\n\xc3\xa9\0"
    );
    // A reply-to destination with a colon is escaped, as VDSM escapes every header.
    assert_eq!(
        text(&Frame::message("a:b", "s", "")),
        "MESSAGE\ndestination:a\\cb\ncontent-type:application/json\nsubscription:s\ncontent-length:0\n\n\0"
    );
}

#[test]
fn error_has_its_text_in_the_body_and_no_message_header() {
    assert_eq!(
        text(&Frame::error("Version unsupported")),
        "ERROR\ncontent-length:19\n\nVersion unsupported\0"
    );
    assert_eq!(
        text(&Frame::error(
            "Missing destination or subscription id header"
        )),
        "ERROR\ncontent-length:45\n\nMissing destination or subscription id header\0"
    );
}

#[test]
fn receipt() {
    assert_eq!(
        text(&Frame::receipt("bye-1")),
        "RECEIPT\nreceipt-id:bye-1\n\n\0"
    );
}

#[test]
fn client_frames() {
    assert_eq!(
        text(&Frame::connect(Some("engine"), (0, 24000))),
        "CONNECT\naccept-version:1.2\nhost:engine\nheart-beat:0,24000\n\n\0"
    );
    assert_eq!(
        text(&Frame::connect(None, (5000, 10000))),
        "CONNECT\naccept-version:1.2\nheart-beat:5000,10000\n\n\0"
    );
    assert_eq!(
        text(&Frame::subscribe("jms.queue.events", "e1")),
        "SUBSCRIBE\ndestination:jms.queue.events\nid:e1\nack:auto\n\n\0"
    );
    assert_eq!(text(&Frame::unsubscribe("e1")), "UNSUBSCRIBE\nid:e1\n\n\0");
    assert_eq!(
        text(&Frame::send("jms.topic.vdsm_requests", Some("r-1"), "[]")),
        "SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r-1\ncontent-length:2\n\n[]\0"
    );
    assert_eq!(
        text(&Frame::disconnect("bye")),
        "DISCONNECT\nreceipt:bye\n\n\0"
    );
    assert_eq!(HEART_BEAT, b"\n");
}

#[test]
fn headers_are_escaped() {
    let f = Frame::new(Command::Send).with_header("k:\\", "a:b\\c\nd\re");
    assert_eq!(text(&f), "SEND\nk\\c\\\\:a\\cb\\\\c\\nd\\re\n\n\0");
}

#[test]
fn content_length_follows_the_body() {
    // An existing content-length keeps its place and gets the true length; repeats go.
    let f = Frame::new(Command::Message)
        .with_header("content-length", "999")
        .with_header("x", "y")
        .with_header("content-length", "7")
        .with_body(Bytes::from_static(b"abc"));
    assert_eq!(text(&f), "MESSAGE\ncontent-length:3\nx:y\n\nabc\0");
    // No body: no content-length, whatever the headers said.
    let f = Frame::new(Command::Receipt)
        .with_header("receipt-id", "r")
        .with_header("content-length", "5");
    assert_eq!(text(&f), "RECEIPT\nreceipt-id:r\n\n\0");
    // An empty body is still a body.
    let f = Frame::new(Command::Error).with_body(Bytes::new());
    assert_eq!(text(&f), "ERROR\ncontent-length:0\n\n\0");
}

#[test]
fn binary_body_is_written_as_is() {
    let f = Frame::new(Command::Message).with_body(Bytes::from_static(b"\0\n\xff"));
    assert_eq!(f.to_bytes(), b"MESSAGE\ncontent-length:3\n\n\0\n\xff\0");
}
