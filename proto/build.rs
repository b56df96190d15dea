//! Compiles the .proto files with `protox` (pure Rust), so no system `protoc` is needed.
//! gRPC stubs are generated only when the `grpc` feature is on, which keeps the
//! message-only build `no_std`.

use prost::Message;

/// Messages whose fields are secret: no derived Debug.
const SECRET_MESSAGES: [&str; 4] = [
    "lnpd.signer.v1.ReleaseCommitmentSecretReply",
    "lnpd.signer.v1.ValidateHolderCommitmentReply",
    "lnpd.signer.v1.GetNodeKeysReply",
    "lnpd.signer.v1.EcdhReply",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["signer.proto", "node.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    // Round-trip through bytes so protox's and prost-build's prost-types versions need not match.
    let fds = protox::compile(protos, ["."])?;
    let fds = prost_types::FileDescriptorSet::decode(fds.encode_to_vec().as_slice())?;
    tonic_prost_build::configure()
        // Messages carrying secrets get a redacting Debug (src/lib.rs).
        .skip_debug(SECRET_MESSAGES)
        .build_server(grpc)
        .build_client(grpc)
        .compile_fds(fds)?;
    Ok(())
}
