//! The tokio API against the real Python server (feature `tokio`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferential::{Connection, ErrorKind, Observation};

use common::{free_port, Server};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "current_thread")]
async fn async_request_and_get_result_round_trip() {
    let server = Server::start();
    let conn = Connection::builder(&server.endpoint)
        .client_id("rust-aio")
        .connect_async()
        .unwrap();
    let echo = conn.model("echo").unwrap();
    let joints = [0.5f32; 7];
    let reply = echo
        .request(&Observation::new().tensor("joints", &joints, &[7]), WAIT)
        .await
        .unwrap();
    assert_eq!(
        reply.tensor("joints").unwrap().try_as::<f32>().unwrap()[..],
        joints
    );
    let noop = conn.model("noop").unwrap();
    let first = noop.observe(&Observation::new()).await.unwrap();
    let second = noop.observe(&Observation::new()).await.unwrap();
    assert!(second > first);
    let deadline = Instant::now() + WAIT;
    let mut newest = None;
    while newest != Some(second) && Instant::now() < deadline {
        if let Some(r) = noop.get_result(Duration::from_millis(200)).await.unwrap() {
            newest = Some(r.request_id());
        }
    }
    assert_eq!(newest, Some(second));
    let err = conn
        .model("no-such-model")
        .unwrap()
        .request(&Observation::new(), WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownModel);
    assert_eq!(conn.stats().unknown_dropped, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_send_with_no_server_fails_in_time_without_blocking_the_runtime() {
    let conn = Connection::builder(&format!("tcp://127.0.0.1:{}", free_port()))
        .send_timeout_ms(300)
        .connect_async()
        .unwrap();
    let model = conn.model("echo").unwrap();
    // A task on the same single-threaded runtime keeps ticking while the send waits.
    let ticks = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&ticks);
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    let err = model.observe(&Observation::new()).await.unwrap_err();
    let took = started.elapsed();
    ticker.abort();
    assert_eq!(err.kind(), ErrorKind::ServerUnavailable);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        ticks.load(Ordering::Relaxed) >= 10,
        "the runtime was blocked"
    );
    assert_eq!(conn.stats().send_failed, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn an_async_send_goes_out_once_the_server_comes_up_within_the_send_timeout() {
    let port = free_port();
    let conn = Connection::builder(&format!("tcp://127.0.0.1:{port}"))
        .reconnect_ivl_ms(20)
        .reconnect_ivl_max_ms(0)
        .send_timeout_ms(30_000)
        .connect_async()
        .unwrap();
    let model = conn.model("echo").unwrap();
    let server = tokio::task::spawn_blocking(move || Server::start_on(port));
    // Retried on writability: it leaves as soon as the connection is up.
    let reply = model
        .request(
            &Observation::new().metadata("k", "v"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("k").map(String::as_str), Some("v"));
    drop(server.await.unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_request_future_abandons_its_request() {
    // A bare ROUTER that answers request 1 only when told to, after the caller gave up.
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let frames = router.recv_multipart(0).unwrap();
        wait_go.recv().unwrap();
        // ModelResponse { model_id: "echo", request_id: 1, status: OK, protocol_version: 2 }
        let envelope = [&[0x32, 4][..], b"echo", &[0x40, 1, 0x48, 1, 0x60, 2]].concat();
        router
            .send_multipart([frames[0].clone(), Vec::new(), envelope], 0)
            .unwrap();
        router // kept open by the test until the reply is read
    });
    let conn = Connection::builder(&endpoint).connect_async().unwrap();
    let echo = conn.model("echo").unwrap();
    let obs = Observation::new();
    tokio::select! {
        _ = echo.request(&obs, WAIT) => panic!("answered before the peer was told to"),
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    go.send(()).unwrap();
    let _router = peer.join().unwrap();
    let deadline = Instant::now() + WAIT;
    while conn.stats().received < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = conn.stats();
    assert_eq!((s.sent, s.received, s.stale_dropped), (1, 1, 1));
    assert!(echo.get_result(Duration::ZERO).await.unwrap().is_none());
}
