fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // Media chunks travel as `Bytes`: no copy between the wire and disk.
        .bytes(".lockstep.media.v1")
        .compile_protos(
            &[
                "node_agent.proto",
                "raft_transport.proto",
                "coordinator.proto",
                "media.proto",
            ],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=node_agent.proto");
    println!("cargo:rerun-if-changed=raft_transport.proto");
    println!("cargo:rerun-if-changed=coordinator.proto");
    println!("cargo:rerun-if-changed=media.proto");
    Ok(())
}
