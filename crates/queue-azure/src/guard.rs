//! Limits on what a peer may make the client allocate.

/// The largest AMQP frame the client accepts (announced in its `open`).
pub(crate) const MAX_FRAME_SIZE: usize = 256 * 1024;
