//! Serving a spool as a gRPC server stream: replay after a seq, then follow live.

use std::sync::Arc;

use agentstudio_proto::sandbox::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert;
use crate::spool::Spool;

/// Events queued per stream between the spool reader and the connection. When the client is
/// slow the reader waits here; the process never does, it only writes to the spool.
const STREAM_BUFFER_EVENTS: usize = 16;

/// Streams `spool` from `after_seq`: every spooled event, then live ones, ending after the
/// last. The producer task stops when the client goes away or the broker shuts down.
pub fn follow(
    spool: Arc<Spool>,
    process_id: String,
    after_seq: u64,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<pb::ProcessEvent, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER_EVENTS);
    tokio::spawn(async move {
        let _permit = permit;
        let mut reader = spool.reader(after_seq);
        let mut head = spool.subscribe();
        let mut batch = Vec::new();
        loop {
            // Mark the head seen before reading: an append after this wakes `changed` below.
            let finished = head.borrow_and_update().finished;
            if let Err(error) = reader.read_available(&mut batch) {
                let status = if error.kind() == std::io::ErrorKind::NotFound {
                    Status::not_found(format!(
                        "output of process {process_id:?} was discarded: its sandbox was forgotten"
                    ))
                } else {
                    tracing::error!(%process_id, %error, "reading the output spool failed");
                    Status::internal("reading the output spool failed")
                };
                let _ = tx.send(Err(status)).await;
                return;
            }
            if batch.is_empty() {
                if finished {
                    return;
                }
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("broker is shutting down; reattach after the last seq"))).await;
                        return;
                    }
                }
                continue;
            }
            for event in batch.drain(..) {
                // A client that stopped reading must not hold the broker's shutdown.
                tokio::select! {
                    sent = tx.send(Ok(convert::process_event(&process_id, event))) => if sent.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
