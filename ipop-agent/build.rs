//! Builds the eBPF object (ipop-ebpf) with the nightly toolchain and bpf-linker; the agent
//! embeds it with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    // aya-build relays the nested cargo's stderr as warnings: keep only real diagnostics.
    // SAFETY: the build script is single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ipop-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "ipop-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
