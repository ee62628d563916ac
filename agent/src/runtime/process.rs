//! Placeholder: replaced by the process runtime at merge.
#![allow(missing_docs)]
use super::RuntimeError;
pub struct ProcessRuntime;
impl ProcessRuntime {
    pub fn new(_state_dir: &std::path::Path) -> Result<Self, RuntimeError> {
        todo!()
    }
}
