fn main() {
    println!("cargo:rerun-if-changed=proto/coflow.proto");
    let fds = protox::compile(["coflow.proto"], ["proto"]).expect("proto/coflow.proto compiles");
    prost_build::compile_fds(fds).expect("prost generates the wire types");
}
