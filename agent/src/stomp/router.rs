//! The broker state every STOMP connection shares: subscriptions by destination, the map of
//! request ids to `reply-to` destinations, and delivery of MESSAGE frames into the bounded
//! outboxes of the subscribed connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sdm_stomp::{Command, Frame, RESPONSE_QUEUE};
use tokio::sync::mpsc;

use crate::conn::ConnState;
use crate::metrics;

/// Most request ids waiting for their reply at once, over every connection; beyond it a
/// request's reply goes to the default response queue instead of its `reply-to`.
const MAX_PENDING_REPLIES: usize = 65_536;

/// The outgoing queue of one connection: encoded frames, bounded in count and bytes. A
/// connection whose queue is full is not keeping up with what it asked for: it is closed.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    state: Arc<ConnState>,
}

/// The reading end of an [`Outbox`], for the connection's writer.
pub struct OutboxReader {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl OutboxReader {
    /// The next frame's bytes; None when every sender is gone.
    pub async fn next(&mut self) -> Option<Bytes> {
        let b = self.rx.recv().await?;
        self.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Some(b)
    }
}

/// An outbox of at most `max_frames` frames and `max_bytes` bytes for connection `state`.
pub fn outbox(
    state: Arc<ConnState>,
    max_frames: usize,
    max_bytes: usize,
) -> (Outbox, OutboxReader) {
    let (tx, rx) = mpsc::channel(max_frames.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued: queued.clone(),
            max_bytes,
            state,
        },
        OutboxReader { rx, queued },
    )
}

impl Outbox {
    /// Queues `frame`. False (and the connection closed) when the queue is full.
    pub fn push(&self, frame: &Frame) -> bool {
        let mut b = BytesMut::new();
        frame.encode(&mut b);
        self.push_bytes(b.freeze())
    }

    fn push_bytes(&self, b: Bytes) -> bool {
        let len = b.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        // One frame always fits an empty queue, however large the limit says replies may be.
        let over = before > 0 && before + len > self.max_bytes;
        if over || self.tx.try_send(b).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            if !self.state.is_killed() {
                tracing::info!("closing a STOMP connection that does not read what it asked for");
                metrics::stomp_dropped("outbox_full");
                self.state.close();
            }
            return false;
        }
        true
    }
}

/// One subscription.
#[derive(Clone)]
struct Subscriber {
    conn: u64,
    id: String,
    outbox: Outbox,
}

/// Where a reply goes: the `reply-to` of its request (None: the request had none, the reply
/// is dropped).
type ReplyTo = Option<String>;

/// The state shared by every STOMP connection of the listener.
#[derive(Default)]
pub struct Broker {
    subs: Mutex<HashMap<String, Vec<Subscriber>>>,
    replies: Mutex<HashMap<String, ReplyTo>>,
}

impl Broker {
    /// An empty broker.
    pub fn new() -> Arc<Broker> {
        Arc::new(Broker::default())
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replies(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReplyTo>> {
        self.replies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes connection `conn` to `destination` as subscription `id`.
    pub fn subscribe(&self, conn: u64, destination: &str, id: &str, outbox: &Outbox) {
        self.subs()
            .entry(destination.to_string())
            .or_default()
            .push(Subscriber {
                conn,
                id: id.to_string(),
                outbox: outbox.clone(),
            });
    }

    /// Ends subscription `id` of connection `conn` to `destination`.
    pub fn unsubscribe(&self, conn: u64, destination: &str, id: &str) {
        let mut subs = self.subs();
        if let Some(list) = subs.get_mut(destination) {
            list.retain(|s| !(s.conn == conn && s.id == id));
            if list.is_empty() {
                subs.remove(destination);
            }
        }
    }

    /// Drops every subscription of connection `conn` (it closed).
    pub fn drop_connection(&self, conn: u64) {
        self.subs().retain(|_, list| {
            list.retain(|s| s.conn != conn);
            !list.is_empty()
        });
    }

    /// Remembers where the reply to request `id` (its JSON text) goes.
    pub fn expect_reply(&self, id: String, reply_to: ReplyTo) {
        let mut r = self.replies();
        if r.len() < MAX_PENDING_REPLIES || r.contains_key(&id) {
            r.insert(id, reply_to);
        }
    }

    /// Sends a JSON-RPC reply: to the `reply-to` remembered for `id` (forgotten now), or, when
    /// none was (no id, a null id, an unparsable request), to the default response queue.
    pub fn reply(&self, id: Option<&str>, body: Bytes) {
        let dest = match id.and_then(|id| self.replies().remove(id)) {
            Some(Some(d)) => d,
            // The request had no reply-to: VDSM drops its reply.
            Some(None) => return,
            None => RESPONSE_QUEUE.to_string(),
        };
        self.publish(&dest, body);
    }

    /// Sends `body` as a MESSAGE to every subscriber of exactly `destination` (how VDSM
    /// delivers replies and events). Returns how many frames were queued.
    pub fn publish(&self, destination: &str, body: Bytes) -> usize {
        let targets: Vec<Subscriber> = self.subs().get(destination).cloned().unwrap_or_default();
        if targets.is_empty() {
            tracing::trace!(destination, "no subscriber: message dropped");
        }
        targets
            .iter()
            .filter(|s| {
                s.outbox
                    .push(&Frame::message(destination, &s.id, body.clone()))
            })
            .count()
    }

    /// Forwards a SEND to the subscribers of its destination and of every dot-prefix of it
    /// (`a.b.c` reaches `a`, `a.b` and `a.b.c`): a MESSAGE with `subscription` first, then the
    /// SEND's headers. Returns how many subscribers it reached.
    pub fn forward(&self, destination: &str, send: &Frame) -> usize {
        let mut targets = Vec::new();
        {
            let subs = self.subs();
            let mut end = 0;
            loop {
                let next = destination[end..].find('.').map(|i| end + i);
                let prefix = &destination[..next.unwrap_or(destination.len())];
                if let Some(list) = subs.get(prefix) {
                    targets.extend(list.iter().cloned());
                }
                match next {
                    Some(i) => end = i + 1,
                    None => break,
                }
            }
        }
        for s in &targets {
            let mut f = Frame::new(Command::Message).with_header("subscription", &s.id);
            f.headers.extend(send.headers.iter().cloned());
            f.body = Some(send.body.clone().unwrap_or_default());
            s.outbox.push(&f);
        }
        targets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Connections;

    fn frames(r: &mut OutboxReader) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(b) = r.rx.try_recv() {
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        out
    }

    #[test]
    fn replies_follow_reply_to_and_events_reach_exact_subscribers() {
        let conns = Connections::new(4);
        let (a, b) = (conns.register().unwrap(), conns.register().unwrap());
        let (oa, mut ra) = outbox(a.state.clone(), 16, 1 << 20);
        let (ob, mut rb) = outbox(b.state.clone(), 16, 1 << 20);
        let broker = Broker::new();
        broker.subscribe(1, "reply.q", "s1", &oa);
        broker.subscribe(2, "reply.q", "s2", &ob);
        broker.subscribe(2, "jms.queue.events", "ev", &ob);
        broker.expect_reply("\"r1\"".into(), Some("reply.q".into()));
        broker.reply(Some("\"r1\""), Bytes::from_static(b"{}"));
        let (fa, fb) = (frames(&mut ra), frames(&mut rb));
        assert_eq!(
            fa,
            ["MESSAGE\ndestination:reply.q\ncontent-type:application/json\nsubscription:s1\ncontent-length:2\n\n{}\0"]
        );
        assert_eq!(fb.len(), 1);
        // The id was used up: a second reply with it goes to the default queue (no one).
        broker.reply(Some("\"r1\""), Bytes::from_static(b"{}"));
        assert!(frames(&mut ra).is_empty());
        // No reply-to: dropped.
        broker.expect_reply("7".into(), None);
        broker.reply(Some("7"), Bytes::from_static(b"{}"));
        assert!(frames(&mut ra).is_empty() && frames(&mut rb).is_empty());
        // Events are exact-match; forwarding reaches prefixes.
        assert_eq!(broker.publish("jms.queue", Bytes::from_static(b"x")), 0);
        assert_eq!(
            broker.publish("jms.queue.events", Bytes::from_static(b"x")),
            1
        );
        let send = Frame::send("jms.queue.events.x", Some("r"), Bytes::from_static(b"y"));
        assert_eq!(broker.forward("jms.queue.events.x", &send), 1);
        let got = frames(&mut rb);
        assert_eq!(got.len(), 2);
        assert!(got[1].starts_with(
            "MESSAGE\nsubscription:ev\ndestination:jms.queue.events.x\nreply-to:r\ncontent-length:1\n\ny"
        ));
        broker.drop_connection(2);
        assert_eq!(
            broker.publish("jms.queue.events", Bytes::from_static(b"x")),
            0
        );
    }

    #[test]
    fn a_full_outbox_closes_its_connection() {
        let conns = Connections::new(4);
        let a = conns.register().unwrap();
        let (o, _r) = outbox(a.state.clone(), 2, 1 << 20);
        let f = Frame::error("x");
        assert!(o.push(&f) && o.push(&f));
        assert!(!o.push(&f));
        assert!(a.state.is_killed());
        let b = conns.register().unwrap();
        let (o, mut r) = outbox(b.state.clone(), 100, 10);
        assert!(
            o.push(&Frame::error("a frame longer than ten bytes")),
            "one always fits"
        );
        assert!(!o.push(&f), "bytes are bounded");
        assert_eq!(frames(&mut r).len(), 1);
    }
}
