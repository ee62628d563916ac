//! Zero-gap agent replacement without systemd: a new agent process takes
//! the listening sockets over from the running one, so no connection is
//! ever refused and no request is lost across a restart or an upgrade.
//!
//! The running agent listens on `STATE_DIR/handoff.sock` (mode 0600). A new
//! agent started with the same config connects and the two talk in JSON
//! lines:
//!
//! 1. new → old `{"take_over":{"pid":N}}`;
//! 2. old: waits for running operations to end and freezes every service
//!    (no operation starts, nothing is written to the state file), then
//!    answers `{"offer":{"pid":M,"sockets":[...]}}` with the listening
//!    sockets attached (`SCM_RIGHTS`) — or `{"refused":{"reason":"..."}}`
//!    when an operation is running;
//! 3. new: loads the state the old one wrote, adopts the replicas, waits
//!    for its routes to be healthy, starts accepting on the shared sockets
//!    and says `{"ready":null}`;
//! 4. old: stops accepting, lets its open connections finish (keep-alive
//!    clients are told `Connection: close`) and exits.
//!
//! If the new process goes away before step 3, the old one unfreezes and
//! carries on as if nothing happened. Both accept from the same sockets
//! during the overlap, so there is no moment without an acceptor.

use crate::controller::Service;
use crate::listeners::{Inherited, Shareable, SocketName};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// The handoff socket's file name inside the state directory.
pub const HANDOFF_SOCKET: &str = "handoff.sock";
/// Most sockets one handoff carries.
const MAX_SOCKETS: usize = 64;
/// Longest wait for the running agent's offer (it may wait for an
/// operation that is just ending).
const OFFER_WAIT: Duration = Duration::from_secs(30);
/// Longest handoff message.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why a handoff failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The socket could not be used.
    #[error("handoff socket {path}: {source}")]
    Io {
        /// The handoff socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The running agent said no.
    #[error(
        "the running agent (pid {pid}) refused to hand over: {reason}; try again when it is idle, or stop it first"
    )]
    Refused {
        /// The running agent.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// The other side broke the protocol.
    #[error("handoff socket {path}: {message}")]
    Protocol {
        /// The handoff socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One message of the handoff protocol.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    TakeOver { pid: u32 },
    Offer { pid: u32, sockets: Vec<SocketName> },
    Refused { pid: u32, reason: String },
    Ready,
}

/// The handoff socket of the agent whose state lives in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(HANDOFF_SOCKET)
}

/// Sockets taken over from a running agent, which keeps serving until
/// [`Takeover::complete`] (or gives up its handover if this is dropped).
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    path: PathBuf,
    /// The agent that handed over.
    pub from_pid: u32,
    /// Its listening sockets.
    pub sockets: Inherited,
}

impl Takeover {
    /// Tell the old agent that this one serves now; it stops accepting and
    /// exits once its open connections are done.
    pub async fn complete(mut self) -> Result<(), HandoffError> {
        send(&mut self.stream, &Message::Ready, &[]).await.map_err(|source| io_err(&self.path, source))
    }
}

/// Ask the agent listening on `path` for its sockets. `Ok(None)` when no
/// agent listens there (a normal cold start).
pub async fn take_over(path: &Path) -> Result<Option<Takeover>, HandoffError> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None);
        }
        Err(source) => return Err(io_err(path, source)),
    };
    send(&mut stream, &Message::TakeOver { pid: std::process::id() }, &[])
        .await
        .map_err(|source| io_err(path, source))?;
    let (message, fds) = tokio::time::timeout(OFFER_WAIT, receive(&mut stream))
        .await
        .map_err(|_| protocol(path, format!("no answer within {OFFER_WAIT:?}")))?
        .map_err(|source| io_err(path, source))?;
    match message {
        Message::Offer { pid, sockets } if sockets.len() == fds.len() => Ok(Some(Takeover {
            stream,
            path: path.to_path_buf(),
            from_pid: pid,
            sockets: Inherited::from_named(sockets.into_iter().zip(fds).collect(), "handoff"),
        })),
        Message::Offer { sockets, .. } => {
            Err(protocol(path, format!("offer names {} sockets but carries {}", sockets.len(), fds.len())))
        }
        Message::Refused { pid, reason } => Err(HandoffError::Refused { pid, reason }),
        other => Err(protocol(path, format!("unexpected message {other:?}"))),
    }
}

/// Bind the handoff socket (replacing a stale file; mode 0600: only the
/// agent's own user may take over).
pub fn bind(path: &Path) -> Result<UnixListener, HandoffError> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| io_err(path, source))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| io_err(path, source))?;
    Ok(listener)
}

/// Answer takeover requests on `listener` until `shutdown` fires. After a
/// successful handover it sets `successor` to the new agent's pid and
/// cancels `handed_over`, then `shutdown`.
pub async fn serve(
    listener: UnixListener,
    sockets: Arc<Shareable>,
    services: BTreeMap<String, Arc<Service>>,
    handed_over: CancellationToken,
    successor_pid: Arc<std::sync::OnceLock<u32>>,
    shutdown: CancellationToken,
) {
    loop {
        let mut stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "handoff socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            done = hand_over(&mut stream, &sockets, &services) => match done {
                Ok(successor) => {
                    tracing::info!(successor, "handed the listeners over to the new agent; finishing open connections and exiting");
                    let _ = successor_pid.set(successor);
                    handed_over.cancel();
                    shutdown.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "handover did not complete; this agent carries on"),
            },
        }
    }
}

/// One handover: freeze, offer, wait for the successor's ready. Returns its
/// pid. The services stay frozen only while this runs.
async fn hand_over(
    stream: &mut UnixStream,
    sockets: &Shareable,
    services: &BTreeMap<String, Arc<Service>>,
) -> std::io::Result<u32> {
    let successor = match receive(stream).await?.0 {
        Message::TakeOver { pid } => pid,
        other => return Err(std::io::Error::other(format!("expected take_over, got {other:?}"))),
    };
    tracing::info!(successor, "a new agent asks to take over");
    let pid = std::process::id();
    let mut frozen = Vec::with_capacity(services.len());
    for service in services.values() {
        match service.freeze().await {
            Ok(guard) => frozen.push(guard),
            Err(e) => {
                let reason = e.to_string();
                send(stream, &Message::Refused { pid, reason: reason.clone() }, &[]).await?;
                return Err(std::io::Error::other(format!("refused: {reason}")));
            }
        }
    }
    let names = sockets.sockets().iter().map(|(name, _)| name.clone()).collect();
    let fds: Vec<BorrowedFd<'_>> = sockets.sockets().iter().map(|(_, fd)| fd.as_fd()).collect();
    send(stream, &Message::Offer { pid, sockets: names }, &fds).await?;
    match receive(stream).await?.0 {
        Message::Ready => Ok(successor),
        other => Err(std::io::Error::other(format!("expected ready, got {other:?}"))),
    }
}

/// Send one message, with `fds` attached to it.
async fn send(stream: &mut UnixStream, message: &Message, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut sent = 0;
    while sent < line.len() {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            // The descriptors travel with the first byte only.
            if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(std::io::Error::other("too many sockets for one message"));
            }
            rustix::net::sendmsg(&*stream, &[IoSlice::new(&line[sent..])], &mut control, SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)
        });
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receive one message and the descriptors that came with it.
async fn receive(stream: &mut UnixStream) -> std::io::Result<(Message, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') {
        if line.len() > MAX_MESSAGE {
            return Err(std::io::Error::other("handoff message too long"));
        }
        stream.readable().await?;
        let result = stream.try_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                &*stream,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                    fds.extend(received_fds);
                }
            }
            Ok(received.bytes)
        });
        match result {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    let message = serde_json::from_slice(&line[..end])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((message, fds))
}

fn io_err(path: &Path, source: std::io::Error) -> HandoffError {
    HandoffError::Io { path: path.to_path_buf(), source }
}

fn protocol(path: &Path, message: String) -> HandoffError {
    HandoffError::Protocol { path: path.to_path_buf(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_carry_listening_sockets_that_stay_the_same_socket() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let offer = Message::Offer { pid: 7, sockets: vec![SocketName::Tcp(addr)] };
        send(&mut a, &offer, &[tcp.as_fd()]).await.unwrap();
        let (message, fds) = receive(&mut b).await.unwrap();
        assert!(
            matches!(message, Message::Offer { pid: 7, ref sockets } if sockets == &[SocketName::Tcp(addr)])
        );
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        // A connection made to the address is accepted through the copy.
        drop(tcp);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        received.accept().unwrap();

        send(&mut b, &Message::Ready, &[]).await.unwrap();
        assert!(matches!(receive(&mut a).await.unwrap(), (Message::Ready, fds) if fds.is_empty()));
        drop(b);
        assert_eq!(receive(&mut a).await.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn no_agent_listening_means_a_cold_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take_over(&socket_path(dir.path())).await.unwrap().is_none());
        // A stale socket file left by a dead agent is not an agent either.
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        assert!(take_over(&socket_path(dir.path())).await.unwrap().is_none());
    }
}
