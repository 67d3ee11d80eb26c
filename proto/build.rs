fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["node_agent.proto"], &["."])?;
    println!("cargo:rerun-if-changed=node_agent.proto");
    Ok(())
}
