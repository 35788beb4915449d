//! A 50 Hz control loop against the demo policy (camera image + joint state -> a chunk of
//! 7-joint actions).
//!
//! Start a server with the demo's model, then run the loop:
//!
//! ```text
//! .venv/bin/python -m inferential.cli serve --bind tcp://127.0.0.1:5555 \
//!     --model policy=inferential.models.vision_policy:VisionPolicy
//! cargo run --example control_loop -- tcp://127.0.0.1:5555 200
//! ```
//!
//! Each tick sends a fresh observation and uses the newest reply that has arrived; the loop
//! never blocks longer than its tick, whatever the server does.
use std::time::{Duration, Instant};

use inferential::{Connection, ErrorKind, Observation};

const JOINTS: usize = 7;
const SIZE: usize = 224;
const TICK: Duration = Duration::from_millis(20);

/// An RGB image with a red target at (u, v) in [0, 1], like the demo's simulated camera.
fn render(u: f32, v: f32, image: &mut [u8]) {
    for (i, px) in image.chunks_exact_mut(3).enumerate() {
        let (x, y) = (
            (i % SIZE) as f32 / SIZE as f32,
            (i / SIZE) as f32 / SIZE as f32,
        );
        let near = (x - u).powi(2) + (y - v).powi(2) < 0.005;
        px.copy_from_slice(if near { &[220, 30, 30] } else { &[90, 90, 90] });
    }
}

fn main() -> Result<(), inferential::Error> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "tcp://127.0.0.1:5555".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);

    let conn = Connection::builder(&endpoint)
        .client_id("rust-arm-01")
        .client_type("arm")
        .send_timeout_ms(10) // never stall a 20 ms tick on a missing server
        .connect()?;
    let policy = conn
        .model("policy")?
        .latency_budget_ms(15.0)
        .control_rate_hz(50.0);

    let mut image = vec![0u8; SIZE * SIZE * 3];
    let mut joints = [0.0f32; JOINTS];
    let mut chunk: Vec<f32> = Vec::new(); // rows of JOINTS actions, newest chunk first row
    let mut next_row = 0usize;
    let (mut acted, mut held) = (0usize, 0usize);
    let started = Instant::now();

    for step in 0..steps {
        let tick_start = Instant::now();
        let t = step as f32 * 0.01;
        render(0.5 + 0.3 * t.cos(), 0.5 + 0.3 * t.sin(), &mut image);
        let remaining = (chunk.len() / JOINTS).saturating_sub(next_row) as u32;
        let obs = Observation::new()
            .tensor("image", &image, &[SIZE, SIZE, 3])
            .tensor("joints", &joints, &[JOINTS])
            .actions_remaining(remaining);
        match policy.observe(&obs) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ServerUnavailable => {} // keep acting on what we have
            Err(e) => return Err(e),
        }

        // Wait for the newest reply at most until the tick's end.
        let wait = TICK.saturating_sub(tick_start.elapsed());
        match policy.get_result(wait) {
            Ok(Some(reply)) => {
                if let Some(actions) = reply.tensor("actions") {
                    chunk = actions.try_as::<f32>()?.into_owned();
                    next_row = 0;
                }
            }
            Ok(None) => {}
            Err(e) if e.retryable() => eprintln!("step {step}: {e} (retryable)"),
            Err(e) => return Err(e),
        }

        match chunk.chunks_exact(JOINTS).nth(next_row) {
            Some(action) => {
                joints.copy_from_slice(action);
                next_row += 1;
                acted += 1;
            }
            None => held += 1, // no fresh action: hold the current pose
        }
        std::thread::sleep(TICK.saturating_sub(tick_start.elapsed()));
    }

    let s = conn.stats();
    println!(
        "{steps} ticks in {:.1} s: {acted} actions executed, {held} held; \
         sent {}, received {}, stale {}, send failures {}",
        started.elapsed().as_secs_f32(),
        s.sent,
        s.received,
        s.stale_dropped,
        s.send_failed
    );
    println!("final joints: {joints:?}");
    Ok(())
}
