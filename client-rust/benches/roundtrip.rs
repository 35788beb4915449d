//! Round trip of one 150 KB observation (224x224x3 u8 image + 7 f32 joints), p50/p99, in one
//! run, four ways, plus the Python client:
//!
//! - raw-echo: a bare `zmq` DEALER sends the client's exact frames to a bare ROUTER that
//!   answers each with a fixed 7-float reply (the transport floor);
//! - client-echo: this client against that same bare ROUTER (the client's own cost);
//! - raw-server: the bare DEALER against our Python server's `noop` model;
//! - client-server: this client against the same server;
//! - python-server: the Python client against the same server, for comparison.
//!
//! Prints a table and the ratios client/raw. `make bench-rust` (BENCH_N=2000 by default).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use inferential::codec::{encode_observation, EncodeParams};
use inferential::{Connection, Limits, Observation};

const SIZE: usize = 224;
/// Round trips discarded at the start of each block (connection set-up, caches).
const WARM_UP: usize = 20;

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The request id (field 9) of an Observation envelope, by a minimal protobuf scan.
fn request_id_of(envelope: &[u8]) -> u64 {
    let mut i = 0;
    let read = |i: &mut usize| -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        while let Some(&b) = envelope.get(*i) {
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        v
    };
    while i < envelope.len() {
        let key = read(&mut i);
        match key & 7 {
            0 => {
                let v = read(&mut i);
                if key >> 3 == 9 {
                    return v;
                }
            }
            1 => i += 8,
            2 => {
                let n = read(&mut i) as usize;
                i += n;
            }
            5 => i += 4,
            _ => return 0,
        }
    }
    0
}

/// A ModelResponse (hand-encoded) to `request_id` of model `noop` with a 7-float `actions`.
fn reply_envelope(request_id: u64) -> Vec<u8> {
    let mut tensor = vec![0x0a, 7];
    tensor.extend_from_slice(b"actions");
    tensor.extend_from_slice(&[0x10, 2, 0x1a, 1, 7, 0x28, 28]);
    let mut out = vec![0x22, tensor.len() as u8];
    out.extend_from_slice(&tensor);
    out.extend_from_slice(&[0x32, 4]);
    out.extend_from_slice(b"noop");
    out.push(0x40);
    varint(request_id, &mut out);
    out.extend_from_slice(&[0x48, 1, 0x60, 2]);
    out
}

/// A bare ROUTER answering every message with a 7-float reply; returns its endpoint.
fn spawn_raw_router(ctx: &zmq::Context) -> String {
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    thread::spawn(move || {
        let actions = [0u8; 28];
        while let Ok(frames) = router.recv_multipart(0) {
            let rid = frames.get(2).map(|e| request_id_of(e)).unwrap_or(0);
            let reply = [
                frames[0].clone(),
                Vec::new(),
                reply_envelope(rid),
                actions.to_vec(),
            ];
            if router.send_multipart(reply, 0).is_err() {
                break;
            }
        }
    });
    endpoint
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn frames_for(obs: &Observation<'_>, request_id: u64) -> Vec<Vec<u8>> {
    let params = EncodeParams {
        client_id: "bench",
        client_type: "",
        model_id: "noop",
        request_id,
        timestamp_ns: now_ns(),
        latency_budget_ms: 50.0,
        priority: 1,
        deadline_ns: None,
        actions_remaining: None,
        control_rate_hz: None,
        auth_token: "",
        single_payload_frame: false,
        limits: Limits::default(),
    };
    encode_observation(&params, obs)
        .unwrap()
        .into_iter()
        .map(|f| f.into_owned())
        .collect()
}

/// The bare DEALER: send the frames, wait for one reply, n times.
fn raw(ctx: &zmq::Context, endpoint: &str, obs: &Observation<'_>, n: usize) -> Vec<f64> {
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    // The socket options the protocol asks of every client, so only the code differs.
    dealer.set_linger(0).unwrap();
    dealer.set_immediate(true).unwrap();
    dealer.set_heartbeat_ivl(1000).unwrap();
    dealer.set_heartbeat_timeout(5000).unwrap();
    dealer.set_sndtimeo(1000).unwrap();
    dealer.set_maxmsgsize(64 << 20).unwrap();
    dealer.connect(endpoint).unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + WARM_UP {
        // Encoding is part of the raw sender's work too: it must produce these bytes.
        let started = Instant::now();
        let frames = frames_for(obs, i as u64 + 1);
        dealer.send_multipart(frames, 0).unwrap();
        dealer.recv_multipart(0).unwrap();
        if i >= WARM_UP {
            out.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    out
}

fn client(endpoint: &str, obs: &Observation<'_>, n: usize) -> Vec<f64> {
    let conn = Connection::builder(endpoint)
        .client_id("bench")
        .connect()
        .unwrap();
    let model = conn.model("noop").unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + WARM_UP {
        let started = Instant::now();
        let reply = model.request(obs, Duration::from_secs(5)).unwrap();
        assert_eq!(reply.tensor("actions").unwrap().len(), 7);
        if i >= WARM_UP {
            out.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    out
}

const PYTHON_CLIENT: &str = r#"
import json, sys, time
import numpy as np
from inferential import Connection
endpoint, n = sys.argv[1], int(sys.argv[2])
image = np.zeros((224, 224, 3), np.uint8); joints = np.zeros(7, np.float32)
with Connection(endpoint, client_id="bench-py") as conn:
    model = conn.model("noop")
    out = []
    for i in range(n + 20):
        t = time.perf_counter()
        model.request(5000, image=image, joints=joints)
        if i >= 20:
            out.append((time.perf_counter() - t) * 1e3)
print(json.dumps(out))
"#;

fn python_client(endpoint: &str, n: usize) -> Option<Vec<f64>> {
    let out = Command::new(common::python())
        .args(["-c", PYTHON_CLIENT, endpoint, &n.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "python client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner.split(',').map(|v| v.trim().parse().ok()).collect()
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let image = vec![0u8; SIZE * SIZE * 3];
    let joints = [0.0f32; 7];
    let obs = Observation::new()
        .tensor("image", &image, &[SIZE, SIZE, 3])
        .tensor("joints", &joints, &[7]);
    let bytes: usize = frames_for(&obs, 1).iter().map(Vec::len).sum();
    println!("round trip of a {bytes}-byte observation, {n} samples per path");

    let ctx = zmq::Context::new();
    let echo = spawn_raw_router(&ctx);
    let server = common::Server::start();
    // Raw and client runs alternate in blocks, so drift in the shared machine's load (or in
    // the server's state) lands on both sides alike.
    let mut rows: Vec<(&str, Vec<f64>)> =
        ["raw-echo", "client-echo", "raw-server", "client-server"]
            .iter()
            .map(|&name| (name, Vec::with_capacity(n)))
            .collect();
    let block = (n / 10).max(1);
    for _ in 0..n.div_ceil(block) {
        rows[0].1.extend(raw(&ctx, &echo, &obs, block));
        rows[1].1.extend(client(&echo, &obs, block));
        rows[2].1.extend(raw(&ctx, &server.endpoint, &obs, block));
        rows[3].1.extend(client(&server.endpoint, &obs, block));
    }
    if let Some(py) = python_client(&server.endpoint, n) {
        rows.push(("python-server", py));
    }
    drop(server);

    let stats: Vec<(&str, f64, f64)> = rows
        .into_iter()
        .map(|(name, s)| {
            let (p50, p99) = percentiles(s);
            (name, p50, p99)
        })
        .collect();
    println!("{:<15} {:>9} {:>9}", "path", "p50 ms", "p99 ms");
    for (name, p50, p99) in &stats {
        println!("{name:<15} {p50:>9.3} {p99:>9.3}");
    }
    let get = |k: &str| stats.iter().find(|s| s.0 == k).map(|s| (s.1, s.2));
    for (label, num, den) in [
        ("client/raw, bare echo", "client-echo", "raw-echo"),
        ("client/raw, our server", "client-server", "raw-server"),
        ("python/raw, our server", "python-server", "raw-server"),
    ] {
        if let (Some(a), Some(b)) = (get(num), get(den)) {
            println!("{label:<24} p50 {:.3}x  p99 {:.3}x", a.0 / b.0, a.1 / b.1);
        }
    }
}
