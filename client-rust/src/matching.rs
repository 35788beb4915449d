//! Matching replies to requests (protocol §5): a pure state machine over sends, replies
//! and an injected clock, so every rule is tested without sockets.
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;

use crate::codec::{build_reply, parse_reply};
use crate::error::{Error, ErrorKind};
use crate::reply::Reply;
use crate::wire::limits::Limits;
use crate::wire::status::Status;
use crate::RequestId;

/// Counters of one connection (protocol §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Observations handed to the socket.
    pub sent: u64,
    /// Sends that failed with `server_unavailable` (or another send error).
    pub send_failed: u64,
    /// Reply messages read from the socket.
    pub received: u64,
    /// Replies older than one already delivered for their model, unread replies a newer
    /// one replaced, and replies to a `request()` that gave up.
    pub stale_dropped: u64,
    /// Replies to no outstanding request (unknown or duplicate id, model that does not match).
    pub unknown_dropped: u64,
    /// Replies that break the protocol.
    pub malformed_dropped: u64,
    /// Matched replies by status name.
    pub by_status: BTreeMap<String, u64>,
    /// Times the DEALER was replaced because libzmq ended its connection for good (a
    /// protocol error: a reply over `max_message_bytes`, a peer speaking nonsense, a
    /// handshake the server refused). Replies to what the old socket sent are lost.
    pub socket_resets: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// For `get_result()`: latest wins.
    Latest,
    /// A `request()` waits for this exact id.
    Awaited,
    /// Its `request()` gave up: a late reply is stale.
    Abandoned,
}

#[derive(Debug)]
struct Pending {
    model_id: String,
    sent_at: Instant,
    mode: Mode,
}

/// Where a reply went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Into the model's delivery slot (for `get_result()`).
    Latest,
    /// To the `request()` waiting for this id.
    Awaited(RequestId),
    /// Counted and dropped.
    Dropped,
}

/// Request ids, the outstanding table and per-model delivery.
#[derive(Debug)]
pub(crate) struct Matcher {
    limits: Limits,
    max_pending: usize,
    next_id: u64,
    // Ids increase in send order, so the first entry is the oldest.
    pending: BTreeMap<u64, Pending>,
    newest: HashMap<String, u64>,
    latest: HashMap<String, Reply>,
    awaited: HashMap<u64, Result<Reply, Error>>,
    stats: Stats,
}

/// Outstanding requests kept; the oldest are forgotten (their late replies are unknown).
pub(crate) const MAX_PENDING: usize = 4096;

impl Matcher {
    pub(crate) fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_PENDING)
    }

    pub(crate) fn with_capacity(limits: Limits, max_pending: usize) -> Self {
        Matcher {
            limits,
            max_pending: max_pending.max(1),
            next_id: 1,
            pending: BTreeMap::new(),
            newest: HashMap::new(),
            latest: HashMap::new(),
            awaited: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts one replacement of the socket (see [`Stats::socket_resets`]).
    pub(crate) fn socket_reset(&mut self) {
        self.stats.socket_resets += 1;
    }

    pub(crate) fn next_request_id(&mut self) -> RequestId {
        let rid = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        RequestId(rid)
    }

    /// Records an outstanding request; called before sending so no reply can outrun it.
    pub(crate) fn track(&mut self, rid: RequestId, model_id: &str, awaited: bool, now: Instant) {
        while self.pending.len() >= self.max_pending {
            if let Some((old, _)) = self.pending.pop_first() {
                self.awaited.remove(&old);
            }
        }
        let mode = if awaited { Mode::Awaited } else { Mode::Latest };
        self.pending.insert(
            rid.0,
            Pending {
                model_id: model_id.to_owned(),
                sent_at: now,
                mode,
            },
        );
    }

    pub(crate) fn sent(&mut self) {
        self.stats.sent += 1;
    }

    /// The send failed: forget the request.
    pub(crate) fn untrack(&mut self, rid: RequestId) {
        self.pending.remove(&rid.0);
        self.stats.send_failed += 1;
    }

    /// Its `request()` gave up: a late reply is counted stale.
    pub(crate) fn abandon(&mut self, rid: RequestId) {
        self.awaited.remove(&rid.0);
        if let Some(p) = self.pending.get_mut(&rid.0) {
            p.mode = Mode::Abandoned;
        }
    }

    pub(crate) fn take_latest(&mut self, model_id: &str) -> Option<Reply> {
        self.latest.remove(model_id)
    }

    pub(crate) fn take_awaited(&mut self, rid: RequestId) -> Option<Result<Reply, Error>> {
        self.awaited.remove(&rid.0)
    }

    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Routes one received message; never panics, whatever the bytes.
    pub(crate) fn on_reply(&mut self, frames: &[Bytes], now: Instant) -> Routed {
        self.stats.received += 1;
        let (resp, payload) = match parse_reply(frames, &self.limits) {
            Ok(parsed) => parsed,
            Err(_) => {
                self.stats.malformed_dropped += 1;
                return Routed::Dropped;
            }
        };
        let mut rid = resp.request_id;
        if rid == 0 {
            if resp.protocol_version >= 2 {
                // A v2 server answers an observation it could not read with id 0: every
                // request() waiting now may be the one, so each learns the server's reason.
                self.stats.malformed_dropped += 1;
                let text = format!(
                    "the server could not match an observation to a request: {}",
                    resp.error
                );
                let waiting: Vec<u64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.mode == Mode::Awaited)
                    .map(|(&id, _)| id)
                    .collect();
                for id in waiting {
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.mode = Mode::Abandoned;
                        let err = Error::new(ErrorKind::Protocol, text.clone())
                            .with_request(RequestId(id), &p.model_id);
                        self.awaited.insert(id, Err(err));
                    }
                }
                return Routed::Dropped;
            }
            // 1.x servers echo no id and answer in arrival order per client.
            rid = self.oldest_pending(&resp.model_id).unwrap_or(0);
        }
        let matched = self
            .pending
            .get(&rid)
            .is_some_and(|p| p.model_id == resp.model_id);
        let Some(pending) = matched.then(|| self.pending.remove(&rid)).flatten() else {
            self.stats.unknown_dropped += 1;
            return Routed::Dropped;
        };
        let model_id = pending.model_id;
        let mut reply = match build_reply(resp, payload, &self.limits) {
            Ok(reply) => reply,
            Err(bad) => {
                self.stats.malformed_dropped += 1;
                if pending.mode == Mode::Awaited {
                    let err = Error::new(ErrorKind::Protocol, bad.message)
                        .with_request(RequestId(rid), &model_id);
                    self.awaited.insert(rid, Err(err));
                    return Routed::Awaited(RequestId(rid));
                }
                return Routed::Dropped;
            }
        };
        reply.request_id = RequestId(rid);
        reply.round_trip = Some(now.saturating_duration_since(pending.sent_at));
        *self.stats.by_status.entry(reply.status.name()).or_insert(0) += 1;
        let superseded = reply.status == Status::Superseded;
        match pending.mode {
            Mode::Awaited => {
                if !superseded {
                    self.advance(&model_id, rid);
                }
                self.awaited.insert(rid, Ok(reply));
                Routed::Awaited(RequestId(rid))
            }
            Mode::Abandoned => {
                self.stats.stale_dropped += 1;
                Routed::Dropped
            }
            // A newer observation for this model is on its way; its reply is the one to return.
            Mode::Latest if superseded => Routed::Dropped,
            Mode::Latest => {
                if rid < self.newest.get(&model_id).copied().unwrap_or(0) {
                    self.stats.stale_dropped += 1;
                    return Routed::Dropped;
                }
                self.advance(&model_id, rid);
                self.latest.insert(model_id, reply);
                Routed::Latest
            }
        }
    }

    fn advance(&mut self, model_id: &str, rid: u64) {
        let newest = self.newest.entry(model_id.to_owned()).or_insert(0);
        if rid > *newest {
            *newest = rid;
        }
        if self
            .latest
            .get(model_id)
            .is_some_and(|unread| unread.request_id.0 < rid)
        {
            self.latest.remove(model_id);
            self.stats.stale_dropped += 1;
        }
    }

    fn oldest_pending(&self, model_id: &str) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, p)| p.model_id == model_id && p.mode != Mode::Abandoned)
            .map(|(&id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pb;
    use crate::test_support::{frames, response, tensor};

    struct Fixture {
        m: Matcher,
        t0: Instant,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                m: Matcher::new(Limits::default()),
                t0: Instant::now(),
            }
        }
        fn send(&mut self, model: &str, awaited: bool) -> RequestId {
            let rid = self.m.next_request_id();
            self.m.track(rid, model, awaited, self.t0);
            self.m.sent();
            rid
        }
        fn reply(&mut self, model: &str, rid: RequestId, status: pb::Status) -> Routed {
            let fr = frames(&response(model, rid.0, status), &[]);
            self.m.on_reply(&fr, self.t0 + Duration::from_millis(3))
        }
    }

    #[test]
    fn request_ids_start_at_one_and_increase() {
        let mut f = Fixture::new();
        let ids: Vec<u64> = (0..3).map(|_| f.send("m", false).0).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn the_newest_unread_reply_wins_and_the_replaced_one_counts_stale() {
        let mut f = Fixture::new();
        let (a, b) = (f.send("m", false), f.send("m", false));
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Latest);
        assert_eq!(f.reply("m", b, pb::Status::Ok), Routed::Latest);
        let got = f.m.take_latest("m").unwrap();
        assert_eq!(got.request_id(), b);
        assert_eq!(got.round_trip(), Some(Duration::from_millis(3)));
        assert_eq!(f.m.stats().stale_dropped, 1);
        assert!(f.m.take_latest("m").is_none());
    }

    #[test]
    fn a_reply_older_than_one_delivered_is_stale() {
        let mut f = Fixture::new();
        let (a, b) = (f.send("m", false), f.send("m", false));
        f.reply("m", b, pb::Status::Ok);
        assert!(f.m.take_latest("m").is_some());
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.m.stats().stale_dropped, 1);
        assert_eq!(f.m.stats().by_status.get("OK"), Some(&2));
    }

    #[test]
    fn replies_are_routed_per_model() {
        let mut f = Fixture::new();
        let (a, b) = (f.send("m1", false), f.send("m2", false));
        f.reply("m2", b, pb::Status::Ok);
        f.reply("m1", a, pb::Status::Ok);
        assert_eq!(f.m.take_latest("m1").unwrap().request_id(), a);
        assert_eq!(f.m.take_latest("m2").unwrap().request_id(), b);
        assert_eq!(f.m.stats().stale_dropped, 0);
    }

    #[test]
    fn unknown_duplicate_and_wrong_model_replies_are_counted_unknown() {
        let mut f = Fixture::new();
        let a = f.send("m", false);
        assert_eq!(f.reply("other", a, pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.reply("m", RequestId(42), pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Latest);
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.m.stats().unknown_dropped, 3);
        assert_eq!(f.m.stats().received, 4);
    }

    #[test]
    fn superseded_is_counted_and_skipped_by_get_result() {
        let mut f = Fixture::new();
        let a = f.send("m", false);
        assert_eq!(f.reply("m", a, pb::Status::Superseded), Routed::Dropped);
        assert!(f.m.take_latest("m").is_none());
        assert_eq!(f.m.stats().by_status.get("SUPERSEDED"), Some(&1));
    }

    #[test]
    fn an_awaited_reply_goes_to_its_waiter_and_still_makes_older_ones_stale() {
        let mut f = Fixture::new();
        let a = f.send("m", false);
        let b = f.send("m", true);
        assert_eq!(f.reply("m", b, pb::Status::Ok), Routed::Awaited(b));
        assert!(f.m.take_latest("m").is_none());
        assert_eq!(f.m.take_awaited(b).unwrap().unwrap().request_id(), b);
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.m.stats().stale_dropped, 1);
    }

    #[test]
    fn a_reply_to_an_abandoned_request_is_stale() {
        let mut f = Fixture::new();
        let a = f.send("m", true);
        f.m.abandon(a);
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Dropped);
        assert!(f.m.take_awaited(a).is_none());
        assert_eq!(f.m.stats().stale_dropped, 1);
    }

    #[test]
    fn a_v2_reply_with_id_zero_fails_every_waiting_request_with_the_server_text() {
        let mut f = Fixture::new();
        let a = f.send("m", true);
        let b = f.send("n", true);
        let c = f.send("m", false);
        let mut resp = response("", 0, pb::Status::InvalidRequest);
        resp.error = "envelope: cannot parse".into();
        assert_eq!(f.m.on_reply(&frames(&resp, &[]), f.t0), Routed::Dropped);
        assert_eq!(f.m.stats().malformed_dropped, 1);
        for rid in [a, b] {
            let err = f.m.take_awaited(rid).unwrap().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol);
            assert!(err.message().contains("cannot parse"));
        }
        assert!(f.m.take_awaited(c).is_none());
        // Their real replies, should they come, are stale; c is still outstanding.
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.reply("m", c, pb::Status::Ok), Routed::Latest);
    }

    #[test]
    fn a_1x_reply_matches_the_oldest_outstanding_request_of_its_model() {
        let mut f = Fixture::new();
        let a = f.send("m", false);
        let _other = f.send("n", false);
        let b = f.send("m", false);
        let mut resp = response("m", 0, pb::Status::Unspecified);
        resp.protocol_version = 0;
        assert_eq!(f.m.on_reply(&frames(&resp, &[]), f.t0), Routed::Latest);
        assert_eq!(f.m.take_latest("m").unwrap().request_id(), a);
        f.m.on_reply(&frames(&resp, &[]), f.t0);
        let r = f.m.take_latest("m").unwrap();
        assert_eq!((r.request_id(), r.is_ok()), (b, true));
    }

    #[test]
    fn the_outstanding_table_forgets_the_oldest_past_its_bound() {
        let mut f = Fixture::new();
        f.m = Matcher::with_capacity(Limits::default(), 2);
        let a = f.send("m", false);
        let _b = f.send("m", false);
        let c = f.send("m", false);
        assert_eq!(f.m.outstanding(), 2);
        assert_eq!(f.reply("m", a, pb::Status::Ok), Routed::Dropped);
        assert_eq!(f.m.stats().unknown_dropped, 1);
        assert_eq!(f.reply("m", c, pb::Status::Ok), Routed::Latest);
    }

    #[test]
    fn a_malformed_matched_reply_fails_its_waiter_with_protocol() {
        let mut f = Fixture::new();
        let a = f.send("m", true);
        let mut resp = response("m", a.0, pb::Status::Ok);
        resp.tensors = vec![tensor("x", 2, &[4], 0, 16)];
        assert_eq!(
            f.m.on_reply(&frames(&resp, &[&[0u8; 4]]), f.t0),
            Routed::Awaited(a)
        );
        let err = f.m.take_awaited(a).unwrap().unwrap_err();
        assert_eq!(
            (err.kind(), err.request_id()),
            (ErrorKind::Protocol, Some(a))
        );
        assert_eq!(f.m.stats().malformed_dropped, 1);
    }

    #[test]
    fn garbage_and_failed_sends_are_counted_never_panic() {
        let mut f = Fixture::new();
        let a = f.send("m", false);
        f.m.untrack(a);
        for fr in [
            vec![],
            vec![Bytes::from_static(b"x")],
            vec![Bytes::new(), Bytes::from_static(&[0x0a, 0xff])],
        ] {
            assert_eq!(f.m.on_reply(&fr, f.t0), Routed::Dropped);
        }
        let s = f.m.stats();
        assert_eq!(
            (s.sent, s.send_failed, s.malformed_dropped, s.received),
            (1, 1, 3, 3)
        );
    }
}
