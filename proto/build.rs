fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &[
            "node_agent.proto",
            "raft_transport.proto",
            "coordinator.proto",
        ],
        &["."],
    )?;
    println!("cargo:rerun-if-changed=node_agent.proto");
    println!("cargo:rerun-if-changed=raft_transport.proto");
    println!("cargo:rerun-if-changed=coordinator.proto");
    Ok(())
}
