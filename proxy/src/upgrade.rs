//! Tunnels for upgraded connections (WebSocket and other `Upgrade`
//! protocols): once the backend answered 101 and the answer reached the
//! client, bytes are copied both ways until either side closes, the
//! backend is cut by a drain, or the listener shuts down for good. The
//! tunnel counts as in flight (and as upgraded) on its backend meanwhile.

use crate::backend::InflightGuard;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

/// Start the tunnel between the client's and the backend's upgraded
/// connections. Returns at once; the tunnel runs in its own task.
pub(crate) fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut guard: InflightGuard,
    cut: CancellationToken,
    shutdown: CancellationToken,
) {
    guard.upgrade();
    tokio::spawn(async move {
        let _guard = guard;
        let tunnel = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "tunnel ended");
            }
        };
        tokio::select! {
            _ = tunnel => {}
            _ = cut.cancelled() => tracing::debug!("tunnel cut by drain"),
            _ = shutdown.cancelled() => tracing::debug!("tunnel closed by shutdown"),
        }
    });
}
