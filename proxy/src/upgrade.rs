//! Tunnels for upgraded connections (WebSocket and other `Upgrade`
//! protocols): once the backend answered 101 and the answer reached the
//! client, bytes are copied both ways until either side closes, the
//! backend is cut by a drain, or the listener shuts down for good. The
//! tunnel counts as in flight (and as upgraded) on its backend meanwhile.

use crate::backend::InflightGuard;
use crate::signal::{Signal, SignalWait};
use crate::upstream::Conn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Start the tunnel between the client's upgraded connection and the
/// backend's connection (with whatever the backend sent after its 101).
/// Returns at once; the tunnel runs in its own task on `tasks`.
pub(crate) fn spawn_tunnel(
    tasks: &tokio_util::task::TaskTracker,
    client: OnUpgrade,
    upstream: Conn,
    mut guard: InflightGuard,
    mut cut: SignalWait,
    shutdown: Arc<Signal>,
) {
    guard.upgrade();
    tasks.spawn(async move {
        let _guard = guard;
        let tunnel = async {
            let client = match client.await {
                Ok(client) => client,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let (mut upstream, early) = upstream.into_parts();
            if !early.is_empty() {
                if let Err(e) = client.write_all(&early).await {
                    tracing::debug!(error = %e, "tunnel ended");
                    return;
                }
            }
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "tunnel ended");
            }
        };
        tokio::select! {
            _ = tunnel => {}
            _ = &mut cut => tracing::debug!("tunnel cut by drain"),
            _ = shutdown.wait() => tracing::debug!("tunnel closed by shutdown"),
        }
    });
}
