//! The tailor's story with the library API: three nodes in this process (each with its own data
//! dir and libp2p swarm on 127.0.0.1), driven through their control APIs.
//!
//!     cargo run --release --example tailor

use coflow::cluster::InProcessNode;

fn main() -> coflow::Result<()> {
    coflow::cluster::init_logging();
    let root = std::env::temp_dir().join(format!("coflow-tailor-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = (|| {
        let alice = InProcessNode::start(runtime.handle(), &root.join("alice"), "Alice", vec![])?;
        let tom = InProcessNode::start(runtime.handle(), &root.join("tom"), "Tom", vec![])?;
        let mill = InProcessNode::start(runtime.handle(), &root.join("mill"), "Mill", vec![])?;
        coflow::demo::tailor_story(&alice, &tom, &mill)
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}
