//! Starting a command cheaply, and still so that it dies with its worker.
//!
//! A command must get the parent-death signal (SIGKILL), or a command of a worker killed with
//! `kill -9` would run on beside the attempt that replaces it. The standard library can only set
//! it from a closure that runs between fork and exec, and with such a closure it forks the whole
//! worker: copying the page tables of a process with a runtime and hundreds of tasks costs far
//! more than the command `true` itself. Here the child is started the way `posix_spawn` starts
//! one, with `clone(CLONE_VM | CLONE_VFORK)`: it borrows the worker's memory and the worker's
//! thread waits only until it has called `execve`. In between it runs a few async-signal-safe
//! calls on a stack of its own: reset the signal handlers, its own process group, the
//! parent-death signal, the pipes, the working directory, the signal mask, `execve`. Nothing in
//! it allocates or takes a lock; everything it needs is prepared before the clone.
//!
//! Its end is awaited through a pidfd, which the clone itself returns (`CLONE_PIDFD`) and which
//! becomes readable when the process exits (Linux 5.3).

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// The child's stack: its few calls need little.
const STACK: usize = 64 * 1024;

thread_local! {
    /// The child's stack, one per thread that starts commands, reused: the thread waits until
    /// its child has exec'd or exited, so one stack serves all of its children in turn. A fresh
    /// zeroed 64 KiB a command cost a memset, and glibc's malloc consolidated its heap on each
    /// free of it.
    static CHILD_STACK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(STACK));
}

/// The worker's own environment, read once: each command gets it (plus its task's variables).
/// A running worker cannot change it: `std::env::set_var` is sound only while no other thread
/// reads the environment, and a worker runs threads from its start. Reading it per command cost
/// an allocation per variable.
struct WorkerEnv {
    /// Each variable's name (lossy UTF-8, to compare with a task's) and `NAME=VALUE`.
    vars: Vec<(String, CString)>,
    /// `PATH`, where commands are looked for.
    path: Option<OsString>,
}

fn worker_env() -> &'static WorkerEnv {
    static ENV: std::sync::OnceLock<WorkerEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut path = None;
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| {
                if k == "PATH" {
                    path = Some(v.clone());
                }
                let name = k.to_string_lossy().into_owned();
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                // The environment holds no NUL bytes; a name with one could not be passed on.
                Some((name, CString::new(kv).ok()?))
            })
            .collect();
        WorkerEnv { vars, path }
    })
}

/// `/dev/null`, opened once: every command's stdin (the child duplicates it onto 0).
static DEV_NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

fn dev_null() -> io::Result<RawFd> {
    if let Some(f) = DEV_NULL.get() {
        return Ok(f.as_raw_fd());
    }
    let f = std::fs::File::open("/dev/null")?;
    // Another thread may have set it meanwhile; either file is /dev/null.
    Ok(DEV_NULL.get_or_init(|| f).as_raw_fd())
}

/// A started command: its process and the reading ends of its stdout and stderr.
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// Its standard output.
    pub stdout: pipe::Receiver,
    /// Its standard error.
    pub stderr: pipe::Receiver,
}

/// A command this process started and has not reaped yet.
pub struct Child {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    reaped: bool,
}

impl Child {
    /// Its process id (also its process group's).
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for it to end and reaps it. The pidfd is asked first: a command has seldom ended
    /// by the time it is waited for, and a `waitpid` that finds it running is a wasted call.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            let mut ready = self.pidfd.readable().await?;
            if let Some(status) = try_reap(self.pid)? {
                drop(ready);
                self.reaped = true;
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

/// Reaps our child `pid` if it has ended.
fn try_reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a valid pointer.
    match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
        0 => Ok(None),
        r if r == pid => Ok(Some(ExitStatus::from_raw(status))),
        _ => Err(io::Error::last_os_error()),
    }
}

impl Drop for Child {
    /// A command whose attempt was dropped unfinished (the worker stops at once) is killed.
    fn drop(&mut self) {
        if !self.reaped {
            kill_and_reap(self.pid);
        }
    }
}

/// Kills a child of ours that nobody will wait for, and reaps it.
fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: plain syscalls on our own unreaped child: its pid cannot be reused before the
    // waitpid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// What the child needs, prepared by the parent; the child reads it through the shared memory.
struct ChildArgs {
    /// The files to try `execve` on, in order (the `PATH` search done beforehand).
    paths: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    parent: libc::pid_t,
    /// The signal mask to exec with: the parent thread's before it blocked everything.
    mask: libc::sigset_t,
    /// Why the child could not exec (errno), 0 when it did.
    error: AtomicI32,
}

/// Where the child failed: recorded for the parent, which reads it once the child is gone.
fn fail(a: &ChildArgs, errno: i32) -> ! {
    a.error.store(errno.max(1), Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe and does not run the parent's atexit handlers.
    unsafe { libc::_exit(127) }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child, between `clone` and `execve`. Only async-signal-safe calls: it runs on the
/// worker's memory while the worker's thread waits.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `ChildArgs` the parent keeps alive until this child has
    // exec'd or exited (CLONE_VFORK). Every call below is async-signal-safe.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        // The worker's signal handlers must not run here, in its memory: every caught signal
        // goes back to its default (exec would do the same); SIGPIPE too, which Rust ignores.
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE
                || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // Its own process group, so that signals reach everything it starts.
        if libc::setpgid(0, 0) != 0 {
            fail(a, errno());
        }
        // Dies with the worker; the worker may have died already, before the prctl.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(a, errno());
        }
        if libc::getppid() != a.parent {
            fail(a, libc::ESRCH);
        }
        for (from, to) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                fail(a, errno());
            }
        }
        if let Some(dir) = &a.cwd
            && libc::chdir(dir.as_ptr()) != 0
        {
            fail(a, errno());
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &a.mask, std::ptr::null_mut());
        // As execvp does: the first candidate that exists; a permission error is kept in case
        // no later one works.
        let mut why = libc::ENOENT;
        for path in &a.paths {
            libc::execve(path.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => why = libc::EACCES,
                other => fail(a, other),
            }
        }
        fail(a, why)
    }
}

fn cstring(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or environment variable holds a NUL byte",
        )
    })
}

/// The files `execve` should try for `program`: itself when it names a path (relative ones
/// resolve in the child's working directory), else each directory of `PATH`, as `execvp`.
fn candidates(program: &str, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    if program.contains('/') {
        return Ok(vec![cstring(program.as_bytes().to_vec())?]);
    }
    path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"))
        .as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b".".as_slice() } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program.as_bytes());
            cstring(full)
        })
        .collect()
}

/// A pipe whose both ends close on exec, its read end non-blocking (the write end becomes the
/// command's stdout or stderr and stays blocking); (read end, write end).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors on success, which we then own; fcntl on our own
    // descriptor. The read end's status flags are O_RDONLY alone, so setting O_NONBLOCK needs
    // no F_GETFL first (F_SETFL leaves the access mode alone).
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        if libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((r, w))
    }
}

/// Starts the child on `stack` (its capacity; what it holds does not matter) and returns its
/// pid and a pidfd for it (`CLONE_PIDFD`, Linux 5.2: no `pidfd_open` of its own) once it has
/// exec'd or exited.
fn clone_child(stack: &mut Vec<u8>, args: &mut ChildArgs) -> io::Result<(libc::pid_t, OwnedFd)> {
    stack.reserve(STACK);
    // SAFETY: the stack outlives the child's use of it (CLONE_VFORK: this thread resumes only
    // once the child has exec'd or exited), `args` likewise; the child only writes the stack
    // before it reads it, so its bytes need no initialising. All signals are blocked around
    // the clone so that no handler of the worker's runs in the child before it resets them.
    unsafe {
        let top = stack.as_mut_ptr().add(STACK);
        let top = top.sub(top as usize % 16) as *mut libc::c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.mask);
        let mut pidfd: libc::c_int = -1;
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            args as *mut ChildArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        // The kernel wrote the pidfd (close-on-exec) before the child ran; it is ours.
        Ok((pid, OwnedFd::from_raw_fd(pidfd)))
    }
}

/// Starts `argv` with the worker's environment plus `env`, in `cwd`, stdin from /dev/null and
/// stdout and stderr into pipes, in a process group of its own, dying with the worker. Needs
/// a tokio runtime (the pipes and the pidfd register with it).
pub fn spawn(argv: &[String], env: &[(String, String)], cwd: Option<&str>) -> io::Result<Spawned> {
    let program = argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an empty command"))?;
    // The task's variables, the last of each name winning, then the worker's that they leave.
    let mut own: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in env {
        own.insert(k, v);
    }
    let base = worker_env();
    let path = own.get("PATH").map(OsStr::new).or(base.path.as_deref());
    let paths = candidates(program, path)?;
    let own_c = own
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").into_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let envp: Vec<*const libc::c_char> = base
        .vars
        .iter()
        .filter(|(name, _)| !own.contains_key(name.as_str()))
        .map(|(_, kv)| kv.as_ptr())
        .chain(own_c.iter().map(|c| c.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let argv_c = argv
        .iter()
        .map(|a| cstring(a.as_bytes().to_vec()))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = cwd.map(|d| cstring(d.as_bytes().to_vec())).transpose()?;
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let devnull = dev_null()?;
    let null_terminated = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let mut args = Box::new(ChildArgs {
        argv: null_terminated(&argv_c),
        envp,
        paths,
        cwd,
        stdin: devnull,
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        // SAFETY: getpid cannot fail.
        parent: unsafe { libc::getpid() },
        // SAFETY: an all-zero sigset_t is a valid (empty) set; it is overwritten below.
        mask: unsafe { std::mem::zeroed() },
        error: AtomicI32::new(0),
    });
    let (pid, pidfd) = CHILD_STACK.with_borrow_mut(|stack| clone_child(stack, &mut args))?;
    drop((out_w, err_w));
    let failed = args.error.load(Ordering::SeqCst);
    if failed != 0 {
        // SAFETY: reaping our own child, which has exited.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        return Err(io::Error::from_raw_os_error(failed));
    }
    // SAFETY: the pidfd is owned by the AsyncFd from here on and stays open as long as it.
    let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(pid);
            return Err(e.into());
        }
    };
    let child = Child {
        pid,
        pidfd,
        reaped: false,
    };
    // Unchecked: they are pipes' read ends, non-blocking already (the checked form asks the
    // kernel both again).
    Ok(Spawned {
        stdout: pipe::Receiver::from_owned_fd_unchecked(out_r)?,
        stderr: pipe::Receiver::from_owned_fd_unchecked(err_r)?,
        child,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn run(
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&str>,
    ) -> (ExitStatus, String, String) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = spawn(&argv, &env, cwd).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        s.stdout.read_to_string(&mut out).await.unwrap();
        s.stderr.read_to_string(&mut err).await.unwrap();
        (s.child.wait().await.unwrap(), out, err)
    }

    #[tokio::test]
    async fn a_command_gets_its_arguments_environment_directory_and_pipes() {
        let (status, out, err) = run(
            &[
                "sh",
                "-c",
                "echo \"$1 $GREETING $(pwd)\"; echo oops >&2; exit 3",
                "sh",
                "hello",
            ],
            &[("GREETING", "world")],
            Some("/tmp"),
        )
        .await;
        assert_eq!(out, "hello world /tmp\n");
        assert_eq!(err, "oops\n");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_task_variable_replaces_the_workers_own_once_and_its_path_finds_the_program() {
        assert!(
            std::env::var_os("HOME").is_some(),
            "the test needs HOME set"
        );
        let (_, out, _) = run(
            &["sh", "-c", "env | grep -c '^HOME='; echo \"$HOME\""],
            &[("HOME", "/first"), ("HOME", "/last")],
            None,
        )
        .await;
        assert_eq!(out, "1\n/last\n");
        // A program found only through the task's PATH.
        let dir = std::env::temp_dir().join(format!("tatzelwurm-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("tatzelwurm-test-prog");
        std::fs::write(&prog, "#!/bin/sh\necho found\n").unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!("{}:/usr/bin:/bin", dir.display());
        let (status, out, _) = run(&["tatzelwurm-test-prog"], &[("PATH", &path)], None).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((status.code(), out.as_str()), (Some(0), "found\n"));
    }

    #[tokio::test]
    async fn it_runs_in_a_process_group_of_its_own_with_the_parent_death_signal() {
        let (_, out, _) = run(
            &[
                "sh",
                "-c",
                "cut -d' ' -f5 /proc/$$/stat; echo $$; grep '^PPid' /proc/$$/status",
            ],
            &[],
            None,
        )
        .await;
        let mut lines = out.lines();
        let pgid = lines.next().unwrap();
        assert_eq!(
            Some(pgid),
            lines.next(),
            "the leader of its own group: {out}"
        );
        // The parent-death signal is not in /proc; that it kills commands is tested with the
        // real worker (tests/faults.rs). Here: the child's parent is this process.
        assert!(
            out.contains(&format!("PPid:\t{}", std::process::id())),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_program_that_does_not_exist_is_an_error_and_leaves_no_child() {
        let e = spawn(&["no-such-program-here".into()], &[], None)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = spawn(&["true".into()], &[], Some("/no/such/dir"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let plain =
            std::env::temp_dir().join(format!("tatzelwurm-not-a-program-{}", std::process::id()));
        std::fs::write(&plain, "echo no\n").unwrap();
        let e = spawn(&[plain.display().to_string()], &[], None)
            .err()
            .unwrap();
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }
}
