use sluice_sinks::SinkError;

/// What can stop a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Definite(String),
}

impl From<rdkafka::error::KafkaError> for RouterError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        RouterError::Kafka(e.to_string())
    }
}
