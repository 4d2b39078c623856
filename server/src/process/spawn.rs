//! Starting a job's process: the script executed directly (argv, never a shell), leading a new
//! process group, with stdin from a file or `/dev/null` and stdout/stderr into two pipes.
//!
//! This is what `std::process::Command` with `process_group(0)` does through glibc's
//! `posix_spawn` (a `clone(CLONE_VM | CLONE_VFORK)` child that sets up and `execve`s), without
//! the parts that make up most of the server's cost of a short job, measured with `bench`:
//! - the environment is not rebuilt for each job from a fresh copy of the server's (std copies
//!   every variable into a map and back): the inherited variables are encoded once, and each
//!   spawn only adds the job's own;
//! - `/dev/null` is opened once, not once per job;
//! - the child's stack is allocated once per spawning thread, not mapped and unmapped for each
//!   job (an unmap in a process with busy threads interrupts every core to flush its TLB);
//! - the child resets the handlers of the 31 standard signals, not all 64 (glibc's loop is two
//!   system calls per signal; no realtime signal has a handler in this server).
//!
//! As in `posix_spawn`, the child shares the parent's memory until `execve`, and the calling
//! thread is suspended meanwhile: the child runs only async-signal-safe calls on data the
//! parent prepared, with every signal blocked until just before `execve`, and reports a
//! failure (with its errno) through that shared memory before `_exit(127)`.
#![allow(unsafe_code, reason = "clone/execve: the child's setup cannot be written in safe Rust")]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::OnceLock;

/// Size of the child's stack: the child only makes a few system calls.
const STACK_SIZE: usize = 64 * 1024;

/// What to start.
pub struct Spec<'a> {
    /// The executable.
    pub program: &'a Path,
    /// argv[1..].
    pub args: &'a [String],
    /// Working directory.
    pub cwd: &'a Path,
    /// Variables set on top of the inherited environment (later entries win).
    pub env: &'a [(&'a str, &'a str)],
    /// Read as stdin; `/dev/null` when `None`.
    pub stdin: Option<&'a File>,
}

/// A started process. Nothing is done when it is dropped: the caller reaps it.
pub struct Child {
    /// Its pid, which is also its process group id.
    pub pid: i32,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
}

/// The server's environment as `KEY=VALUE` strings, encoded at the first spawn (the server
/// never changes its environment). A name present twice keeps its last value, as with std.
fn inherited_env() -> &'static [(Vec<u8>, CString)] {
    static ENV: OnceLock<Vec<(Vec<u8>, CString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env: Vec<(Vec<u8>, CString)> = Vec::new();
        for (key, value) in std::env::vars_os() {
            let key = key.into_vec();
            let mut entry = key.clone();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            let Ok(entry) = CString::new(entry) else { continue };
            env.retain(|(k, _)| *k != key);
            env.push((key, entry));
        }
        env
    })
}

/// `/dev/null`, opened once for reading (close-on-exec; the child gets a duplicate as stdin).
fn dev_null() -> io::Result<&'static File> {
    static NULL: OnceLock<File> = OnceLock::new();
    if let Some(file) = NULL.get() {
        return Ok(file);
    }
    let file = File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| file))
}

/// The child's stack, one per spawning thread (the thread is suspended while the child uses
/// it), with an inaccessible guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let page = 4096;
        let len = STACK_SIZE + page;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping made above.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the mapping made above, not used by anything.
            unsafe { libc::munmap(base, len) };
            return Err(e);
        }
        Ok(Stack { base, len })
    }

    /// The top of the stack (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut c_void {
        // The mapping is page-aligned and its length a multiple of 16.
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(); no child uses it once clone has returned.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

thread_local! {
    static STACK: RefCell<Option<Stack>> = const { RefCell::new(None) };
}

/// Everything the child needs, prepared by the parent. Read by the child through a raw
/// pointer while the parent is suspended.
#[repr(C)]
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    /// Descriptors to install as 0, 1 and 2.
    stdio: [RawFd; 3],
    /// Set by the child when it cannot exec: the errno, and the step that failed.
    error: c_int,
    stage: Stage,
}

/// The child's setup steps, to say which one failed.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
enum Stage {
    ProcessGroup,
    Stdio,
    WorkingDirectory,
    Exec,
}

/// Starts the process described by `spec`.
pub fn spawn(spec: &Spec<'_>) -> io::Result<Child> {
    let cstr = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in argv, env or path"))
    };
    let path = cstr(spec.program.as_os_str().as_bytes())?;
    let cwd = cstr(spec.cwd.as_os_str().as_bytes())?;
    let args = spec.args.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<Vec<_>>>()?;
    let mut argv: Vec<*const c_char> = Vec::with_capacity(args.len() + 2);
    argv.push(path.as_ptr());
    argv.extend(args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());

    let own = spec.env.iter().map(|(k, v)| cstr(format!("{k}={v}").as_bytes())).collect::<io::Result<Vec<_>>>()?;
    let inherited = inherited_env();
    let mut envp: Vec<*const c_char> = Vec::with_capacity(inherited.len() + own.len() + 1);
    envp.extend(
        inherited
            .iter()
            .filter(|(key, _)| !spec.env.iter().any(|(k, _)| k.as_bytes() == key.as_slice()))
            .map(|(_, entry)| entry.as_ptr()),
    );
    // For a key given twice, the later entry wins (as with Command::env).
    for (i, entry) in own.iter().enumerate() {
        let key = spec.env[i].0;
        if !spec.env[i + 1..].iter().any(|(k, _)| *k == key) {
            envp.push(entry.as_ptr());
        }
    }
    envp.push(std::ptr::null());

    let stdin = match spec.stdin {
        Some(file) => file.as_raw_fd(),
        None => dev_null()?.as_raw_fd(),
    };
    let (out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut child_args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        stdio: [stdin, out_write.as_raw_fd(), err_write.as_raw_fd()],
        error: 0,
        stage: Stage::ProcessGroup,
    };
    let pid = STACK.with_borrow_mut(|slot| {
        let stack = match slot {
            Some(stack) => stack,
            None => slot.insert(Stack::new()?),
        };
        clone_child(stack, &mut child_args)
    })?;
    // The child has exec'd or exited (CLONE_VFORK): its ends of the pipes are ours to close.
    drop((out_write, err_write));
    if child_args.error != 0 {
        // It exited with 127 before exec: reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let cause = io::Error::from_raw_os_error(child_args.error);
        let message = match child_args.stage {
            Stage::ProcessGroup => format!("new process group: {cause}"),
            Stage::Stdio => format!("standard streams: {cause}"),
            Stage::WorkingDirectory => format!("working directory {}: {cause}", spec.cwd.display()),
            Stage::Exec => return Err(cause),
        };
        return Err(io::Error::new(cause.kind(), message));
    }
    Ok(Child { pid, stdout: out_read, stderr: err_read })
}

/// Clones the child with every signal blocked in this thread (the child inherits the mask,
/// so no handler of the server can run in it before it has reset them); returns its pid.
///
/// Except SIGCHLD while the server has no handler for it (it has none: nothing in it uses
/// `tokio::process`): blocked in this thread, the SIGCHLD of an earlier job's exit would be
/// queued for the whole process instead of dropped, and the kernel would wake some sleeping
/// thread (an HTTP worker, the database writer, a pool thread) only to drop it there. Under
/// load that was one needless wake-up for about one job in four. The child cannot get a
/// SIGCHLD before `execve` anyway: it has no children of its own.
fn clone_child(stack: &Stack, args: &mut ChildArgs) -> io::Result<i32> {
    // SAFETY: sigset_t and sigaction are plain data; sigfillset initialises the set.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut chld: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to values on this stack; sigaction with a null new action only
    // reads the disposition.
    unsafe {
        libc::sigfillset(&mut all);
        let no_handler = libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut chld) == 0
            && (chld.sa_sigaction == libc::SIG_DFL || chld.sa_sigaction == libc::SIG_IGN);
        if no_handler {
            libc::sigdelset(&mut all, libc::SIGCHLD);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: `child_main` only reads `args` (alive: this thread is suspended until the child
    // has exec'd or exited, by CLONE_VFORK) and writes its `error`; it runs on `stack`, which
    // nothing else uses meanwhile (one per thread), and it never returns into Rust code of the
    // parent. SIGCHLD makes it an ordinary child for waitpid and pidfd.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (args as *mut ChildArgs).cast::<c_void>(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_error);
    }
    Ok(pid)
}

/// The child, between clone and execve. Only async-signal-safe calls, no allocation, nothing
/// that can panic.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive while the parent is suspended.
    let args = unsafe { &mut *arg.cast::<ChildArgs>() };
    // SAFETY: each call is a plain system call wrapper on values prepared by the parent.
    unsafe {
        let fail = |args: &mut ChildArgs| -> ! {
            args.error = *libc::__errno_location();
            if args.error == 0 {
                args.error = libc::EINVAL;
            }
            libc::_exit(127)
        };
        if libc::setpgid(0, 0) != 0 {
            fail(args);
        }
        args.stage = Stage::Stdio;
        for (target, source) in (0..).zip(args.stdio) {
            let ok = if source == target {
                // Already in place (the server runs with that descriptor closed): keep it
                // across exec.
                libc::fcntl(source, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(source, target) == target
            };
            if !ok {
                fail(args);
            }
        }
        args.stage = Stage::WorkingDirectory;
        if libc::chdir(args.cwd) != 0 {
            fail(args);
        }
        args.stage = Stage::Exec;
        // Handlers of the server must not run here (the memory is the server's), and an
        // ignored SIGPIPE (Rust's default) would be inherited by the script: both go back to
        // the default. Other ignored signals stay ignored, as with posix_spawn.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..32 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            let handled = current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
            if handled || signal == libc::SIGPIPE {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(args.path, args.argv, args.envp);
        fail(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(spec: &Spec<'_>) -> (String, String, i32) {
        let child = spawn(spec).expect("spawn");
        let (mut out, mut err) = (String::new(), String::new());
        File::from(child.stdout).read_to_string(&mut out).expect("stdout");
        File::from(child.stderr).read_to_string(&mut err).expect("stderr");
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None).expect("wait");
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("{other:?}"),
        };
        (out, err, code)
    }

    #[test]
    fn argv_env_cwd_stdio_and_group_reach_the_child() {
        let script = "echo \"$1|$2|$FOO|$SR_TEST_SECOND|$(pwd)\"; echo oops >&2; cat; \
                      [ \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" ] && echo leader >&2; exit 3";
        let args = ["-c", script, "sh", "a b", "$(x)"].map(String::from);
        let env = [("FOO", "one"), ("SR_TEST_SECOND", "x"), ("SR_TEST_SECOND", "two")];
        let (out, err, code) =
            run(&Spec { program: Path::new("/bin/sh"), args: &args, cwd: Path::new("/tmp"), env: &env, stdin: None });
        assert_eq!(out, "a b|$(x)|one|two|/tmp\n");
        assert_eq!(err, "oops\nleader\n");
        assert_eq!(code, 3);
    }

    #[test]
    fn no_signal_is_blocked_and_sigpipe_is_at_its_default() {
        // The program itself reads its status (a shell would show its own mask of the moment).
        let args = ["grep", "-E", "^(SigIgn|SigBlk)", "/proc/self/status"].map(String::from);
        let spec = Spec { program: Path::new("/usr/bin/env"), args: &args, cwd: Path::new("/"), env: &[], stdin: None };
        let (out, _, code) = run(&spec);
        assert_eq!(code, 0);
        let mask = |name: &str| {
            let line = out.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default();
            u64::from_str_radix(line.trim(), 16).unwrap_or(u64::MAX)
        };
        assert_eq!(mask("SigBlk:"), 0, "{out}");
        // SIGPIPE is ignored in the test process.
        assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn stdin_file_is_read() {
        let mut file = tempfile::tempfile().expect("temp");
        std::io::Write::write_all(&mut file, b"from stdin").expect("write");
        std::io::Seek::rewind(&mut file).expect("rewind");
        let args = vec!["-c".to_string(), "cat".to_string()];
        let spec =
            Spec { program: Path::new("/bin/sh"), args: &args, cwd: Path::new("/"), env: &[], stdin: Some(&file) };
        assert_eq!(run(&spec).0, "from stdin");
    }

    #[test]
    fn failures_are_errors_with_the_cause() {
        let none = Spec { program: Path::new("/nonexistent/x"), args: &[], cwd: Path::new("/"), env: &[], stdin: None };
        assert_eq!(spawn(&none).err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        let bad_cwd =
            Spec { program: Path::new("/bin/true"), args: &[], cwd: Path::new("/nonexistent"), env: &[], stdin: None };
        let e = spawn(&bad_cwd).err().expect("bad cwd fails");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("working directory /nonexistent: "), "{e}");
        let not_exec =
            Spec { program: Path::new("/etc/passwd"), args: &[], cwd: Path::new("/"), env: &[], stdin: None };
        assert_eq!(spawn(&not_exec).err().map(|e| e.kind()), Some(io::ErrorKind::PermissionDenied));
        let nul = vec!["a\0b".to_string()];
        let spec = Spec { program: Path::new("/bin/true"), args: &nul, cwd: Path::new("/"), env: &[], stdin: None };
        assert_eq!(spawn(&spec).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}
