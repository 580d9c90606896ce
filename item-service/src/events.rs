//! item-service on the event stream (when NATS is configured): the outbox relay and the
//! consumers of the checkout events, run as named tasks of whatever host runs the service.

use std::sync::Arc;

use platform::{
    events::{
        Broker, ConsumerSpec, EventsConfig, HandlerError, Relay, RelayWaker,
        checkout::{CHECKOUT_REQUESTED, ORDER_CANCELLED, ORDER_COMPLETED},
        consumer,
    },
    faults::FaultInjector,
    host::Hosted,
};

use crate::{checkout::Checkout, outbox::ReservationOutbox};

/// The consumer and outbox name of this service on the stream.
pub const SERVICE: &str = "item-service";

#[derive(Debug)]
pub struct Events {
    broker: Broker,
    outbox: ReservationOutbox,
    /// Wakes the relay after a handler stored an event.
    waker: RelayWaker,
    checkout: Arc<Checkout>,
}

impl Events {
    /// Connects to NATS (in the background if it is down: the outbox keeps the events and
    /// the consumers start when it is back). `checkout` is given the relay's waker.
    pub async fn connect(
        config: EventsConfig,
        outbox: ReservationOutbox,
        checkout: impl FnOnce(RelayWaker) -> Checkout,
    ) -> anyhow::Result<Self> {
        let broker = Broker::connect(config, SERVICE).await?;
        let waker = RelayWaker::default();
        let checkout = Arc::new(checkout(waker.clone()));
        Ok(Self {
            broker,
            outbox,
            waker,
            checkout,
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// `hosted` with the relay and one consumer per kind item-service reads.
    pub fn host(&self, hosted: Hosted, faults: &FaultInjector) -> Hosted {
        let broker = self.broker.clone().with_faults(faults.clone());
        let relay = Relay::with_waker(
            SERVICE,
            self.outbox.clone(),
            broker.clone(),
            self.waker.clone(),
        );
        let hosted = hosted.with_task("event relay", move |stop| relay.run(stop));
        let consume = |hosted: Hosted, name: &'static str, kind: &'static str| {
            let broker = broker.clone();
            let checkout = self.checkout.clone();
            hosted.with_task(name, move |stop| {
                consumer::run(
                    broker,
                    ConsumerSpec::new(SERVICE, kind),
                    move |event| {
                        let checkout = checkout.clone();
                        async move {
                            match kind {
                                CHECKOUT_REQUESTED => checkout.on_checkout_requested(event).await,
                                ORDER_COMPLETED => checkout.on_order_completed(event).await,
                                ORDER_CANCELLED => checkout.on_order_cancelled(event).await,
                                other => Err(HandlerError::Reject(format!(
                                    "item-service does not read {other}"
                                ))),
                            }
                        }
                    },
                    stop,
                )
            })
        };
        let hosted = consume(hosted, "checkout.requested consumer", CHECKOUT_REQUESTED);
        let hosted = consume(hosted, "order.completed consumer", ORDER_COMPLETED);
        consume(hosted, "order.cancelled consumer", ORDER_CANCELLED)
    }
}
