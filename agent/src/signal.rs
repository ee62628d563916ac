//! The one place that listens for process signals: SIGTERM or SIGINT
//! cancels the agent's shutdown token; SIGHUP asks for a reload.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Wait for SIGTERM or SIGINT, then cancel `shutdown`; return early when
/// something else cancelled it.
pub async fn cancel_on_shutdown_signal(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

/// Ask `reloads` for a reload on every SIGHUP until `shutdown`.
pub async fn reload_on_hangup(reloads: crate::reload::Handle, shutdown: CancellationToken) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload with bgctl reload");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                reloads.request();
            }
        }
    }
}
