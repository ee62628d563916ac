//! Placeholder: replaced by the Docker runtime at merge.
#![allow(missing_docs)]
use super::RuntimeError;
pub struct DockerRuntime;
impl DockerRuntime {
    pub async fn connect(_docker_host: Option<&str>) -> Result<Self, RuntimeError> {
        todo!()
    }
}
