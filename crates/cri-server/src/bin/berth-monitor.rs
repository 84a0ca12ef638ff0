//! berth-monitor: the monitor of one pod (see `berth_runtime::monitor`), started by berthd as
//! `berth-monitor monitor --pod …` (its state directory on stdin). A binary of its own, apart from berthd, because every
//! pod runs one: loading only the monitor's code keeps its private memory to a few hundred KiB,
//! where `berthd monitor` (the fallback when this binary is not installed beside berthd) pays
//! for relocating all of berthd.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // The same first argument as `berthd monitor`, so that a monitor reads the same in `ps`
    // whichever binary runs it.
    if args.first().is_some_and(|arg| arg == "monitor") {
        args.remove(0);
    }
    let code = berth_runtime::monitor::main(&args);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
