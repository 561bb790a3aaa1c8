//! A broker limit met, said as what to raise (docs/operations.md, Sizing):
//! RabbitMQ's `channel_max` per connection. The error ends the session, is
//! logged, and `/readyz` shows it until a session consumes again.

/// `e` (a session's error) with what to do about it when it is a limit the
/// broker put on the connection.
pub(crate) fn explain(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("maximum number of channels") {
        return e.context(format!(
            "the connection's channel_max is reached: raise `channel_max` in rabbitmq.conf (and \
             any `channel_max` in the broker URL); a worker needs one AMQP channel per {} \
             consumers plus about 12",
            crate::delivery::consumer::CONSUMERS_PER_AMQP_CHANNEL
        ));
    }
    e
}
