//! Media streams (`lockstep.media.v1`) against the real `lockstep-agent`
//! process serving its sink directory as a disk pool: a writer survives the
//! media agent being SIGKILLed and restarted mid-object, resuming from the
//! fsynced partial file at the last acknowledged offset.
//!
//! The agent needs no database to serve media: `--mysql` points at a port
//! nothing listens on, and nothing here asks it to touch a server.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use lockstep_node_agent::sink::media::{MediaOptions, MediaStore};
use lockstep_node_agent::sink::{Store, get};
use lockstep_tests::{AgentOptions, AgentProc, Supervised, step};
use sha2::{Digest, Sha256};

/// A `--mysql` URL for an agent that serves media only.
const NO_DATABASE: &str = "mysql://root@127.0.0.1:9";

/// `len` reproducible pseudo-random bytes.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// SIGKILL the media agent with 24 MiB of a 48 MiB object sent: its partial
/// file holds at least what it acknowledged; after a restart on the same
/// port the writer resumes there, resends less than the object, and the
/// stored file is byte-identical.
#[tokio::test]
async fn a_writer_resumes_after_the_media_agent_is_killed() -> anyhow::Result<()> {
    step!("start lockstep-agent serving its sink directory as a pool");
    let mut agent = AgentProc::start(AgentOptions::new("media1", NO_DATABASE)).await?;
    let pool = agent.sink_dir().to_path_buf();
    let opts = MediaOptions {
        window: 8 << 20,
        chunk: 1 << 20,
        retry_for: Duration::from_secs(60),
        ..MediaOptions::default()
    };
    let store = MediaStore::connect_with(
        &agent.addr(),
        &pool.display().to_string(),
        "sink m (disk pool on media1)".into(),
        opts,
    )
    .await
    .context("connect to the media agent")?;
    let body = data(48 << 20);
    let key = "b1/s1/db/big.tsv.zst";
    let (first, rest) = body.split_at(24 << 20);

    step!("write 24 MiB");
    let mut w = store.create(key).await?;
    for piece in first.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(piece)).await?;
    }

    step!("SIGKILL the media agent");
    agent.kill()?;
    let partial = pool.join("b1/s1/db/.big.tsv.zst.partial");
    let kept = std::fs::metadata(&partial)
        .with_context(|| format!("partial file {} after the kill", partial.display()))?
        .len();
    anyhow::ensure!(
        kept >= 8 << 20,
        "the partial file has {kept} bytes; the window of 8 MiB forces at least 16 MiB acknowledged"
    );
    let down = MediaStore::connect(
        &agent.addr(),
        &pool.display().to_string(),
        "probe".into(),
        Default::default(),
    )
    .await;
    anyhow::ensure!(down.is_err(), "nothing answers while it is down");

    step!("restart it on the same port while the writer goes on");
    let (restarted, written) = tokio::join!(agent.restart(), async {
        for piece in rest.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(piece)).await?;
        }
        w.finish().await
    });
    restarted?;
    let size = written.context("finish across the restart")?;
    anyhow::ensure!(size == body.len() as u64, "finished at {size} bytes");

    step!("the object is byte-identical and only the unacknowledged part was resent");
    let resent = store.resent_bytes();
    println!(
        "resent {resent} of {} bytes; partial file had {kept} bytes at the kill",
        body.len()
    );
    anyhow::ensure!(
        resent > 0 && resent < body.len() as u64 / 2,
        "resent {resent} bytes of {}",
        body.len()
    );
    let on_disk = std::fs::read(pool.join(key)).context("read the stored file")?;
    anyhow::ensure!(
        Sha256::digest(&on_disk) == Sha256::digest(&body),
        "the stored file differs ({} bytes)",
        on_disk.len()
    );
    let back = get(&store, key, 1 << 30).await?;
    anyhow::ensure!(
        Sha256::digest(&back) == Sha256::digest(&body),
        "read back differs"
    );
    anyhow::ensure!(!partial.exists(), "the partial file is gone after commit");
    Ok(())
}
