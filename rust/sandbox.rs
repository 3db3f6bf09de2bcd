//! Starting a command inside an overlay: the child makes a private mount namespace (and, for a
//! caller that is not root, a user namespace where the caller is root), mounts the overlay,
//! and execs the command (bwrap, which builds the rest of the sandbox).
//!
//! The same as `unshare --mount --propagation private sh -c 'mount -t overlay ...; exec CMD'`,
//! without the three processes (`unshare`, `sh`, `mount`) in between: a container's start-up
//! pays for bwrap alone (see `benches/test_run.py`).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What the child did last before it failed: the parent learns it from the error's code
/// (`errno + STEP_BASE * step`), the only thing a failing `pre_exec` can send back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `setsid`, or taking the terminal on fd 0.
    Session = 1,
    /// `unshare` of the mount (and user) namespace.
    Namespaces = 2,
    /// Writing the user namespace's id maps.
    IdMaps = 3,
    /// Making the mounts private.
    Private = 4,
    /// Mounting the overlay.
    Mount = 5,
}

/// The step a failed start reports is `code / STEP_BASE`, its errno `code % STEP_BASE`.
pub const STEP_BASE: i32 = 100_000;

/// A command to start inside an overlay.
pub struct OverlayCommand {
    /// The command and its arguments (found on `PATH`).
    pub argv: Vec<OsString>,
    /// The command's whole environment; `None`: this process's.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// The working directory, where `merged`, the upper, work and lower dirs `options` names
    /// relatively are.
    pub dir: PathBuf,
    /// The overlay's mount options (`lowerdir=...,upperdir=...,workdir=...`).
    pub options: String,
    /// Also a user namespace where this process's ids are root's (for a caller that is not
    /// root; the overlay then needs `userxattr` in `options`).
    pub userns: bool,
    /// The command's stdin, stdout and stderr (duplicated; the caller keeps its own).
    pub stdio: [RawFd; 3],
    /// Take fd 0 (a terminal) as the controlling terminal of the new session.
    pub terminal: bool,
}

/// Starts `command` in a new session and returns its process id (the caller waits for it).
/// An error from the child names the step that failed (see [`failed_step`]).
pub fn spawn(command: &OverlayCommand) -> io::Result<u32> {
    let Some((program, args)) = command.argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(&command.dir);
    if let Some(env) = &command.env {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    let [stdin, stdout, stderr] = command.stdio;
    cmd.stdin(duplicate(stdin)?)
        .stdout(duplicate(stdout)?)
        .stderr(duplicate(stderr)?);
    // Everything the child needs, allocated before the fork: after it, only system calls.
    let options = CString::new(command.options.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the mount options"))?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("0 {uid} 1");
    let gid_map = format!("0 {gid} 1");
    let userns = command.userns;
    let terminal = command.terminal;
    // SAFETY: the closure runs in the forked child before exec and makes only system calls
    // on memory prepared above (no allocation, no lock).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || (terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                return Err(at(Step::Session));
            }
            let flags = libc::CLONE_NEWNS | if userns { libc::CLONE_NEWUSER } else { 0 };
            if libc::unshare(flags) < 0 {
                return Err(at(Step::Namespaces));
            }
            if userns
                && (write_proc(c"/proc/self/setgroups", b"deny").is_err()
                    || write_proc(c"/proc/self/uid_map", uid_map.as_bytes()).is_err()
                    || write_proc(c"/proc/self/gid_map", gid_map.as_bytes()).is_err())
            {
                return Err(at(Step::IdMaps));
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) < 0
            {
                return Err(at(Step::Private));
            }
            if libc::mount(
                c"overlay".as_ptr(),
                c"merged".as_ptr(),
                c"overlay".as_ptr(),
                0,
                options.as_ptr().cast(),
            ) < 0
            {
                return Err(at(Step::Mount));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// The step and the OS error of a failed [`spawn`], if the child reported one.
pub fn failed_step(error: &io::Error) -> Option<(Step, io::Error)> {
    let code = error.raw_os_error()?;
    let step = match code / STEP_BASE {
        1 => Step::Session,
        2 => Step::Namespaces,
        3 => Step::IdMaps,
        4 => Step::Private,
        5 => Step::Mount,
        _ => return None,
    };
    Some((step, io::Error::from_raw_os_error(code % STEP_BASE)))
}

/// The last OS error, tagged with `step`.
fn at(step: Step) -> io::Error {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    io::Error::from_raw_os_error(errno + STEP_BASE * step as i32)
}

/// Writes `data` to the proc file `path` with one `write` (an id map must come in one).
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: plain system calls on a NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != data.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

/// A duplicate of `fd` for the child's stdio (the caller's own stays open).
fn duplicate(fd: RawFd) -> io::Result<Stdio> {
    // SAFETY: `fd` is open for the duration of the call (the caller's).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned: OwnedFd = borrowed.try_clone_to_owned()?;
    Ok(Stdio::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_and_its_errno_survive_the_round_trip() {
        let e = io::Error::from_raw_os_error(libc::EPERM + STEP_BASE * Step::Mount as i32);
        let (step, os) = failed_step(&e).unwrap();
        assert_eq!(step, Step::Mount);
        assert_eq!(os.raw_os_error(), Some(libc::EPERM));
        assert!(failed_step(&io::Error::from_raw_os_error(libc::ENOENT)).is_none());
    }

    #[test]
    fn an_empty_command_is_refused() {
        let command = OverlayCommand {
            argv: vec![],
            env: None,
            dir: PathBuf::from("/"),
            options: String::new(),
            userns: false,
            stdio: [0, 1, 2],
            terminal: false,
        };
        assert_eq!(
            spawn(&command).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_failed_mount_names_its_step() {
        // Whoever runs the test: as root the mount of a missing lower dir fails, otherwise
        // the namespaces (or the maps) may already be refused; every failure names a step.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("merged")).unwrap();
        let command = OverlayCommand {
            argv: vec!["true".into()],
            env: None,
            dir: dir.path().to_path_buf(),
            options: "lowerdir=missing,upperdir=u,workdir=w".into(),
            userns: unsafe { libc::geteuid() } != 0,
            stdio: [0, 1, 2],
            terminal: false,
        };
        let error = spawn(&command).unwrap_err();
        let (step, _) = failed_step(&error).expect("a step");
        assert!(matches!(
            step,
            Step::Mount | Step::Namespaces | Step::IdMaps
        ));
    }
}
