//! The event stream of the asynchronous checkout: NATS JetStream, reached through
//! `async-nats`.
//!
//! Three rules make it safe when any process dies at any instruction:
//! - **Publishing goes through an outbox.** A service writes its state change and the event
//!   in one transaction of its own database; a relay ([`relay`]) publishes the stored event
//!   and only then marks it published. Dying between the two publishes it again, with the same
//!   event id, which JetStream drops inside its duplicate window (`Nats-Msg-Id`).
//! - **Consumers are idempotent and acknowledge last** ([`consumer`]): delivery is at least
//!   once, so a handler records the event id with its own write and answers "duplicate" when
//!   it finds it; the message is acknowledged only after that write committed.
//! - **Poison is parked, not retried forever**: after a bounded number of attempts (or at once,
//!   when the handler says the event can never apply) the message goes to the parked stream
//!   with the reason, a metric and a log line, and the consumer moves on.
//!
//! A service hosts its relay and consumers through [`EventTasks`].

pub mod broker;
pub mod checkout;
pub mod consumer;
mod envelope;
pub mod fault_points;
pub mod relay;
mod settings;
mod tasks;

pub use broker::{Broker, EventsConfig, EventsError};
pub use consumer::{ConsumerSpec, HandlerError, Outcome};
pub use envelope::{Envelope, EnvelopeError};
pub use relay::{Outbox, Relay, RelayWaker};
pub use settings::EventsSettings;
pub use tasks::EventTasks;

#[cfg(test)]
mod fault_point_tests;
#[cfg(test)]
mod login_tests;
#[cfg(test)]
mod tests;
