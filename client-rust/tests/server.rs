//! The client against the real Python server (started by each test on a free port).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use half::{bf16, f16};
use inferential::{Connection, DType, ErrorKind, Observation, Status};

use common::{free_port, Server};

const WAIT: Duration = Duration::from_secs(5);

fn connect(server: &Server) -> Connection {
    Connection::builder(&server.endpoint)
        .client_id("rust-test")
        .client_type("arm")
        .connect()
        .unwrap()
}

#[test]
fn every_dtype_round_trips_through_the_echo_model_with_metadata() {
    let server = Server::start();
    let conn = connect(&server);
    let echo = conn.model("echo").unwrap();
    let f16s = [f16::from_f32(1.5), f16::from_f32(-2.0)];
    let f32s: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let f64s = [1e-300f64, -7.25];
    let bf16s = [bf16::from_f32(3.0), bf16::from_f32(-0.5)];
    let u8s = vec![7u8; 224 * 224 * 3];
    let i32s = [i32::MIN, 0, i32::MAX];
    let i64s = [i64::MIN, i64::MAX];
    let bools = [true, false, true];
    let i8s = [-128i8, 127];
    let i16s = [-3i16, 4];
    let u16s = [65535u16, 1];
    let u32s = [u32::MAX];
    let u64s = [u64::MAX, 0];
    let scalar = [42.0f32];
    let obs = Observation::new()
        .tensor("f16", &f16s, &[2])
        .tensor("f32", &f32s, &[3, 4])
        .tensor("f64", &f64s, &[2])
        .tensor("bf16", &bf16s, &[2])
        .tensor("image", &u8s, &[224, 224, 3])
        .tensor("i32", &i32s, &[3])
        .tensor("i64", &i64s, &[2, 1])
        .tensor("bool", &bools, &[3])
        .tensor("i8", &i8s, &[2])
        .tensor("i16", &i16s, &[2])
        .tensor("u16", &u16s, &[2])
        .tensor("u32", &u32s, &[1])
        .tensor("u64", &u64s, &[2])
        .tensor("scalar", &scalar, &[])
        .tensor_bytes("empty", DType::Float32, &[], &[0, 3])
        .metadata("task", "pick");
    let reply = echo.request(&obs, WAIT).unwrap();
    assert!(reply.is_ok());
    assert_eq!(reply.model_id(), "echo");
    assert_eq!(reply.client_id(), "rust-test");
    assert_eq!(reply.protocol_version(), 2);
    assert!(reply.timing().is_some());
    assert_eq!(
        reply.metadata().get("task").map(String::as_str),
        Some("pick")
    );
    let get = |k: &str| reply.tensor(k).unwrap_or_else(|| panic!("no tensor {k}"));
    assert_eq!(get("f16").try_as::<f16>().unwrap()[..], f16s);
    assert_eq!(get("f32").try_as::<f32>().unwrap()[..], f32s[..]);
    assert_eq!(get("f32").shape(), &[3, 4]);
    assert_eq!(get("f64").try_as::<f64>().unwrap()[..], f64s);
    assert_eq!(get("image").try_as::<u8>().unwrap()[..], u8s[..]);
    assert_eq!(get("image").shape(), &[224, 224, 3]);
    assert_eq!(get("i32").try_as::<i32>().unwrap()[..], i32s);
    assert_eq!(get("i64").try_as::<i64>().unwrap()[..], i64s);
    assert_eq!(get("bool").to_bools().unwrap(), bools);
    assert_eq!(get("i8").try_as::<i8>().unwrap()[..], i8s);
    assert_eq!(get("i16").try_as::<i16>().unwrap()[..], i16s);
    assert_eq!(get("u16").try_as::<u16>().unwrap()[..], u16s);
    assert_eq!(get("u32").try_as::<u32>().unwrap()[..], u32s);
    assert_eq!(get("u64").try_as::<u64>().unwrap()[..], u64s);
    assert_eq!(get("scalar").shape(), &[] as &[usize]);
    assert_eq!(get("scalar").try_as::<f32>().unwrap()[..], scalar);
    assert!(get("empty").is_empty());
    // Without ml_dtypes the server holds BFLOAT16 as raw uint16 bits: same bytes either way.
    let bf = get("bf16");
    assert_eq!(&bf.bytes()[..], bytemuck::cast_slice::<bf16, u8>(&bf16s));
    let stats = conn.stats();
    assert_eq!((stats.sent, stats.received), (1, 1));
    assert_eq!(stats.by_status.get("OK"), Some(&1));
}

#[test]
fn get_result_returns_the_newest_reply_and_counts_the_rest() {
    let server = Server::start();
    let conn = connect(&server);
    let noop = conn.model("noop").unwrap();
    let ids: Vec<_> = (0..5)
        .map(|_| noop.observe(&Observation::new()).unwrap())
        .collect();
    let last = *ids.last().unwrap();
    let deadline = Instant::now() + WAIT;
    let mut newest = None;
    while Instant::now() < deadline && newest != Some(last) {
        if let Some(reply) = noop.get_result(Duration::from_millis(100)).unwrap() {
            assert_eq!(
                reply
                    .tensor("actions")
                    .unwrap()
                    .try_as::<f32>()
                    .unwrap()
                    .len(),
                7
            );
            assert!(newest.is_none_or(|n| reply.request_id() > n), "never older");
            newest = Some(reply.request_id());
        }
    }
    assert_eq!(newest, Some(last));
    // Every observation is answered exactly once: wait for the replies still in flight.
    let deadline = Instant::now() + WAIT;
    while conn.stats().received < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = conn.stats();
    let superseded = s.by_status.get("SUPERSEDED").copied().unwrap_or(0);
    // Every observation was answered once: delivered, replaced (stale) or superseded.
    assert_eq!(s.received, 5);
    assert!(s.stale_dropped + superseded <= 4);
    assert_eq!(s.unknown_dropped + s.malformed_dropped, 0);
    assert!(noop.get_result(Duration::ZERO).unwrap().is_none());
}

#[test]
fn error_statuses_become_error_kinds_with_request_id_and_retryable() {
    let server = Server::start();
    let conn = connect(&server);
    let unknown = conn.model("no-such-model").unwrap();
    let rid = unknown.observe(&Observation::new()).unwrap();
    let err = match unknown.get_result(WAIT) {
        Err(err) => err,
        Ok(Some(_)) => panic!("an unknown model answered"),
        Ok(None) => panic!("no reply within {WAIT:?}"),
    };
    assert_eq!(err.kind(), ErrorKind::UnknownModel);
    assert_eq!(err.status(), Some(Status::UnknownModel));
    assert_eq!(err.request_id(), Some(rid));
    assert!(!err.retryable());

    let failing = conn.model("failing").unwrap();
    let err = failing
        .request(&Observation::new().metadata("fail", "yes"), WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelError);
    assert!(err.retryable());
    assert!(err.reply().is_some());
    let ok = failing.request(&Observation::new(), WAIT).unwrap();
    assert_eq!(ok.tensor("ok").unwrap().try_as::<i32>().unwrap()[..], [1]);

    let bad = conn.model("echo").unwrap().latency_budget_ms(-1.0);
    let err = bad.observe(&Observation::new()).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "refused before sending"
    );
    assert_eq!(conn.stats().send_failed, 0);
}

#[test]
fn a_send_while_no_server_is_up_fails_within_the_send_timeout() {
    let conn = Connection::builder(&format!("tcp://127.0.0.1:{}", free_port()))
        .send_timeout_ms(200)
        .connect()
        .unwrap();
    let model = conn.model("echo").unwrap();
    let started = Instant::now();
    let err = model.observe(&Observation::new()).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::ServerUnavailable);
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let err = model.request(&Observation::new(), WAIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerUnavailable);
    assert_eq!(conn.stats().send_failed, 2);
}

#[test]
fn the_connection_resumes_after_the_server_restarts() {
    let port = free_port();
    let server = Server::start_on(port);
    let conn = Connection::builder(&server.endpoint)
        .reconnect_ivl_ms(20)
        .reconnect_ivl_max_ms(200)
        .heartbeat_ivl_ms(200)
        .heartbeat_timeout_ms(400)
        .send_timeout_ms(200)
        .connect()
        .unwrap();
    let echo = conn.model("echo").unwrap();
    echo.request(&Observation::new().metadata("n", "1"), WAIT)
        .unwrap();
    server.stop();
    // While it is down, sends fail fast (nothing queues for later).
    let down = echo.observe(&Observation::new());
    assert_eq!(
        down.map(|_| ()).unwrap_err().kind(),
        ErrorKind::ServerUnavailable
    );
    let server = Server::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    let reply = loop {
        match echo.request(
            &Observation::new().metadata("n", "2"),
            Duration::from_millis(500),
        ) {
            Ok(reply) => break reply,
            Err(err) if Instant::now() < deadline => {
                assert!(
                    matches!(
                        err.kind(),
                        ErrorKind::ServerUnavailable | ErrorKind::Timeout
                    ),
                    "{err}"
                );
            }
            Err(err) => panic!("not resumed: {err}"),
        }
    };
    assert_eq!(reply.metadata().get("n").map(String::as_str), Some("2"));
    drop(server);
}

#[test]
fn the_socket_carries_the_protocol_options_and_bad_options_are_refused() {
    let conn = Connection::builder(&format!("127.0.0.1:{}", free_port()))
        .send_timeout_ms(250)
        .connect()
        .unwrap();
    assert!(conn.endpoint().starts_with("tcp://"));
    let o = conn.socket_options().unwrap();
    assert_eq!((o.immediate, o.linger, o.sndtimeo), (1, 0, 250));
    assert_eq!((o.reconnect_ivl, o.reconnect_ivl_max), (100, 5000));
    // Liveness by TCP keepalive, never a ZMTP PING timer (protocol §8).
    assert_eq!(o.heartbeat_ivl, 0);
    let keepalive = (o.tcp_keepalive, o.tcp_keepalive_idle, o.tcp_keepalive_intvl);
    assert_eq!(
        (keepalive, o.tcp_keepalive_cnt, o.tcp_maxrt),
        ((1, 1, 1), 5, 5000)
    );
    assert_eq!((o.sndhwm, o.rcvhwm), (100, 100));
    assert_eq!(o.maxmsgsize, 64 * 1024 * 1024);
    assert!(o.routing_id.is_empty(), "never set a routing id");
    for refused in [
        Connection::builder("tcp://127.0.0.1:1").reconnect_ivl_ms(0),
        Connection::builder("tcp://127.0.0.1:1")
            .reconnect_ivl_ms(500)
            .reconnect_ivl_max_ms(100),
        Connection::builder("tcp://127.0.0.1:1").client_id(""),
        Connection::builder("nonsense://x"),
    ] {
        let err = refused.connect().map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
    conn.close();
    conn.close();
    let err = conn.model("echo").map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[test]
fn server_info_reports_the_protocol_version_and_the_limits() {
    let server = Server::start();
    let conn = connect(&server);
    let info = conn.server_info(WAIT).unwrap();
    assert_eq!(info.protocol_version, 2);
    assert!(info.server.starts_with("inferential"), "{}", info.server);
    assert_eq!(info.limits, inferential::Limits::default());
    let s = conn.stats();
    assert_eq!((s.by_status.get("OK"), s.unknown_dropped), (Some(&1), 0));
}

#[test]
fn server_info_times_out_when_nothing_answers() {
    // A bare ROUTER that reads and never answers, like a 1.x server.
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let conn = Connection::builder(&endpoint).connect().unwrap();
    let started = Instant::now();
    let err = conn.server_info(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    let frames = router.recv_multipart(0).unwrap();
    assert_eq!(frames.len(), 3, "identity, delimiter, envelope: no payload");
}

/// A server that answers a robot which is not reading its replies, then goes away: with
/// ZMTP PINGs on the robot's socket, libzmq 4.3.x aborted the whole process here (so a
/// regression fails this test binary with SIGABRT).
#[test]
fn the_robot_survives_the_server_leaving_while_replies_are_unread() {
    let ctx = zmq::Context::new();
    for _ in 0..3 {
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let conn = Connection::builder(&endpoint)
            .heartbeat_ivl_ms(100)
            .recv_hwm(5)
            .connect()
            .unwrap();
        let model = conn.model("m").unwrap();
        model
            .observe(&Observation::new().metadata("n", "1"))
            .unwrap();
        let identity = router.recv_multipart(0).unwrap().remove(0);
        let reply = vec![0u8; 100_000];
        for _ in 0..200 {
            let sent = router
                .send(&identity[..], zmq::SNDMORE | zmq::DONTWAIT)
                .and_then(|()| router.send(&b""[..], zmq::SNDMORE))
                .and_then(|()| router.send(&reply[..], 0));
            if sent.is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        drop(router); // the server goes away while the robot's input is paused
        std::thread::sleep(Duration::from_millis(400));
        drop(model);
        drop(conn);
    }
}
