//! A disk pool on another agent, reached over `lockstep.media.v1`.
//! (Placeholder: the client is not built yet.)

use super::{ByteStream, ObjectInfo, ObjectWriter, Store};
use crate::error::{Error, Result};

/// A disk pool held by another agent.
#[derive(Debug)]
pub struct MediaStore {
    label: String,
}

impl MediaStore {
    /// Connects to the agent at `addr` holding the pool at `path`.
    pub async fn connect(addr: &str, path: &str, label: String) -> Result<MediaStore> {
        let _ = (addr, path);
        Err(Error::Config(format!(
            "{label}: media sinks are not built yet"
        )))
    }
}

#[async_trait::async_trait]
impl Store for MediaStore {
    fn describe(&self) -> String {
        self.label.clone()
    }
    async fn create(&self, _key: &str) -> Result<Box<dyn ObjectWriter>> {
        unreachable!("never constructed")
    }
    async fn read(&self, _key: &str, _offset: u64) -> Result<ByteStream> {
        unreachable!("never constructed")
    }
    async fn size(&self, _key: &str) -> Result<Option<u64>> {
        unreachable!("never constructed")
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<ObjectInfo>> {
        unreachable!("never constructed")
    }
    async fn delete_prefix(&self, _prefix: &str) -> Result<u64> {
        unreachable!("never constructed")
    }
}
