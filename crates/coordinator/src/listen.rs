//! Where the coordinator listens: its TCP port, and optionally a Unix socket file for peers on
//! the same machine (`--socket`), both speaking the same protocol.
//!
//! A socket file outlives a coordinator that was killed, and binding over it fails. So a path that
//! already holds a socket is probed first: if a coordinator answers there, this one refuses to
//! start (two coordinators would otherwise split the peers between them); if nothing answers, the
//! file is a leftover and is replaced. A path that holds anything else is never removed.
//!
//! Probing and binding are two steps, so two coordinators started at the same instant could both
//! find the same leftover, both replace it, and one would end up listening on a file nobody can
//! reach. A lock file beside the socket (`PATH.lock`, `flock`ed for as long as the coordinator
//! listens) makes the two steps one coordinator's at a time. It stays behind, empty and unlocked,
//! when the coordinator stops: removing it would open the same race again.

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tatzelwurm_protocol::transport::Stream;
use tokio::net::{TcpListener, UnixListener};

/// Why a socket file could not be listened on.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process (another coordinator, most likely) accepts connections there.
    #[error(
        "{0} is the socket of a running process (another coordinator?); stop it or choose another --socket"
    )]
    InUse(PathBuf),
    /// The path holds a file that is not a socket: it is not ours to remove.
    #[error("{0} exists and is not a socket; choose another --socket")]
    NotASocket(PathBuf),
    /// The lock file beside the socket could not be opened or locked.
    #[error(
        "cannot lock {path} (beside the socket, so that one coordinator at a time takes it): {source}"
    )]
    Lock {
        /// The lock file's path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Binding, probing or removing failed.
    #[error("cannot listen on the socket {path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// A Unix socket the coordinator listens on; its file is removed when the coordinator stops
/// (unless another process has put its own there meanwhile).
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The file's device and inode as bound, to recognise it at removal.
    id: (u64, u64),
    /// `PATH.lock`, locked until this is dropped (after the socket file is removed); `None` on a
    /// file system without locks.
    _lock: Option<File>,
}

impl UnixSocket {
    /// Listens on `path`, replacing a leftover socket file that nothing answers on.
    pub async fn bind(path: &Path) -> Result<UnixSocket, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        let lock = lock_beside(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            Ok(_) => match tokio::net::UnixStream::connect(path).await {
                Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        // Owner only, like the token file: other users of the machine cannot even knock.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let meta = std::fs::metadata(path).map_err(io)?;
        Ok(UnixSocket {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            _lock: lock,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection, and who it is for the logs (the peer's process id when the system
    /// tells it).
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        let (stream, _) = self.listener.accept().await?;
        let peer = match stream.peer_cred().ok().and_then(|c| c.pid()) {
            Some(pid) => format!("unix pid {pid}"),
            None => "unix".to_string(),
        };
        Ok((Stream::Unix(stream), peer))
    }
}

/// Takes `PATH.lock` (created owner-only when missing, never through a symbolic link) without
/// waiting: held by another process, the socket is in use. A file system that has no locks is
/// logged and listened on without one.
fn lock_beside(path: &Path) -> Result<Option<File>, SocketError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let failed = |source| SocketError::Lock {
        path: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // A symbolic link planted at the lock path is refused (ELOOP): following it would make
        // the coordinator create, or lock, a file somebody else chose.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Err(SocketError::InUse(path.to_path_buf())),
        Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {
            tracing::warn!(lock = %lock_path.display(), error = %e, "no file locks here: two coordinators started at once on this socket path could race");
            Ok(None)
        }
        Err(TryLockError::Error(e)) => Err(failed(e)),
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Accepts from the TCP listener and the socket, those there are: whichever has a connection
/// first.
pub async fn accept(
    tcp: Option<&TcpListener>,
    unix: Option<&UnixSocket>,
) -> io::Result<(Stream, String)> {
    let from_port = async {
        match tcp {
            Some(l) => l.accept().await.map(|(s, peer)| {
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), peer.to_string())
            }),
            None => std::future::pending().await,
        }
    };
    let from_socket = async {
        match unix {
            Some(s) => s.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        a = from_port => a,
        a = from_socket => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_leftover_socket_is_replaced_a_live_one_refused_and_ours_removed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.sock");
        // A leftover: bound, then its listener dropped without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let first = UnixSocket::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
        let second = UnixSocket::bind(&path).await;
        assert!(matches!(second, Err(SocketError::InUse(_))), "{second:?}");
        let peer = tokio::net::UnixStream::connect(&path);
        let (accepted, who) = tokio::join!(first.accept(), peer);
        accepted.unwrap();
        who.unwrap();
        drop(first);
        assert!(
            !path.exists(),
            "the coordinator's socket is removed when it stops"
        );
    }

    #[tokio::test]
    async fn a_second_coordinator_is_refused_even_when_the_first_ones_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.sock");
        let first = UnixSocket::bind(&path).await.unwrap();
        // What a second coordinator that had just replaced the file would leave the first
        // with: a listener on a path that no longer names its socket. The lock still holds.
        std::fs::remove_file(&path).unwrap();
        let second = UnixSocket::bind(&path).await;
        assert!(matches!(second, Err(SocketError::InUse(_))), "{second:?}");
        assert!(!path.exists(), "the refused one bound nothing");
        drop(first);
        let third = UnixSocket::bind(&path).await.unwrap();
        assert!(path.exists());
        let lock = dir.path().join("tw.sock.lock");
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the lock file is the owner's only too");
        drop(third);
        assert!(lock.exists(), "the lock file stays, unlocked");
        UnixSocket::bind(&path).await.unwrap();
    }

    #[tokio::test]
    async fn a_lock_path_that_cannot_be_opened_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.sock");
        std::fs::create_dir(dir.path().join("tw.sock.lock")).unwrap();
        let r = UnixSocket::bind(&path).await;
        let Err(e @ SocketError::Lock { .. }) = r else {
            panic!("{r:?}")
        };
        assert!(e.to_string().contains("tw.sock.lock"), "{e}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_symbolic_link_at_the_lock_path_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.sock");
        let target = dir.path().join("somebody-elses");
        std::os::unix::fs::symlink(&target, dir.path().join("tw.sock.lock")).unwrap();
        let r = UnixSocket::bind(&path).await;
        let Err(e @ SocketError::Lock { .. }) = r else {
            panic!("{r:?}")
        };
        assert!(e.to_string().contains("tw.sock.lock"), "{e}");
        assert!(!target.exists(), "the link's target is not created");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "mine").unwrap();
        let r = UnixSocket::bind(&path).await;
        assert!(matches!(r, Err(SocketError::NotASocket(_))), "{r:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }

    #[tokio::test]
    async fn a_socket_replaced_by_another_process_is_left_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.sock");
        let ours = UnixSocket::bind(&path).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(path.exists(), "another's socket file stays");
        drop(theirs);
    }
}
