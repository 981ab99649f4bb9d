//! The `seqflow` binary: parses the command line, hands off to the library, and prints any
//! error once, as one paragraph, with a non-zero exit code.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    // A panic is reported once, as one paragraph: in timely's threads by the run's error (the
    // library catches and names it), elsewhere as one line here; never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let name = std::thread::current().name().unwrap_or("").to_string();
        let p = info.payload();
        let msg = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic");
        // timely's send/receive threads panic when a peer of the cluster is gone; its workers
        // then panic while unwinding, which aborts. End here, cleanly, before that.
        if name.starts_with("timely:send") || name.starts_with("timely:recv") {
            // The send and the receive thread often fail together: one reports and exits,
            // the other waits for that exit.
            static REPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if REPORTING.swap(true, std::sync::atomic::Ordering::SeqCst) {
                loop {
                    std::thread::park();
                }
            }
            seqflow::outfiles::discard_all();
            cli::say!(
                "seqflow: error: the cluster lost a process or its connection ({msg}); this process \
                 (process {}) stops without writing its output",
                cli::PROCESS.load(std::sync::atomic::Ordering::Relaxed)
            );
            std::process::exit(2);
        }
        if !name.starts_with("timely:") && !seqflow::guard::catching() {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            cli::say!("seqflow: internal error: {msg}{at}");
        }
    }));
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            cli::say!("seqflow: error: {}", cli::render(&e));
            ExitCode::from(2)
        }
    }
}
