//! A wake-up flag for tasks on one executor: a producer (a timer, a router,
//! another connection) calls `notify`, the one waiting task wakes.
//!
//! Owns: one flag and one waker. Must not touch: what the notification means.
//! Why not a channel: the data already sits in a queue the waiter owns a
//! handle to; all it needs is to be told to look, and repeated notifications
//! before it looks must collapse into one.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Debug, Default)]
pub struct LocalNotify {
    pending: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn new() -> LocalNotify {
        LocalNotify::default()
    }

    /// Marks the flag and wakes the waiting task, if any.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Completes once a notification arrived since the last one was taken;
    /// takes it. Cancel-safe: a dropped wait leaves the flag as it was.
    pub async fn notified(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                return Poll::Ready(());
            }
            let mut waiter = self.waiter.borrow_mut();
            match waiter.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn notifications_collapse_and_wake_the_waiter() {
        let handle = crate::runtime::spawn_pinned("notify-test", 0, || async {
            let notify = Rc::new(LocalNotify::new());
            notify.notify();
            notify.notify();
            notify.notified().await;
            let n2 = notify.clone();
            let waiter = glommio::spawn_local(async move {
                n2.notified().await;
                7
            });
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            notify.notify();
            waiter.await
        })
        .expect("spawn");
        assert_eq!(handle.join().expect("join"), 7);
    }
}
