//! Compiles every `.proto` under `proto/` with a pure-Rust compiler (protox), so a fresh
//! clone builds without a hand-installed `protoc`, then generates tonic 0.14 servers and
//! clients with `tonic-prost-build` and writes the descriptor set that reflection serves.

use std::{path::PathBuf, process::ExitCode};

use prost::Message;

fn proto_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// Keep in step with the impls in src/redacted.rs (the build fails without them).
const REDACTED: [&str; 6] = [
    ".shop.payment.v1.Card",
    ".shop.user.v1.RegisterRequest",
    ".shop.user.v1.LoginRequest",
    ".shop.user.v1.LoginResponse",
    ".shop.user.v1.ValidateTokenRequest",
    ".shop.user.v1.ChainedCheckoutRequest",
];

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    proto_files(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&files, [&root])?;

    // compile_fds does not write a descriptor set file, and reflection needs one.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("shop_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Messages carrying card data, passwords or tokens: src/redacted.rs implements a
        // Debug that leaves them out, so a stray `?request` in a log cannot leak them.
        .skip_debug(REDACTED)
        .compile_fds(fds)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proto build failed: {e}");
            ExitCode::FAILURE
        }
    }
}
