//! The async client against the loopback server (and against scripted servers for the
//! failure cases), over in-memory duplex streams.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use sdm_stomp::{Client, ClientError, ClientOptions, Command, Decoder, Frame, HeartBeat, Item};
use serde_json::{json, Value};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

fn options(heart_beat: (u64, u64)) -> ClientOptions {
    ClientOptions {
        heart_beat,
        host: Some("localhost".into()),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn request_reply_and_disconnect() {
    let (a, b) = duplex(64 << 10);
    let server = tokio::spawn(support::serve(b));
    let mut client = Client::connect(a, options((0, 0))).await.unwrap();
    assert_eq!(client.heart_beat(), HeartBeat::default());
    client.subscribe("reply-1", "s1").await.unwrap();
    let request = json!({"jsonrpc": "2.0", "id": "r1", "method": "Host.getJobs", "params": {}});
    client
        .send_request("reply-1", &serde_json::to_vec(&request).unwrap())
        .await
        .unwrap();
    let message = client.next_message().await.unwrap();
    assert_eq!(message.get("destination"), Some("reply-1"));
    assert_eq!(message.get("subscription"), Some("s1"));
    assert_eq!(message.get("content-type"), Some("application/json"));
    let reply: Value = serde_json::from_slice(message.body()).unwrap();
    assert_eq!(reply["id"], "r1");
    assert_eq!(reply["result"]["method"], "Host.getJobs");
    client.disconnect("bye").await.unwrap();
    let report = server.await.unwrap().unwrap();
    assert_eq!(
        report.commands,
        [
            Command::Connect,
            Command::Subscribe,
            Command::Send,
            Command::Disconnect
        ]
    );
    let connect = &report.connect_headers[0];
    assert_eq!(
        connect[0],
        ("accept-version".to_string(), "1.2".to_string())
    );
    assert!(connect.contains(&("host".to_string(), "localhost".to_string())));
}

/// A server that reads one frame and answers `reply` (raw bytes), then waits.
async fn scripted(mut stream: DuplexStream, reply: Vec<u8>, then_close: bool) -> Frame {
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::default();
    let frame = loop {
        if let Some(Item::Frame(f)) = decoder.decode(&mut buf).unwrap() {
            break f;
        }
        assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0);
    };
    stream.write_all(&reply).await.unwrap();
    if !then_close {
        // Hold the stream open (silently) until the client gives up.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    frame
}

#[tokio::test]
async fn refused_version_is_a_server_error() {
    let (a, b) = duplex(4096);
    let server = tokio::spawn(scripted(
        b,
        Frame::error("Version unsupported").to_bytes(),
        true,
    ));
    let err = Client::connect(a, options((0, 0))).await.err().unwrap();
    assert!(
        matches!(&err, ClientError::Server(m) if m == "Version unsupported"),
        "{err}"
    );
    assert_eq!(err.kind(), "server_error");
    assert_eq!(server.await.unwrap().command, Command::Connect);
}

#[tokio::test]
async fn closed_mid_frame_and_between_frames() {
    let (a, b) = duplex(4096);
    let mut reply = Frame::connected(HeartBeat::default()).to_bytes();
    reply.extend_from_slice(b"MESSAGE\ndestination:x\ncontent-len");
    tokio::spawn(scripted(b, reply, true));
    let mut client = Client::connect(a, options((0, 0))).await.unwrap();
    assert!(matches!(client.recv().await, Err(ClientError::Closed)));

    let (a, b) = duplex(4096);
    let mut reply = Frame::connected(HeartBeat::default()).to_bytes();
    reply.extend_from_slice(b"\n");
    tokio::spawn(scripted(b, reply, true));
    let mut client = Client::connect(a, options((0, 0))).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), None);
    assert!(matches!(
        client.next_message().await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn garbage_from_the_server_is_a_protocol_error() {
    let (a, b) = duplex(4096);
    let mut reply = Frame::connected(HeartBeat::default()).to_bytes();
    reply.extend_from_slice(b"HELLO\n\n\0");
    tokio::spawn(scripted(b, reply, false));
    let mut client = Client::connect(a, options((0, 0))).await.unwrap();
    let err = client.recv().await.unwrap_err();
    assert_eq!(err.kind(), "unknown_command", "{err}");
}

#[tokio::test]
async fn heart_beats_flow_both_ways() {
    let (a, b) = duplex(64 << 10);
    let server = tokio::spawn(support::serve(b));
    // 10 ms is raised to VDSM's minimum of 1000 ms on both sides.
    let mut client = Client::connect(a, options((10, 10))).await.unwrap();
    let hb = client.heart_beat();
    assert_eq!((hb.send_ms, hb.expect_ms), (1000, 1000));
    // Idle for 2.5 s inside recv: the client writes heart-beats and keeps the server's coming.
    let idle = tokio::time::timeout(Duration::from_millis(2500), client.recv()).await;
    assert!(idle.is_err(), "recv returned {idle:?}");
    client.disconnect("bye").await.unwrap();
    let report = server.await.unwrap().unwrap();
    assert!(report.heart_beats >= 2, "{report:?}");
    assert!(report.heart_beats_sent >= 2, "{report:?}");
}

#[tokio::test]
async fn a_silent_server_is_noticed() {
    let (a, b) = duplex(4096);
    // The server promises a heart-beat every second, then says nothing more.
    let connected = Frame::connected(HeartBeat::server(Some("0,1000"))).to_bytes();
    tokio::spawn(scripted(b, connected, false));
    let mut client = Client::connect(a, options((0, 1000))).await.unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(support::PATIENCE, client.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Silent(d) if d == Duration::from_secs(2)),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

#[tokio::test]
async fn connect_times_out_without_connected() {
    let (a, b) = duplex(4096);
    tokio::spawn(scripted(b, Vec::new(), false));
    let opts = ClientOptions {
        connect_timeout: Duration::from_millis(200),
        ..options((0, 0))
    };
    let err = Client::connect(a, opts).await.err().unwrap();
    assert!(matches!(err, ClientError::ConnectTimeout(_)), "{err}");
}

#[tokio::test]
async fn absurd_heart_beat_from_the_server_is_harmless() {
    let (a, b) = duplex(4096);
    let connected = Frame::new(Command::Connected)
        .with_header("version", "1.2")
        .with_header(
            "heart-beat",
            "99999999999999999999999,99999999999999999999999",
        )
        .to_bytes();
    tokio::spawn(scripted(b, connected, false));
    let mut client = Client::connect(a, options((1000, 1000))).await.unwrap();
    assert_eq!(client.heart_beat().send_ms, u64::MAX);
    let idle = tokio::time::timeout(Duration::from_millis(300), client.recv()).await;
    assert!(idle.is_err(), "recv returned {idle:?}");
}
