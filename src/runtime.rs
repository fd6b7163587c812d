//! The thin layer over glommio (pinned at 0.9.0, whose maintenance has since
//! moved to a fork): executor construction and the host checks it needs before
//! it can start.
//!
//! Owns: every direct use of glommio's executor API, and the start-up checks for
//! io_uring and locked memory. Must not touch: protocol or storage logic.
//!
//! Why the checks: glommio needs io_uring and registers buffers in locked
//! memory. When either is missing it fails deep inside with ENOMEM or EPERM; an
//! operator should instead be told what is wrong and which setting to change.

use std::fmt;
use std::future::Future;

/// Locked memory one executor needs for its rings (glommio's documented floor).
pub const MEMLOCK_PER_EXECUTOR_BYTES: u64 = 512 * 1024;

/// What the host offers, as found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    pub memlock_soft_bytes: Option<u64>,
    pub memlock_hard_bytes: Option<u64>,
    /// True when the soft limit had to be raised (up to the hard limit).
    pub memlock_raised: bool,
}

/// A reason the host cannot run the engine, with the fix spelled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostProblem {
    IoUringMissing { errno: i32 },
    IoUringForbidden { errno: i32 },
    MemlockTooLow { needed_bytes: u64, hard_bytes: u64 },
}

impl fmt::Display for HostProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostProblem::IoUringMissing { errno } => write!(
                f,
                "this kernel does not offer io_uring (io_uring_setup failed, errno {errno}); \
                 tern needs Linux 5.8 or newer built with CONFIG_IO_URING"
            ),
            HostProblem::IoUringForbidden { errno } => write!(
                f,
                "io_uring is present but forbidden to this process (errno {errno}); check \
                 `sysctl kernel.io_uring_disabled` (must be 0, or 1 with the tern user in \
                 kernel.io_uring_group) and any container seccomp profile"
            ),
            HostProblem::MemlockTooLow {
                needed_bytes,
                hard_bytes,
            } => write!(
                f,
                "locked-memory limit too low: {} KiB needed for the configured cores, hard limit \
                 is {} KiB; raise it with `LimitMEMLOCK=infinity` in the systemd unit, a \
                 `memlock` line in /etc/security/limits.conf, or `ulimit -l` in the shell",
                needed_bytes / 1024,
                hard_bytes / 1024
            ),
        }
    }
}

impl std::error::Error for HostProblem {}

/// Checks io_uring and RLIMIT_MEMLOCK for `executor_count` executors, raising
/// the soft memlock limit to what is needed when the hard limit allows it.
pub fn check_host(executor_count: usize) -> Result<HostReport, HostProblem> {
    probe_io_uring()?;
    let needed_bytes = MEMLOCK_PER_EXECUTOR_BYTES.saturating_mul(executor_count.max(1) as u64);
    let (soft, hard) = memlock_limits();
    let mut report = HostReport {
        memlock_soft_bytes: soft,
        memlock_hard_bytes: hard,
        memlock_raised: false,
    };
    match (soft, hard) {
        (None, _) => {}
        (Some(s), _) if s >= needed_bytes => {}
        (Some(_), Some(h)) if h < needed_bytes => {
            return Err(HostProblem::MemlockTooLow {
                needed_bytes,
                hard_bytes: h,
            })
        }
        (Some(_), _) => {
            raise_memlock_soft(needed_bytes, hard);
            report.memlock_raised = true;
        }
    }
    Ok(report)
}

/// `None` stands for RLIM_INFINITY.
fn memlock_limits() -> (Option<u64>, Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a valid, owned struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return (None, None);
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    (finite(lim.rlim_cur), finite(lim.rlim_max))
}

fn raise_memlock_soft(needed_bytes: u64, hard: Option<u64>) {
    let lim = libc::rlimit {
        rlim_cur: needed_bytes,
        rlim_max: hard.unwrap_or(libc::RLIM_INFINITY),
    };
    // SAFETY: setrlimit reads one valid rlimit; a failure leaves limits as they were
    // and glommio then reports its own error, which the caller logs.
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
    }
}

/// Creates and immediately closes a tiny ring: the cheapest proof that
/// io_uring works for this process.
fn probe_io_uring() -> Result<(), HostProblem> {
    // struct io_uring_params is 120 bytes; the kernel fills it in.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params*) with a zeroed, correctly sized
    // params buffer; the returned fd is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd was just returned by the kernel and is owned here.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    match errno {
        libc::ENOSYS => Err(HostProblem::IoUringMissing { errno }),
        libc::EPERM | libc::EACCES => Err(HostProblem::IoUringForbidden { errno }),
        // ENOMEM here means the rings could not be locked: report it as memlock.
        libc::ENOMEM => Err(HostProblem::MemlockTooLow {
            needed_bytes: MEMLOCK_PER_EXECUTOR_BYTES,
            hard_bytes: memlock_limits().1.unwrap_or(0),
        }),
        _ => Err(HostProblem::IoUringMissing { errno }),
    }
}

/// Runs `make_future` on a new executor pinned to `core`, on its own named
/// thread; returns the thread's join handle.
pub fn spawn_pinned<F, Fut, T>(
    name: &str,
    core: usize,
    make_future: F,
) -> std::io::Result<glommio::ExecutorJoinHandle<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(core))
        .name(name)
        .spawn(make_future)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The cores this process may run on, in order.
pub fn available_cores() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_check_passes_here_and_reports_limits() {
        let report = check_host(1).expect("CI machines run io_uring");
        if let Some(soft) = report.memlock_soft_bytes {
            assert!(soft >= MEMLOCK_PER_EXECUTOR_BYTES || report.memlock_raised);
        }
    }

    #[test]
    fn an_impossible_memlock_need_names_the_setting() {
        let problem = HostProblem::MemlockTooLow {
            needed_bytes: 1 << 40,
            hard_bytes: 8 << 20,
        };
        let text = problem.to_string();
        assert!(text.contains("LimitMEMLOCK"), "{text}");
        assert!(text.contains("8192 KiB"), "{text}");
    }

    #[test]
    fn a_pinned_executor_runs_a_future() {
        let cores = available_cores();
        assert!(!cores.is_empty());
        let handle = spawn_pinned("test", cores[0], || async { 40 + 2 }).expect("spawn");
        assert_eq!(handle.join().expect("join"), 42);
    }
}
