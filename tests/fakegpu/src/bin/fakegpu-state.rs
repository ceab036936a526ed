//! `fakegpu-state <state-path>`: prints the snapshot as JSON.
//! `fakegpu-state --trace <dev> <state-path>`: prints the kernel trace of a device as JSON.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [path] if path != "--trace" => {
            fakegpu::snapshot(Path::new(path)).map(|s| serde_json::to_string_pretty(&s))
        }
        [flag, dev, path] if flag == "--trace" => match dev.parse::<u32>() {
            Ok(dev) => fakegpu::kernel_trace(Path::new(path), dev)
                .map(|t| serde_json::to_string_pretty(&t)),
            Err(_) => {
                eprintln!("fakegpu-state: invalid device index {dev:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "usage: fakegpu-state <state-path> | fakegpu-state --trace <dev> <state-path>"
            );
            return ExitCode::from(2);
        }
    };
    match out {
        Ok(Ok(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("fakegpu-state: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fakegpu-state: {e}");
            ExitCode::FAILURE
        }
    }
}
