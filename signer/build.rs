//! Generates the etcd client stubs (proto/etcd.proto, the part of etcd's v3
//! API the replicated store uses) with `protox`: no system `protoc` needed.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    // Round-trip through bytes so protox's and prost-build's prost-types versions need not match.
    let fds = protox::compile(["etcd.proto"], ["proto"])?;
    let fds = prost_types::FileDescriptorSet::decode(fds.encode_to_vec().as_slice())?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
