//! Raw client throughput, with no Nushell plugin protocol in the path: how fast values come
//! from a local session through nu-session-client alone.
//!
//! `cargo run --release -p nu-session-client --example throughput -- <nu-session-host> [code]`

use std::time::Instant;

use nu_session_client::{CallEvent, Client, Layout, SessionSettings, Transport};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let program = args
        .next()
        .ok_or("usage: throughput <nu-session-host> [code]")?;
    let code = args.next().unwrap_or_else(|| "seq 1 1000000".into());
    let dir = std::env::temp_dir().join(format!("nst-throughput-{}", std::process::id()));
    let client = Client::new()?;
    let host = client.host(Transport::local(Layout::under(&dir), Some(program.into())));
    let info = host.create_session(SessionSettings {
        name: "throughput".into(),
        configuration_name: "default".into(),
        idle_timeout: std::time::Duration::from_secs(60),
        output_buffering: Default::default(),
    })?;
    let session = host.attach(info.instance_id)?;
    for round in 0..3 {
        let start = Instant::now();
        let mut call = session.invoke(code.clone(), Vec::new(), None)?;
        let mut values = 0u64;
        loop {
            match call.next_event()? {
                CallEvent::Value(_) => values += 1,
                CallEvent::Finished(Some(e)) => return Err(e.msg.into()),
                CallEvent::Finished(None) => break,
                _ => {}
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "round {round}: {values} values in {secs:.3}s = {:.0} values/s",
            values as f64 / secs
        );
    }
    host.remove_session(info.instance_id)?;
    if let Ok(pid) = std::fs::read_to_string(Layout::under(&dir).manager_pid()) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
