//! The development broker of `cargo xtask broker start|stop|status` and the demo: one tansu per workspace,
//! its state (pid and address) in `target/tributary-broker/state`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
pub use tributary_testkit::install;
use tributary_testkit::{Broker, Storage};

fn state_dir(root: &Path) -> PathBuf {
    root.join("target").join("tributary-broker")
}

/// Starts the development broker (or reports the running one) and returns its address.
pub fn start_dev(root: &Path, sqlite: bool) -> anyhow::Result<String> {
    if let Some(address) = dev_status(root)? {
        return Ok(address);
    }
    install()?;
    let dir = state_dir(root);
    let storage = if sqlite { Storage::Sqlite(PathBuf::from("tansu.db")) } else { Storage::Memory };
    let broker = Broker::start(storage, &dir)?;
    let address = broker.bootstrap();
    let pid = broker.detach();
    std::fs::write(dir.join("state"), format!("{pid} {address}\n")).context("cannot record the broker's state")?;
    Ok(address)
}

/// The running development broker's address, if its process is alive.
pub fn dev_status(root: &Path) -> anyhow::Result<Option<String>> {
    let Some((pid, address)) = read_state(root) else { return Ok(None) };
    Ok(alive(pid).then_some(address))
}

/// Stops the development broker, if one runs.
pub fn stop_dev(root: &Path) -> anyhow::Result<()> {
    let Some((pid, address)) = read_state(root) else {
        println!("no broker running");
        return Ok(());
    };
    if alive(pid) {
        tributary_testkit::stop_pid(pid, Duration::from_secs(5), || !alive(pid));
        println!("stopped the broker at {address}");
    }
    let _ = std::fs::remove_file(state_dir(root).join("state"));
    Ok(())
}

fn read_state(root: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(state_dir(root).join("state")).ok()?;
    let (pid, address) = text.trim().split_once(' ')?;
    Some((pid.parse().ok()?, address.to_owned()))
}

fn alive(pid: u32) -> bool {
    // A detached broker is not our child: signal 0 tells whether it exists. Zombies cannot occur, since its
    // parent (the xtask that started it) has exited and init reaps it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}
