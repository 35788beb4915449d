//! A 50 Hz robot over a chunked policy with `ControlLoop`: queue, blend, prefix and pacing.
//!
//! Start a server with the chunked reaching policy, then run the loop:
//!
//! ```text
//! .venv/bin/python -m inferential.cli serve --bind tcp://127.0.0.1:5555 \
//!     --model chunked=inferential.models.chunked_policy:ChunkedPolicy
//! cargo run --example chunked_loop -- tcp://127.0.0.1:5555 500
//! ```
//!
//! The arm integrates each executed action (joint positions) and holds still on `None`; at
//! the end the loop's and the queue's counters and the delays the server reported print.
use inferential::chunks::{ActionChunkQueue, Blend};
use inferential::control::ControlLoop;
use inferential::{Connection, Observation};

const JOINTS: usize = 7;

fn main() -> Result<(), inferential::Error> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "tcp://127.0.0.1:5555".into());
    let steps: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(500);

    let conn = Connection::builder(&endpoint)
        .client_id("rust-arm-01")
        .client_type("arm")
        .send_timeout_ms(10) // never stall a 20 ms step on a missing server
        .connect()?;
    let policy = conn.model("chunked")?.latency_budget_ms(40.0);
    let mut control = ControlLoop::new(policy, 50.0)?
        .with_queue(ActionChunkQueue::new(Blend::Exponential(0.7), 0)?)
        .request_below(8);

    let target = [0.3f32, 0.7];
    let mut joints = [0.0f32; JOINTS];
    let mut jump = 0.0f64; // the largest change of one joint between two executed steps
    let mut moving = false; // the first action moves from the rest pose: not a jump
    let obs_joints = std::cell::Cell::new(joints);
    control.run(
        steps,
        |_step| {
            Observation::new()
                .tensor_owned(
                    "joints",
                    inferential::DType::Float32,
                    obs_joints
                        .get()
                        .iter()
                        .flat_map(|j| j.to_le_bytes())
                        .collect(),
                    &[JOINTS],
                )
                .tensor("target", &target, &[2])
        },
        |action| {
            if let Some(a) = action {
                for (j, &v) in joints.iter_mut().zip(&a) {
                    if moving {
                        jump = jump.max((f64::from(*j) - v).abs());
                    }
                    *j = v as f32;
                }
                moving = true;
                obs_joints.set(joints);
            }
        },
    )?;

    let delays: Vec<f32> = control
        .arrivals()
        .iter()
        .map(|a| a.actual_delay_steps)
        .collect();
    let mean = delays.iter().sum::<f32>() / delays.len().max(1) as f32;
    println!("loop:  {:?}", control.stats());
    println!("queue: {:?}", control.queue().stats());
    println!(
        "{} chunks, mean server delay {mean:.2} steps, largest joint step {jump:.4} rad",
        delays.len()
    );
    Ok(())
}
