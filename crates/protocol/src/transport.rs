//! How a peer reaches a coordinator: over TCP, or over a Unix socket when both run on one
//! machine.
//!
//! The protocol is the same byte stream on either. A socket file needs no port: with
//! `tatzelwurm --listen none` users who share a login node each run their own coordinator
//! without picking ports, and nothing is reachable from the network. (It is not faster here: BENCHMARKS.md measured exec and noop runs over both
//! side by side.) An address that starts with `unix:` names a socket file, anything else is
//! `host[:port]`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::cli::with_default_port;

/// The prefix that makes an address a Unix socket's path.
pub const UNIX_PREFIX: &str = "unix:";

/// Where a coordinator listens, as a peer is told on its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` (the default port added when the address named none).
    Tcp(String),
    /// The path of a Unix socket file.
    Unix(PathBuf),
}

impl Endpoint {
    /// Reads an address: `unix:PATH` is a socket file; anything else is a host with or without a
    /// port (see [`with_default_port`]).
    pub fn parse(addr: &str) -> Endpoint {
        let a = addr.trim();
        match a.strip_prefix(UNIX_PREFIX) {
            Some(path) => Endpoint::Unix(PathBuf::from(path)),
            None => Endpoint::Tcp(with_default_port(a)),
        }
    }

    /// Opens a connection (with Nagle's delay off on TCP: frames are small and answered).
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => f.write_str(addr),
            Endpoint::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

/// One connection, over either transport: what the frame codec reads and writes.
#[derive(Debug)]
pub enum Stream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_prefix_names_a_socket_file_and_anything_else_a_host() {
        assert_eq!(
            Endpoint::parse("unix:/run/tw.sock"),
            Endpoint::Unix("/run/tw.sock".into())
        );
        assert_eq!(
            Endpoint::parse(" unix:rel/tw.sock"),
            Endpoint::Unix("rel/tw.sock".into())
        );
        assert_eq!(Endpoint::parse("node7"), Endpoint::Tcp("node7:5677".into()));
        assert_eq!(
            Endpoint::parse("[::1]:7000"),
            Endpoint::Tcp("[::1]:7000".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/run/tw.sock").to_string(),
            "unix:/run/tw.sock"
        );
    }
}
