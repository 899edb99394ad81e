//! In-process bus: a tokio broadcast channel.

use tokio::sync::broadcast;

use super::{Bus, Signal};

/// Single-node bus.
pub struct LocalBus {
    tx: broadcast::Sender<Signal>,
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, signal: Signal) {
        // No receivers is fine: nobody to tell.
        let _ = self.tx.send(signal);
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_receive_published_signals() {
        let bus = LocalBus::default();
        let mut rx = bus.subscribe();
        let s = Signal::RunAbort {
            run_id: "r".into(),
            origin: "n".into(),
        };
        bus.publish(s.clone());
        assert_eq!(rx.recv().await.unwrap(), s);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"type":"runAbort","runId":"r","origin":"n"}"#
        );
    }
}
