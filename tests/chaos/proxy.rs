//! A TCP proxy between one worker and the coordinator that the campaign can cut (black-hole:
//! bytes are held, in both directions, as a partition holds them), heal, and reset (every
//! connection closed at once). On loopback only.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy's state, watched by every connection it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    /// Bytes flow.
    open: bool,
    /// Bumped by a reset: connections of an older generation close.
    generation: u64,
}

/// A running proxy.
pub struct Proxy {
    /// Where the worker connects.
    pub addr: SocketAddr,
    ctl: watch::Sender<State>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (ctl, rx) = watch::channel(State {
            open: true,
            generation: 0,
        });
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = carry(down, &upstream, rx).await;
                });
            }
        });
        Ok(Proxy { addr, ctl })
    }

    /// Black-holes the link until [`Proxy::heal`].
    pub fn cut(&self) {
        self.ctl.send_modify(|s| s.open = false);
    }

    /// Lets the held bytes and new ones flow again.
    pub fn heal(&self) {
        self.ctl.send_modify(|s| s.open = true);
    }

    /// Closes every connection now.
    pub fn reset(&self) {
        self.ctl.send_modify(|s| s.generation += 1);
    }
}

/// Waits until the link is open; false when the connection's generation is over.
async fn wait_open(rx: &mut watch::Receiver<State>, generation: u64) -> bool {
    match rx.wait_for(|s| s.open || s.generation != generation).await {
        Ok(s) => s.generation == generation,
        Err(_) => false,
    }
}

/// Carries one connection until either side closes or a reset ends its generation.
async fn carry(
    mut down: TcpStream,
    upstream: &str,
    mut rx: watch::Receiver<State>,
) -> std::io::Result<()> {
    let generation = rx.borrow().generation;
    if !wait_open(&mut rx, generation).await {
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream).await?;
    let (mut dr, mut dw) = down.split();
    let (mut ur, mut uw) = up.split();
    let mut rx2 = rx.clone();
    let mut reset = rx.clone();
    let a = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = dr.read(&mut buf).await?;
            if n == 0 || !wait_open(&mut rx, generation).await {
                return Ok::<(), std::io::Error>(());
            }
            uw.write_all(&buf[..n]).await?;
        }
    };
    let b = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 || !wait_open(&mut rx2, generation).await {
                return Ok::<(), std::io::Error>(());
            }
            dw.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        r = a => r,
        r = b => r,
        _ = reset.wait_for(|s| s.generation != generation) => Ok(()),
    }
}
