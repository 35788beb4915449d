//! Writes the prost code for `proto/inferential.proto` into the directory given as the
//! only argument. The crate commits that output (src/generated/) so users need no protoc
//! and `cargo package` needs no file outside the crate; `make proto-check-rust` regenerates
//! it into a temporary directory and diffs.
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), Some(proto_dir)) = (args.next(), args.next()) else {
        eprintln!("usage: inferential-gen OUT_DIR PROTO_DIR");
        return ExitCode::from(2);
    };
    let proto_dir = PathBuf::from(proto_dir);
    let mut config = prost_build::Config::new();
    config
        .out_dir(&out)
        // Deterministic map order: encoded envelopes are byte-for-byte reproducible.
        .btree_map(["."]);
    match config.compile_protos(&[proto_dir.join("inferential.proto")], &[proto_dir]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("inferential-gen: {err}");
            ExitCode::FAILURE
        }
    }
}
