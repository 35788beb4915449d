//! The control loop against the real Python server running the chunked reaching policy
//! (inferential.models.chunked_policy, 16-step chunks of 7 joints, frozen prefix on).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use inferential::control::ControlLoop;
use inferential::{Connection, Observation};

use common::{free_port, Server};

const HORIZON: u32 = 16;
const JOINTS: usize = 7;

fn server() -> Server {
    let port = free_port();
    let probe = Connection::builder(&format!("tcp://127.0.0.1:{port}"));
    Server::start_with(
        port,
        &[
            "--model",
            "chunked=inferential.models.chunked_policy:ChunkedPolicy",
        ],
        probe,
    )
}

#[test]
fn the_loop_keeps_the_arm_fed_with_no_hold_and_sends_its_queue_as_the_prefix() {
    let server = server();
    let conn = Connection::builder(&server.endpoint)
        .client_id("arm-01")
        .connect()
        .unwrap();
    let mut control = ControlLoop::new(conn.model("chunked").unwrap(), 50.0)
        .unwrap()
        .request_below(HORIZON / 2);
    let joints = [0.1f32; JOINTS];
    let target = [0.3f32, 0.7];
    let mut executed = Vec::new();
    let steps = 100;
    control
        .run(
            steps,
            |_step| {
                Observation::new()
                    .tensor("joints", &joints, &[JOINTS])
                    .tensor("target", &target, &[2])
            },
            |action| {
                if let Some(a) = action {
                    executed.push(a);
                }
            },
        )
        .unwrap();
    let stats = control.stats().clone();
    let queue = control.queue().stats();
    assert_eq!(stats.steps, steps);
    // A malformed prev_actions prefix would fail the request: MODEL_ERROR in `failed`.
    assert!(stats.failed.is_empty(), "{stats:?}");
    assert_eq!(
        (stats.lost, stats.send_failed, stats.stale_chunks),
        (0, 0, 0)
    );
    assert_eq!(queue.held, 0);
    assert_eq!(queue.executed + queue.underruns, steps);
    // Only the steps before the first chunk arrived may run dry.
    let first = control
        .arrivals()
        .front()
        .expect("a chunk arrived")
        .arrived_step;
    assert_eq!(queue.underruns, first, "{queue:?}");
    assert!(stats.chunks >= steps / u64::from(HORIZON), "{stats:?}");
    assert!(executed.iter().all(|a| a.len() == JOINTS));
    for a in control.arrivals() {
        assert!(
            a.predicted_delay_steps > 0.0 && a.actual_delay_steps > 0.0,
            "{a:?}"
        );
        assert!(a.round_trip.is_some());
    }
    server.stop();
}

#[test]
fn error_replies_are_counted_and_the_loop_keeps_asking() {
    let server = Server::start();
    let conn = Connection::builder(&server.endpoint)
        .client_id("arm-02")
        .connect()
        .unwrap();
    let mut control = ControlLoop::new(conn.model("failing").unwrap(), 100.0).unwrap();
    let x = [0.0f32];
    control
        .run(
            30,
            |_| {
                Observation::new()
                    .tensor("x", &x, &[1])
                    .metadata("fail", "yes")
            },
            |action| assert!(action.is_none()),
        )
        .unwrap();
    assert!(
        control
            .stats()
            .failed
            .get("MODEL_ERROR")
            .copied()
            .unwrap_or(0)
            >= 2
    );
    assert_eq!(control.stats().chunks, 0);
    assert_eq!(control.stats().lost, 0);
    assert_eq!(control.queue().stats().underruns, 30);
    assert!(ControlLoop::new(conn.model("failing").unwrap(), 0.0).is_err());
    server.stop();
}

#[test]
fn an_ok_reply_without_actions_is_counted_unusable_and_the_loop_goes_on() {
    let server = Server::start();
    let conn = Connection::builder(&server.endpoint)
        .client_id("arm-03")
        .connect()
        .unwrap();
    // The echo model answers with the observation's tensors: no `actions`.
    let mut control = ControlLoop::new(conn.model("echo").unwrap(), 100.0).unwrap();
    let x = [0.0f32];
    control
        .run(
            30,
            |_| Observation::new().tensor("x", &x, &[1]),
            |action| assert!(action.is_none()),
        )
        .unwrap();
    let stats = control.stats();
    assert!(stats.unusable >= 2, "{stats:?}");
    // Every reply freed the next request: all answered but at most the one in flight.
    assert_eq!(stats.lost, 0);
    assert!(stats.requests - stats.unusable <= 1, "{stats:?}");
    server.stop();
}

#[test]
fn an_observation_carries_the_step_the_runway_the_rate_and_the_queued_prefix() {
    use inferential::chunks::{ActionChunkQueue, Blend};
    let server = Server::start();
    let conn = Connection::builder(&server.endpoint)
        .client_id("arm-04")
        .connect()
        .unwrap();
    let mut queue = ActionChunkQueue::new(Blend::Latest, 5).unwrap();
    queue.add(&[1.0f32, 2.0, 3.0, 4.0], 2, 5, None).unwrap(); // steps 5 and 6
    let mut control = ControlLoop::new(conn.model("echo").unwrap(), 100.0)
        .unwrap()
        .with_queue(queue)
        .request_below(10);
    let action = control.step(|_| Observation::new()).unwrap();
    assert_eq!(action, Some(vec![1.0, 2.0]));
    // The echo model answers with the observation's own tensors; read the reply before
    // the loop does, through another handle on the same connection.
    let reply = conn
        .model("echo")
        .unwrap()
        .get_result(std::time::Duration::from_secs(5))
        .unwrap()
        .expect("the echo reply");
    let prefix = reply
        .tensor("prev_actions")
        .expect("the queued actions were sent");
    assert_eq!(prefix.shape(), &[2, 2]);
    assert_eq!(prefix.try_as::<f32>().unwrap()[..], [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(reply.first_action_step(), Some(5), "control_step, echoed");
    assert!(
        (reply.action_period_ms() - 10.0).abs() < 1e-4,
        "1000 / 100 Hz"
    );
    server.stop();
}
