use sluice_sinks::SinkError;

/// What can stop a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("kafka: {0}")]
    Kafka(String),
    /// The schema registry is unavailable (worth retrying).
    #[error("{0}")]
    Registry(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Definite(String),
    /// Shutdown came while the router waited for a dependency to return; what it had not
    /// applied is read again after a restart.
    #[error("stopped while waiting for {0}")]
    Interrupted(&'static str),
}

impl RouterError {
    /// Whether waiting and retrying may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            RouterError::Kafka(_) | RouterError::Registry(_) => true,
            RouterError::Sink(e) => e.is_transient(),
            RouterError::Definite(_) | RouterError::Interrupted(_) => false,
        }
    }
}

impl From<rdkafka::error::KafkaError> for RouterError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        RouterError::Kafka(e.to_string())
    }
}
