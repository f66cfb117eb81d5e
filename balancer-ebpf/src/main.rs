//! The XDP data plane: SIP/UDP datagrams to a service VIP are dispatched to a
//! backend by their Call-ID (Maglev), rewritten and forwarded in the driver;
//! backend replies are reverse-NATed to come from the VIP. Everything else passes
//! untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod addr;
#[cfg(target_arch = "bpf")]
mod affinity;
#[cfg(target_arch = "bpf")]
mod bounds;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod filters;
#[cfg(target_arch = "bpf")]
mod fragments;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod key;
#[cfg(target_arch = "bpf")]
mod lines;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod program;
#[cfg(target_arch = "bpf")]
mod rewrite;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "balancer-ebpf builds only for the bpfel-unknown-none target (cargo xtask build-ebpf)"
    );
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
