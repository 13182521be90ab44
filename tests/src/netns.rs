//! A network namespace joined to this one by a veth pair, standing for a host across a network
//! that can fail.

use std::process::Command;

/// A server inside the namespace is reached at [`NetNs::address`], and [`NetNs::cut`] takes the
/// link down (packets go nowhere, as when a network fails) until [`NetNs::restore`]. Removed when
/// dropped. Needs root (CAP_NET_ADMIN).
pub struct NetNs {
    pub name: String,
    veth: String,
    /// The namespace side's address.
    pub address: String,
}
impl NetNs {
    pub fn new() -> NetNs {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let name = format!("nus{tag}");
        let veth = format!("nvh{tag}");
        let inner = format!("nvi{tag}");
        // 10.(200 + pid % 50).(n % 64 * 4): a /30 of our own.
        let net = format!("10.{}.{}", 200 + std::process::id() % 50, (n % 64) * 4);
        let ns = NetNs {
            name: name.clone(),
            veth: veth.clone(),
            address: format!("{net}.2"),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", &inner, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{net}.1/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{net}.2/30"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &name, "link", "set", &inner, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Takes the link down: nothing gets through.
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth, "down"]);
    }

    /// Brings the link back.
    pub fn restore(&self) {
        ip(&["link", "set", &self.veth, "up"]);
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
