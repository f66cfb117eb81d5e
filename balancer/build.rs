//! Builds the XDP object with aya-build and embeds it in the binary.
//!
//! The eBPF crate needs `-Z build-std=core`, i.e. a toolchain with `rust-src`:
//! nightly from rustup (the default), or any toolchain named by
//! `BALANCER_EBPF_TOOLCHAIN` (`cargo xtask setup` links Debian's rustc-web as
//! `balancer-bpf` and the xtask commands set this variable).

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=BALANCER_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-changed=../balancer-common/src");
    // Unset: the toolchain `cargo xtask setup` linked, if there is one, else nightly.
    let name = std::env::var("BALANCER_EBPF_TOOLCHAIN").ok().or_else(|| {
        std::process::Command::new("rustup")
            .args(["run", "balancer-bpf", "rustc", "--version"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| "balancer-bpf".to_string())
    });
    let toolchain = match name.as_deref() {
        None | Some("") | Some("nightly") => aya_build::Toolchain::Nightly,
        Some(other) => {
            // A non-nightly toolchain (Debian's rustc-web) must be told that -Z is fine.
            // SAFETY: build scripts are single-threaded.
            unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
            aya_build::Toolchain::Custom(other)
        }
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../balancer-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "balancer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        toolchain,
    )
}
