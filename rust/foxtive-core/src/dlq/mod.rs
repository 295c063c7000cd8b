//! Dead letters: the record kept for a message that will not be retried.

use bytes::Bytes;

use crate::message::{Delivery, Failure, Headers};

/// A message that failed for good, with why and where.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub original_id: String,
    pub body: Bytes,
    pub headers: Headers,
    pub source_queue: String,
    pub attempts: u32,
    pub error_type: String,
    pub error_message: String,
    pub failed_at: f64,
    pub worker_id: String,
    pub poison_pill: bool,
}

impl DeadLetter {
    pub fn from_delivery(delivery: &Delivery, failure: &Failure) -> Self {
        DeadLetter {
            original_id: delivery.id.clone(),
            body: delivery.body.clone(),
            headers: delivery.headers.clone(),
            source_queue: delivery.queue.to_string(),
            attempts: delivery.attempt,
            error_type: failure.error_type.clone(),
            error_message: failure.error_message.clone(),
            failed_at: crate::clock::unix_now(),
            worker_id: failure.worker_id.to_string(),
            poison_pill: failure.poison_pill,
        }
    }
}
