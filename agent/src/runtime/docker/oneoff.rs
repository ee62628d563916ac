//! One-off runs (`bgctl run`) and `pre_stop = { exec }` on the engine: a
//! container of the spec running another command, its output attached
//! and handed on line by line, removed once it exits; and an exec inside
//! a running replica.

use super::{create, is_status, DockerRuntime};
use crate::runtime::{OneOff, Output, OutputStream, ReplicaHandle, RuntimeError};
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions, ListContainersOptions};
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long an attached stream may stay open: a migration can run for
/// hours; `cancel` ends it sooner.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Output bytes cut into lines, per stream; what is left without a final
/// newline is handed on at the end.
#[derive(Default)]
struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    fn push(&mut self, chunk: LogOutput, output: Output<'_>) {
        let (stream, buf, bytes) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (OutputStream::Stdout, &mut self.stdout, message)
            }
            LogOutput::StdErr { message } => (OutputStream::Stderr, &mut self.stderr, message),
            LogOutput::StdIn { .. } => return,
        };
        buf.extend_from_slice(&bytes);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..nl]);
            output(stream, line.trim_end_matches('\r').to_string());
        }
    }

    fn finish(self, output: Output<'_>) {
        for (stream, buf) in [(OutputStream::Stdout, self.stdout), (OutputStream::Stderr, self.stderr)] {
            if !buf.is_empty() {
                output(stream, String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
}

/// Hand every chunk of `stream` on as lines until it ends (`true`) or
/// `cancel` fires (`false`).
async fn pump(
    mut stream: impl Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
    output: Output<'_>,
    cancel: &CancellationToken,
) -> bool {
    let mut lines = Lines::default();
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break false,
            chunk = stream.next() => match chunk {
                Some(Ok(chunk)) => lines.push(chunk, output),
                // The engine closed the stream: the program ended.
                Some(Err(_)) | None => break true,
            },
        }
    };
    lines.finish(output);
    ended
}

impl DockerRuntime {
    /// Run `job` in a container of its own (see the module doc).
    pub(crate) async fn run_oneoff(
        &self,
        job: &OneOff,
        output: Output<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<i64>, RuntimeError> {
        if job.argv.first().is_none_or(|p| p.is_empty()) {
            return Err(RuntimeError::InvalidSpec("a one-off run needs a command".into()));
        }
        let Some(image) = job.spec.pinned_image().filter(|i| !i.trim().is_empty()) else {
            return Err(RuntimeError::InvalidSpec(
                "the docker runtime needs an image, e.g. \"websample:v1\"".into(),
            ));
        };
        self.remove_finished_oneoffs(&job.service).await?;
        let env = self.sources.env_of(&job.spec)?;
        let docker = self.client().await?;
        let name = job.name();
        let body = create::oneoff_body(job, &image, &env);
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.err(&format!("creating container {name}"), e))?;
        let result = self.attach_and_start(&created.id, &name, job, output, cancel).await;
        self.force_remove(&created.id).await?;
        result
    }

    async fn attach_and_start(
        &self,
        id: &str,
        name: &str,
        job: &OneOff,
        output: Output<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<i64>, RuntimeError> {
        self.before_start(id, name, &job.spec).await?;
        let docker = self.client().await?;
        let streaming = docker.clone().with_timeout(ATTACH_TIMEOUT);
        let options =
            AttachContainerOptions { stream: true, stdout: true, stderr: true, ..Default::default() };
        let attached = streaming
            .attach_container(id, Some(options))
            .await
            .map_err(|e| self.err(&format!("attaching to container {name}"), e))?;
        docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| self.err(&format!("starting container {name}"), e))?;
        if !pump(attached.output, output, cancel).await {
            self.kill(id, "SIGKILL").await?;
            return Ok(None);
        }
        // The stream ends when the program does; the engine may need a
        // moment more to record the exit.
        self.wait_stopped(id, Duration::from_secs(30)).await?;
        let state = self.inspect(id).await?.and_then(|c| c.state);
        Ok(Some(state.and_then(|s| s.exit_code).unwrap_or(-1)))
    }

    /// Remove this service's one-off containers that have ended (left by
    /// an agent that died while one ran); running ones are left alone.
    async fn remove_finished_oneoffs(&self, service: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let filters = HashMap::from([
            ("label".to_string(), vec![format!("{}={service}", crate::runtime::labels::ONEOFF)]),
            ("status".to_string(), vec!["created".to_string(), "exited".to_string(), "dead".to_string()]),
        ]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let left = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err("listing one-off containers", e))?;
        for c in left {
            if let Some(id) = c.id {
                self.force_remove(&id).await?;
            }
        }
        Ok(())
    }

    /// Run `argv` inside `replica`'s container with `env` added.
    pub(crate) async fn exec_in(
        &self,
        replica: &ReplicaHandle,
        argv: &[String],
        env: &[(String, String)],
        output: Output<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<i64>, RuntimeError> {
        let docker = self.client().await?;
        let config = ExecConfig {
            cmd: Some(argv.to_vec()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = match docker.create_exec(&replica.runtime_id, config).await {
            Ok(exec) => exec,
            Err(e) if is_status(&e, 404) => return Err(RuntimeError::NotFound(replica.name.clone())),
            Err(e) => return Err(self.err(&format!("creating an exec in container {}", replica.name), e)),
        };
        let streaming = docker.clone().with_timeout(ATTACH_TIMEOUT);
        let started = streaming
            .start_exec(&exec.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
            .await
            .map_err(|e| self.err(&format!("starting an exec in container {}", replica.name), e))?;
        let StartExecResults::Attached { output: stream, .. } = started else {
            return Err(RuntimeError::Docker {
                message: format!("the exec in container {} started detached", replica.name),
                source: None,
            });
        };
        if !pump(stream, output, cancel).await {
            // An exec cannot be killed through the API; its process ends
            // with the container, which is stopped next.
            return Ok(None);
        }
        let inspected = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| self.err(&format!("inspecting the exec in container {}", replica.name), e))?;
        Ok(Some(inspected.exit_code.unwrap_or(-1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;

    #[test]
    fn chunks_become_lines_per_stream_and_the_rest_comes_at_the_end() {
        let got = Mutex::new(Vec::new());
        let output = |s: OutputStream, l: String| got.lock().unwrap().push((s, l));
        let mut lines = Lines::default();
        lines.push(LogOutput::StdOut { message: Bytes::from_static(b"a\nb") }, &output);
        lines.push(LogOutput::StdErr { message: Bytes::from_static(b"e1\r\n") }, &output);
        lines.push(LogOutput::StdOut { message: Bytes::from_static(b"c\n\nd") }, &output);
        lines.finish(&output);
        let out = OutputStream::Stdout;
        assert_eq!(
            got.into_inner().unwrap(),
            vec![
                (out, "a".to_string()),
                (OutputStream::Stderr, "e1".to_string()),
                (out, "bc".to_string()),
                (out, String::new()),
                (out, "d".to_string()),
            ]
        );
    }
}
