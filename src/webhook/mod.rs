//! Completion webhooks: checking callback URLs and delivering signed POSTs.
//!
//! A callback URL is chosen by whoever triggers a run, so delivering to it
//! lets a user make the server send requests. This module keeps that from
//! becoming a way into the server's own network (SSRF):
//!
//! * [`Webhooks::validate`] runs at trigger time so a bad URL is a 400 the
//!   user sees, not a silent delivery failure later;
//! * [`Webhooks::deliver`] checks again, because DNS answers can change
//!   between trigger and completion (rebinding), and then connects only to
//!   the address it checked: the HTTP client gets a resolver that knows that
//!   one address and refuses every other lookup;
//! * only globally reachable addresses pass ([`is_global`]) unless the
//!   operator lists a host, address or network in [`AllowList`].
//!
//! Requests are signed per Standard Webhooks ([`sign`]) so receivers can use
//! stock verification libraries. This module performs single attempts; the
//! outbox, retry schedule and configuration parsing live with the caller.

mod address;
mod allow_list;
mod deliver;
mod policy;
mod resolve;
mod sign;

pub use address::is_global;
pub use allow_list::AllowList;
pub use deliver::{DeliveryOutcome, EXCERPT_BYTES, USER_AGENT, Webhooks};
pub use policy::{PolicyError, WebhookPolicy};
pub use sign::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, secret_key, sign};
