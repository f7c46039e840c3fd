//! The run's heartbeat: a task that stamps the run record alive every
//! [`HEARTBEAT_EVERY`] on a connection of its own, and passes on to the loop what the
//! stamp's answer asks of the run (`Order`), each request once.

use shared::storage::{RunOrder, Store};
use tokio::sync::mpsc;

use super::db_watch::DbWatch;
use crate::liveness::HEARTBEAT_EVERY;

/// What the database asks of the run, as the loop hears it. Only news: a beat that
/// asks nothing sends nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// `supervisor stop` asked the run to stop.
    Stop,
    /// `supervisor scale` asked for `workers` shards, of which this supervisor runs
    /// `ids` (all of them when none), as the request wrote them (the loop checks them).
    Rescale { workers: u32, ids: Option<String> },
    /// Another supervisor found this run's heartbeat stale and took over its ids. The
    /// last order: the heartbeat ends with it.
    TakenOver,
}

/// What a beat's answer tells the loop, given the requests already passed on.
#[derive(Debug, Default)]
struct Told {
    stop: bool,
    scale: Option<(u32, Option<String>)>,
}

impl Told {
    /// The order to pass on for `answer`, if it is news. A request stays in the record
    /// until it is done, so each is passed on once; a scale request that is gone and
    /// comes back is news again.
    fn news(&mut self, answer: RunOrder) -> Option<Order> {
        match answer {
            RunOrder::CarryOn => {
                self.scale = None;
                None
            }
            RunOrder::Rescale { workers, ids } => {
                let asked = Some((workers, ids.clone()));
                (self.scale != asked).then(|| {
                    self.scale = asked;
                    Order::Rescale { workers, ids }
                })
            }
            RunOrder::Stop => (!std::mem::replace(&mut self.stop, true)).then_some(Order::Stop),
            RunOrder::TakenOver => Some(Order::TakenOver),
        }
    }
}

/// Stamps run `run_id` alive until aborted (at the run's end, after its drain: a
/// draining run is alive) and sends the loop its orders; after a takeover it ends. A
/// beat that fails is tried again at the next: while the database is away, each beat is
/// the run's try at it (`watch` hears the answer).
pub fn beat(
    db: Store,
    run_id: i64,
    orders: mpsc::UnboundedSender<Order>,
    watch: DbWatch,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut told = Told::default();
        loop {
            every.tick().await;
            match db.heartbeat(run_id).await {
                Ok(answer) => {
                    watch.answered();
                    if let Some(order) = told.news(answer) {
                        let last = order == Order::TakenOver;
                        let _ = orders.send(order);
                        if last {
                            return;
                        }
                    }
                }
                Err(e) if watch.failed(&e) => {}
                Err(e) => tracing::warn!("could not stamp the run record alive: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rescale(workers: u32) -> RunOrder {
        RunOrder::Rescale { workers, ids: None }
    }

    #[test]
    fn a_beat_that_asks_nothing_sends_nothing() {
        assert_eq!(Told::default().news(RunOrder::CarryOn), None);
    }

    #[test]
    fn a_stop_request_is_passed_on_once() {
        let mut told = Told::default();
        assert_eq!(told.news(RunOrder::Stop), Some(Order::Stop));
        assert_eq!(told.news(RunOrder::Stop), None);
    }

    #[test]
    fn a_scale_request_is_passed_on_once_and_again_when_it_changes_or_returns() {
        let mut told = Told::default();
        assert_eq!(told.news(rescale(4)), Some(Order::Rescale { workers: 4, ids: None }));
        assert_eq!(told.news(rescale(4)), None);
        assert_eq!(told.news(rescale(6)), Some(Order::Rescale { workers: 6, ids: None }));
        told.news(RunOrder::CarryOn);
        assert_eq!(told.news(rescale(6)), Some(Order::Rescale { workers: 6, ids: None }));
    }

    #[test]
    fn a_takeover_is_an_order_of_its_own() {
        assert_eq!(Told::default().news(RunOrder::TakenOver), Some(Order::TakenOver));
    }
}
