//! A unix-socket relay the test owns, in front of the Docker engine's
//! socket, to make the engine unreachable for a while without touching the
//! real one:
//!
//! ```no_run
//! # async fn f() {
//! use bg_tests::relay::Relay;
//! let relay = Relay::start("/tmp/engine.sock".as_ref(), "/var/run/docker.sock".as_ref()).await;
//! // point the agent at unix:///tmp/engine.sock, then:
//! relay.hang().await; // accepts, never answers
//! relay.refuse().await; // connections refused
//! relay.resume().await; // relays again
//! # }
//! ```
//!
//! Every change of mode drops the connections being relayed, as a network
//! failure would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the relay does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay to the upstream socket.
    Relay,
    /// Accept and hold connections without reading or answering.
    Hang,
    /// Not listening: connects are refused.
    Refuse,
}

/// The relay; stops on drop.
pub struct Relay {
    path: PathBuf,
    mode: watch::Sender<Mode>,
    applied: watch::Receiver<Mode>,
    stop: CancellationToken,
}

impl Relay {
    /// Listen on `path` and relay every connection to `upstream`.
    pub async fn start(path: &Path, upstream: &Path) -> Relay {
        let (mode, rx) = watch::channel(Mode::Relay);
        let (applied_tx, applied) = watch::channel(Mode::Refuse);
        let stop = CancellationToken::new();
        tokio::spawn(run(path.to_path_buf(), Arc::from(upstream), rx, applied_tx, stop.clone()));
        let relay = Relay { path: path.to_path_buf(), mode, applied, stop };
        relay.set(Mode::Relay).await;
        relay
    }

    /// `unix://<path>`, for `docker_host`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Relay again.
    pub async fn resume(&self) {
        self.set(Mode::Relay).await;
    }

    /// Accept connections and never answer them.
    pub async fn hang(&self) {
        self.set(Mode::Hang).await;
    }

    /// Stop listening: connects fail with "connection refused".
    pub async fn refuse(&self) {
        self.set(Mode::Refuse).await;
    }

    /// Switch to `mode` and wait until it applies.
    async fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        let mut applied = self.applied.clone();
        let switched =
            tokio::time::timeout(std::time::Duration::from_secs(5), applied.wait_for(|m| *m == mode))
                .await
                .is_ok_and(|r| r.is_ok());
        assert!(switched, "relay at {} did not switch to {mode:?}", self.path.display());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn run(
    path: PathBuf,
    upstream: Arc<Path>,
    mut mode: watch::Receiver<Mode>,
    applied: watch::Sender<Mode>,
    stop: CancellationToken,
) {
    loop {
        let current = *mode.borrow_and_update();
        // Connections of the previous mode end with it.
        let epoch = stop.child_token();
        let listener = match current {
            Mode::Refuse => None,
            Mode::Relay | Mode::Hang => {
                let _ = std::fs::remove_file(&path);
                Some(UnixListener::bind(&path).expect("bind relay socket"))
            }
        };
        applied.send_replace(current);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = mode.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                accepted = async { listener.as_ref().expect("listening").accept().await }, if listener.is_some() => {
                    let Ok((client, _)) = accepted else { continue };
                    tokio::spawn(serve(client, upstream.clone(), current, epoch.clone()));
                }
            }
        }
        epoch.cancel();
        drop(listener);
    }
}

async fn serve(mut client: UnixStream, upstream: Arc<Path>, mode: Mode, epoch: CancellationToken) {
    match mode {
        Mode::Relay => {
            let Ok(mut engine) = UnixStream::connect(&upstream).await else { return };
            tokio::select! {
                _ = epoch.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
            }
        }
        Mode::Hang => epoch.cancelled().await,
        Mode::Refuse => {}
    }
}
